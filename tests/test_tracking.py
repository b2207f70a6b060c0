"""Experiment tracking: TensorBoard scalars read back by TensorBoard's reader, config checks, MLflow file store."""

from __future__ import annotations

import importlib.util
import math

import pytest

from ray_asr import tracking
from ray_asr.config import ConfigError
from ray_asr.tracking import Tracker, check, read_tensorboard, tag

# Reading event files needs tensorboard (the dev extra); the config checks don't.
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="pip install tensorboard")

EVAL_ROW = {"step": 20, "epoch": 1, "train_loss": 0.75, "train_clips_per_s": 12.5, "wer": 0.25, "cer": 0.125,
            "eval_loss": 0.5, "runaway_outputs": 0, "general_wer": 0.375, "general_eval_loss": 0.625,
            "eval_seconds": 3.5}


def test_history_row_keys_map_to_split_grouped_tags():
    assert {key: tag(key) for key in EVAL_ROW} == {
        "step": "", "epoch": "train/epoch", "train_loss": "train/loss", "train_clips_per_s": "train/clips_per_s",
        "wer": "eval/wer", "cer": "eval/cer", "eval_loss": "eval/loss", "runaway_outputs": "eval/runaway_outputs",
        "general_wer": "general_eval/wer", "general_eval_loss": "general_eval/loss",
        "eval_seconds": "time/eval_seconds"}
    assert tag("learning_rate") == "train/learning_rate"
    assert tag("general_repetition_rate") == "general_eval/repetition_rate"
    assert tag("eval/wer") == "eval/wer" and tag("something_new") == "something_new"


@needs_tensorboard
def test_scalars_at_two_steps_are_read_back_with_steps_values_and_tags(tmp_path):
    with Tracker.open(["tensorboard"], tmp_path, "run-a", {"train": {"learning_rate": 1e-5}}) as tracker:
        tracker.scalars(10, {"step": 10, "train_loss": 1.5, "learning_rate": 2e-5, "train_clips_per_s": 8.0})
        tracker.scalars(20, EVAL_ROW)
    found = read_tensorboard(tmp_path)
    assert (tmp_path / "tensorboard").is_dir()
    assert found["train/loss"] == [(10, 1.5), (20, 0.75)]
    assert found["eval/wer"] == [(20, 0.25)]
    assert found["general_eval/wer"] == [(20, 0.375)]
    assert found["general_eval/loss"] == [(20, 0.625)]
    assert found["time/eval_seconds"] == [(20, 3.5)]
    assert [s for s, _ in found["train/learning_rate"]] == [10]
    assert found["train/learning_rate"][0][1] == pytest.approx(2e-5, rel=1e-6)  # stored as float32
    assert "step" not in found and "train/step" not in found
    assert read_tensorboard(tmp_path / "tensorboard") == found  # the subfolder works too


@needs_tensorboard
def test_scalars_survive_without_close_because_each_call_flushes(tmp_path):
    tracker = Tracker.open(["tensorboard"], tmp_path, "run", {})
    tracker.scalars(5, {"wer": 0.5})
    assert read_tensorboard(tmp_path) == {"eval/wer": [(5, 0.5)]}  # read before close, as after a kill
    tracker.close()
    tracker.close()  # twice is harmless


@needs_tensorboard
def test_none_nan_inf_bools_and_non_numbers_are_skipped(tmp_path):
    with Tracker.open(["tensorboard"], tmp_path, "run", {}) as tracker:
        tracker.scalars(3, {"train_loss": float("nan"), "wer": None, "cer": "0.1", "eval_loss": math.inf,
                            "finished": True, "insertions": [1], "deletions": 2})
        tracker.scalars(4, {"train_loss": float("nan")})  # nothing left: nothing written, no error
    assert read_tensorboard(tmp_path) == {"eval/deletions": [(3, 2.0)]}


def test_the_no_op_tracker_writes_nothing(tmp_path):
    with Tracker.open([], tmp_path, "run", {"a": 1}) as tracker:
        tracker.scalars(1, EVAL_ROW)
    assert list(tmp_path.iterdir()) == []


def test_unknown_tracker_is_a_one_line_config_error_naming_the_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        check(["tensorboard", "wandb"])
    assert str(err.value) == "train.report_to: unknown tracker 'wandb' (known: mlflow, tensorboard)"
    with pytest.raises(ConfigError, match=r"^train\.report_to: "):
        Tracker.open(["TensorBoard"], tmp_path, "run", {})
    with pytest.raises(ConfigError, match=r"^train\.report_to: expected a list"):
        check("tensorboard")
    check([])
    check(["tensorboard"])


def test_mlflow_without_the_package_is_a_one_line_config_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        check(["tensorboard", "mlflow"])
    assert str(err.value) == "train.report_to: mlflow needs the mlflow package: pip install mlflow"
    assert "\n" not in str(err.value)


@needs_tensorboard
def test_a_failing_tracker_is_dropped_with_a_warning_and_the_others_keep_writing(tmp_path, caplog):
    class Broken:
        name = "broken"

        def scalars(self, step, values):
            raise ConnectionError("server gone")

        def close(self, failed):
            pass

    good = tracking._TensorBoard(tmp_path, {})
    tracker = Tracker([Broken(), good])
    tracker.scalars(1, {"wer": 0.5})
    tracker.scalars(2, {"wer": 0.25})
    tracker.close()
    assert read_tensorboard(tmp_path) == {"eval/wer": [(1, 0.5), (2, 0.25)]}
    assert [r.getMessage() for r in caplog.records if "broken" in r.getMessage()] == [
        "[tracking] broken failed, not writing to it again: server gone"]


def test_a_local_mlflow_run_gets_params_and_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow may put a default artifact folder in the working directory
    with Tracker.open(["mlflow"], tmp_path, "run-m", {"train": {"learning_rate": 1e-5, "report_to": ["mlflow"]},
                                                        "long": "x" * 2000}) as tracker:
        tracker.scalars(10, {"train_loss": 1.5, "wer": float("nan")})
        tracker.scalars(20, EVAL_ROW)
        run_id = tracker.backends[0].run.info.run_id
    assert (tmp_path / "mlruns").is_dir()
    client = mlflow.tracking.MlflowClient(tracking.mlflow_uri(tmp_path))
    run = client.get_run(run_id)
    assert run.info.run_name == "run-m" and run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == "1e-05" and len(run.data.params["long"]) <= 500
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(10, 1.5), (20, 0.75)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "general_eval/wer")] == [(20, 0.375)]
    assert client.get_metric_history(run_id, "eval/wer")[-1].step == 20  # the NaN at step 10 was skipped
