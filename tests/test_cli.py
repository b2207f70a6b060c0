"""CLI contract without Ray: commands not yet built fail clearly, bad inputs exit 2 with one line."""

from __future__ import annotations

import pytest

from ray_asr.cli import main


@pytest.mark.parametrize("argv", [
    ["transcribe", "m", "a.wav"], ["export", "runs/x", "--format", "hf", "--out", "o"],
])
def test_commands_of_later_milestones_say_so(argv, capsys):
    assert main(argv) == 2
    assert "not implemented yet" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "field"), [
    ("train.learning_rate=-1", "train.learning_rate: must be > 0"),
    ("train.eval_every_steps=-2", "train.eval_every_steps: must be >= 0"),
    ("data.train=null", "data.train: must be set for finetune"),
    ("model.name_or_path=builtin:huge", "model.name_or_path: unknown built-in"),
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
