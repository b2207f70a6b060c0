"""Built-in smoke assets: names resolve to built folders; unknown names are one line naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ray_asr import builtin, config, finetune, plots


def test_tone_corpus_and_tiny_model_are_built_once_and_resolved(tmp_path):
    cfg = config.from_dict({"model": {"name_or_path": "builtin:tiny-whisper"}, "output_dir": str(tmp_path),
                            "data": {"train": "builtin:tones/train", "eval": "builtin:tones/eval"}})
    resolved = builtin.resolve(cfg)
    rows = [json.loads(line) for line in Path(resolved.data.train).read_text().splitlines()]
    assert len(rows) == builtin.SPLIT_SIZES["train"] and all(2 <= len(r["text"].split()) <= 5 for r in rows)
    assert (tmp_path / "assets" / "tiny-whisper" / "model.safetensors").exists()
    again = builtin.resolve(cfg)
    assert again.data.eval == resolved.data.eval and again.model == resolved.model


def test_each_word_has_its_own_pitch():
    rng = np.random.default_rng(0)
    one, two = builtin.tone_sentence(["ka"], rng), builtin.tone_sentence(["ne"], rng)
    peak = [np.argmax(np.abs(np.fft.rfft(w))) * builtin.SAMPLE_RATE / len(w) for w in (one, two)]
    assert abs(peak[0] - builtin.PITCH_HZ) < 10 and peak[1] > 3 * peak[0]


@pytest.mark.parametrize(("key", "value"), [("model.name_or_path", "builtin:nope"), ("data.train", "builtin:tones/x")])
def test_unknown_builtins_name_the_field(tmp_path, key, value):
    cfg = config.from_dict({"output_dir": str(tmp_path)}, [f"{key}={value}"])
    with pytest.raises(config.ConfigError, match=key):
        builtin.resolve(cfg)


def test_summary_table_and_training_curves(tmp_path):
    summary = {"eval": {k: 0.25 for k in finetune.METRIC_KEYS}, "general_eval": {k: 0.1 for k in finetune.METRIC_KEYS}}
    table = finetune.summary_table(summary)
    assert "25.00%" in table and "general_eval" in table and len(table.splitlines()) == 1 + len(finetune.METRIC_KEYS)
    history = [{"step": s, "train_loss": 3 - s / 10, "eval_loss": 2.5, "wer": 0.5 - s / 100, "general_wer": 0.2}
               for s in range(0, 30, 10)]
    out = plots.training_curves(history, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_a_run_without_evaluation_splits_says_so_and_plots_its_loss_without_warnings(tmp_path):
    import warnings

    assert finetune.summary_table({"step": 8}).startswith("no evaluation split")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of a legend with nothing to label
        out = plots.training_curves([{"step": s, "train_loss": 3 - s} for s in (1, 2)], tmp_path / "loss.png")
    assert out.stat().st_size > 10_000
