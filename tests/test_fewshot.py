"""The few-shot learning curve's pieces (`ray_asr.fewshot`) and early stopping's choice of the best evaluation
(`ray_asr.metrics.best_index`); the curve end to end runs in tests/integration/test_finetune.py."""

from __future__ import annotations

import math

import pytest

from ray_asr import fewshot, metrics
from ray_asr.config import ConfigError


def test_best_evaluation_and_staleness():
    history = [{"step": 0, "wer": 0.5}, {"step": 4, "wer": 0.3}, {"step": 8, "wer": 0.3}, {"step": 12, "wer": 0.4}]
    assert metrics.best_index(history, "wer") == 1  # the earliest of equals
    assert metrics.stale_evaluations(history, "wer") == 2
    assert metrics.stale_evaluations(history[:2], "wer") == 0
    assert metrics.best_index([{"wer": math.nan}, {"wer": 0.9}], "wer") == 1  # NaN never wins
    assert metrics.best_index([{"step": 0}], "general_wer") is None
    assert metrics.stale_evaluations([{"step": 0}, {"step": 1}], "general_wer") == 2


def test_a_general_wer_bound_leaves_out_evaluations_that_forgot():
    history = [{"step": 0, "wer": 0.60, "general_wer": 0.165}, {"step": 10, "wer": 0.30, "general_wer": 0.206},
               {"step": 20, "wer": 0.41, "general_wer": 0.175}, {"step": 30, "wer": 0.38, "general_wer": 0.190}]
    assert metrics.best_index(history, "wer") == 1
    assert metrics.best_index(history, "wer", max_general_wer_increase=0.01) == 2  # 17.5% is within a point
    assert metrics.best_index(history, "wer", max_general_wer_increase=0.0) == 0  # only the start keeps it
    assert metrics.best_index(history[1:], "wer", max_general_wer_increase=0.0) == 0  # no start row: no bound


def test_ks_parse_sorted_and_bad_ones_name_the_flag():
    assert fewshot.parse_ks("32,8, 16,8") == [8, 16, 32]
    for bad in ("", "8,x", "0,8"):
        with pytest.raises(ConfigError, match="--k"):
            fewshot.parse_ks(bad)


def test_curve_rows_table_and_plot(tmp_path):
    base = {"wer": 0.6, "general_wer": 0.10}
    # k = 32 finished in an earlier invocation: this one ran no step, yet the row counts the 40 it trained.
    rows = [fewshot.row(8, {"steps_run": 10, "last_step": 10, "step": 4, "eval": {"wer": 0.45},
                            "general_eval": {"wer": 0.105}}, base),
            fewshot.row(32, {"steps_run": 0, "last_step": 40, "step": 40, "eval": {"wer": 0.3},
                             "general_eval": {"wer": 0.11}}, base)]
    assert rows[1]["wer_relative_change"] == pytest.approx(-0.5)
    assert rows[1]["general_wer_change"] == pytest.approx(0.01)
    fewshot.write(rows, base, tmp_path)
    table = (tmp_path / "fewshot-curve.md").read_text()
    assert "| 32 | 40 | 40 | 30.00% | -50.0% | 11.00% | +1.00 pt |" in table and "| base |" in table
    assert (tmp_path / "fewshot-curve.csv").read_text().splitlines()[0] == ",".join(fewshot.COLUMNS)
    assert (tmp_path / "fewshot-curve.png").stat().st_size > 5_000


def test_a_point_trains_on_k_rows_in_its_own_folder_with_the_base_first():
    from ray_asr import config

    cfg = config.from_dict({"data": {"train": "t.jsonl", "eval": "e.jsonl"}, "output_dir": "runs/curve",
                            "train": {"storage_path": "/elsewhere"}})
    point = fewshot.point_config(cfg, 16)
    assert point.data.train_rows == 16 and point.output_dir.endswith("curve/k-16")
    assert point.train.eval_at_start and point.train.storage_path is None and point.train.run_name.endswith("k16")
    assert cfg.data.train_rows is None  # the curve's own config untouched


def test_driver_paths_reach_workers_absolute(tmp_path, monkeypatch):
    """Workers do not share the driver's working directory: the rehearsal set and a chosen activation-cache folder
    (which need not exist yet) are made absolute with the other paths."""
    from ray_asr import config, finetune

    monkeypatch.chdir(tmp_path)
    (tmp_path / "everyday.jsonl").write_text("")
    cfg = config.from_dict({"data": {"train": "t.jsonl", "activation_cache_dir": "runs/activations",
                                     "rehearsal": {"manifest": "everyday.jsonl", "fraction": 0.2}}})
    data = finetune.absolute_paths(config.to_dict(cfg))["data"]
    assert data["activation_cache_dir"] == str(tmp_path / "runs" / "activations")
    assert data["rehearsal"] == {"manifest": str(tmp_path / "everyday.jsonl"), "fraction": 0.2}
