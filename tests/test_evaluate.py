"""Evaluation pieces: loop detection, metric report, token limits, runaway flags, weights-only checkpoints."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ray_asr import evaluate, metrics


def test_loops_are_phrases_repeated_four_times_back_to_back():
    assert metrics.has_loop([5, 5, 5, 5])
    assert metrics.has_loop([1, 2, 7, 8, 7, 8, 7, 8, 7, 8, 3])
    assert not metrics.has_loop([5, 5, 5, 9, 5])  # three in a row is still speech ("no no no")
    assert not metrics.has_loop([1, 2, 3, 1, 2, 3, 1, 2, 3])
    assert not metrics.has_loop([])


@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(4, 6),
       st.lists(st.integers(0, 50), max_size=10))
def test_any_phrase_repeated_four_times_is_a_loop(phrase, times, prefix):
    assert metrics.has_loop(prefix + phrase * times)


def test_report_counts_runaways_and_loops():
    rows = [{"reference": "take two tablets", "hypothesis": "take two tablets", "runaway": False, "looping": False},
            {"reference": "of metoprolol", "hypothesis": "of of of of of", "runaway": True, "looping": True}]
    out = metrics.report(rows)
    assert out["runaway_outputs"] == 1 and out["repetition_rate"] == 0.5
    assert out["num_utterances"] == 2 and out["insertions"] == 3 and 0 < out["wer"] < 2


def test_token_limit_is_twice_each_reference_plus_eight():
    labels = torch.full((2, 12), -100)
    labels[0, :7] = 1  # 3 prompt tokens + 3 text + end-of-text
    labels[1, :12] = 1  # 3 prompt tokens + 8 text + end-of-text
    assert evaluate.token_limits(labels) == [2 * 4 + 8, 2 * 9 + 8]
    long = torch.ones((1, 400), dtype=torch.long)
    assert evaluate.token_limits(long) == [448 - evaluate.PROMPT_TOKENS]  # never past the decoder's positions


def test_generate_flags_outputs_that_never_stop(tiny_model, tokenizer):
    from ray_asr.model import load

    model = load(str(tiny_model)).eval()
    torch.manual_seed(0)
    features = torch.randn(2, 80, 3000)
    ids, runaway = evaluate.generate(model, [6, 3], tokenizer.eos_token_id, input_features=features)
    assert runaway == [True, True] and [len(row) for row in ids] == [6, 3]  # a random model never says end-of-text
    alone, _ = evaluate.generate(model, [3], tokenizer.eos_token_id, input_features=features[1:])
    assert alone == ids[1:]  # a clip's result does not depend on its batch
    rows = evaluate.rows(tokenizer, ids, runaway, ["a", "b"], ["x:1", "x:2"])
    assert [r["id"] for r in rows] == ["x:1", "x:2"] and all(isinstance(r["hypothesis"], str) for r in rows)
    # With every token but end-of-text suppressed nothing runs away, and the text is empty.
    model.generation_config.begin_suppress_tokens = []
    model.generation_config.suppress_tokens = [i for i in range(model.config.vocab_size) if i != tokenizer.eos_token_id]
    ids, runaway = evaluate.generate(model, [6, 6], tokenizer.eos_token_id, input_features=features)
    assert runaway == [False, False] and ids == [[], []]


class _Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_checkpoints_load_weights_only(tmp_path):
    from ray_asr.checkpoint import weights_only_engine

    engine = weights_only_engine()
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"module": {"w": torch.ones(2)}, "global_steps": 3}, good)
    torch.save({"module": _Payload()}, bad)
    assert engine.load(str(good))["global_steps"] == 3
    with pytest.raises(pickle.UnpicklingError):
        engine.load(str(bad))


def test_evaluate_command_scores_good_rows_counts_rejected_ones_and_writes_a_report(tiny_model, catalogue, tmp_path,
                                                                                    capsys):
    import json

    from ray_asr.cli import main

    out = tmp_path / "report.json"
    assert main(["evaluate", str(tiny_model), str(catalogue.manifest), "--out", str(out), "--batch-size", "3"]) == 0
    report = json.loads(out.read_text())
    assert report["num_utterances"] == len(catalogue.good) == len(report["per_utterance"])
    assert sum(report["rejected"].values()) == len(catalogue.bad)
    assert set(report["rejected"]) == set(catalogue.bad.values())
    assert report["runaway_outputs"] == len(catalogue.good)  # a random model never says end-of-text
    assert {"wer", "cer", "insertions", "repetition_rate"} <= set(report) and "wer" in capsys.readouterr().out
    assert main(["evaluate", str(tiny_model), str(tmp_path / "missing.jsonl")]) == 2


def test_beam_size_reaches_generate_and_zero_is_refused(tiny_model, catalogue, monkeypatch, capsys):
    from transformers import WhisperForConditionalGeneration

    from ray_asr.cli import main

    seen = []
    original = WhisperForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("num_beams"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WhisperForConditionalGeneration, "generate", spy)
    assert main(["evaluate", str(tiny_model), str(catalogue.manifest), "--beam-size", "3"]) == 0
    assert seen and set(seen) == {3}
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(tiny_model), str(catalogue.manifest), "--beam-size", "0"])
    assert stop.value.code == 2 and "at least 1" in capsys.readouterr().err
