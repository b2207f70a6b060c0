"""`ray-asr regress`: the abilities report of base and fine-tuned on a made suite, every key written; and the
pieces it judges outputs by (well-formed timestamps, duplicated and dropped segments)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from ray_asr import labels, regress
from ray_asr.cli import main

RATE = 16_000


@pytest.fixture(scope="module")
def tokenizer(timed_tokenizer):  # this module's clips are labelled with timestamps
    return timed_tokenizer


def _suite(folder) -> str:
    rng = np.random.default_rng(0)

    def clip(name: str, seconds: float) -> str:
        sf.write(folder / f"{name}.flac", (0.05 * rng.standard_normal(int(seconds * RATE))).astype(np.float32), RATE)
        return f"{name}.flac"

    sets = {
        "languages": [{"audio": clip("en", 2), "text": "good morning", "language": "en"},
                      {"audio": clip("de", 2), "text": "guten morgen", "language": "de"},
                      {"audio": clip("fr", 2), "text": "bonjour", "language": "fr"}],
        "timestamps": [{"audio": clip("t0", 3), "text": "the dose", "start": 0.5, "end": 2.0},
                       {"audio": clip("t1", 3), "text": "the drip", "start": 1.0, "end": 2.5}],
        "long_form": [{"audio": clip("long", 35), "text": "one two",
                       "segments": [{"start": 1, "end": 5, "text": "one"}, {"start": 31, "end": 34, "text": "two"}]}],
        "noise": [{"audio": clip("n0", 2), "text": ""}, {"audio": clip("n1", 1), "text": ""}],
        "prompts": [{"audio": clip("p0", 2), "text": "first dose"}, {"audio": clip("p1", 2), "text": "second dose"}],
    }
    for name, rows in sets.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "suite.yaml").write_text("".join(f"{name}: {name}.jsonl\n" for name in sets))
    return str(folder / "suite.yaml")


def test_regress_writes_every_key_of_the_report(tmp_path, timed_model):
    suite = _suite(tmp_path)
    out = tmp_path / "report" / "abilities.json"
    assert main(["regress", str(timed_model), str(timed_model), "--suite", suite, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["metric"] for row in report["metrics"]] == list(regress.METRICS)
    rows = {row["metric"]: row for row in report["metrics"]}
    for row in report["metrics"]:
        assert set(row) == {"metric", "base", "fine_tuned", "change"}
        if row["metric"] == "timestamp_error_s" and rows["timestamps_well_formed"]["base"] == 0:
            continue  # a random model's timestamps are never well-formed: no boundary to measure
        assert row["base"] is not None and row["base"] == row["fine_tuned"] and row["change"] == 0, row
    assert all(0 <= rows[key]["base"] <= 1 for key in ("timestamps_well_formed", "language_id_accuracy",
                                                          "noise_empty_rate"))
    details = report["details"]["fine-tuned"]
    assert set(details) == {"timestamps", "long_form", "languages", "noise", "prompts"}
    assert set(details["languages"]["accuracy_by_language"]) == {"en", "de", "fr"}
    assert set(details["languages"]["wer_by_language"]) == {"de", "fr"}
    table = out.with_suffix(".md").read_text().splitlines()
    assert len(table) == 2 + len(regress.METRICS) and table[2].startswith("| timestamps:")


def test_a_suite_file_with_an_unknown_key_is_one_line(tmp_path, timed_model, capsys):
    (tmp_path / "suite.yaml").write_text("langauges: x.jsonl\n")
    assert main(["regress", str(timed_model), str(timed_model), "--suite", str(tmp_path / "suite.yaml")]) == 2
    assert "langauges" in capsys.readouterr().err


def _ts(tokenizer, seconds: float) -> int:
    return labels.timestamp_token(tokenizer, seconds)


def test_well_formed_timestamps_are_told_from_broken_ones(tokenizer):
    text = tokenizer.backend.encode("the dose", add_special_tokens=False).ids
    eos, head = tokenizer.eos_token_id, list(tokenizer.prefix[:2])
    good = [*head, _ts(tokenizer, 0.5), *text, _ts(tokenizer, 1.0), _ts(tokenizer, 1.2), *text, _ts(tokenizer, 2.0), eos]
    assert regress.timestamp_spans(good, tokenizer) == pytest.approx((0.5, 2.0))
    unclosed = [*head, _ts(tokenizer, 0.5), *text, eos]
    backwards = [*head, _ts(tokenizer, 1.0), *text, _ts(tokenizer, 0.5), eos]
    empty_segment = [*head, _ts(tokenizer, 0.5), _ts(tokenizer, 1.0), _ts(tokenizer, 1.0), eos]
    no_stamps = [*head, tokenizer.prefix[2], *text, eos]
    runaway = [*head, _ts(tokenizer, 0.5), *text, *text]
    for broken in (unclosed, backwards, empty_segment, no_stamps, runaway):
        assert regress.timestamp_spans(broken, tokenizer) is None, broken


def test_duplicated_and_dropped_segments_are_counted():
    assert regress.duplicated_segments(["Take two tablets.", "take two tablets", "Then rest.", ""]) == 1
    reference = ["the patient slept well", "she took her dose at noon", "no pain today"]
    assert regress.dropped_segments(reference, "the patient slept well no pain today") == 1
    assert regress.dropped_segments(reference, "the patient slept well she took a dose at noon no pain") == 0
    assert regress.dropped_segments(reference, "") == 3


def test_noise_outputs_are_scored_by_emptiness_and_words():
    scores = regress.noise_scores(["", " . ", "you", "Increase the azithromycin."])
    assert scores == {"noise_empty_rate": 0.5, "noise_words": 1.0}  # punctuation alone is empty
