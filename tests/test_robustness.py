"""Robustness report: conditions parsed from the CLI's words, seeded corruption, one row per condition."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ray_asr import robustness
from ray_asr.cli import main

SPEECH = Path(__file__).parent / "data" / "speech"


def test_conditions_from_the_command_line_clean_first():
    names = [c.name for c in robustness.parse(["snr=0,10", "noise=white,pink", "echo=0.3,0.8"])]
    assert names == ["clean", "white 0 dB", "white 10 dB", "pink 0 dB", "pink 10 dB", "echo rt60 0.3 s",
                     "echo rt60 0.8 s"]
    # One comma-joined word means the same; snr alone takes white noise; noise alone the default SNRs.
    assert robustness.parse("snr=0,10,noise=white,pink,echo=0.3,0.8") == robustness.parse(
        ["snr=0,10", "noise=white,pink", "echo=0.3,0.8"])
    assert [c.name for c in robustness.parse(["snr=5"])] == ["clean", "white 5 dB"]
    assert len(robustness.parse(["noise=brown"])) == 1 + len(robustness.DEFAULT_SNR_DB)


@pytest.mark.parametrize(("spec", "says"), [
    (["snr=loud"], "snr=loud"), (["noise=violet"], "noise=violet"), (["volume=3"], "volume=3"), (["echo="], "echo"),
])
def test_unreadable_conditions_name_the_word(spec, says):
    with pytest.raises(ValueError, match=says):
        robustness.parse(spec)


def test_noise_recordings_are_a_condition(tmp_path):
    sf.write(tmp_path / "cafe.wav", np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1, 16_000)
    conditions = robustness.parse([f"noise={tmp_path / 'cafe.wav'}", "snr=5"])
    wave = np.sin(np.arange(8000) / 10).astype(np.float32)
    noisy = conditions[1].corrupt(wave, np.random.default_rng(0))
    achieved = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean((noisy - wave).astype(np.float64) ** 2))
    assert conditions[1].name == "cafe.wav 5 dB" and achieved == pytest.approx(5.0, abs=0.01)


def test_every_model_and_setting_hears_the_same_corruption():
    condition = robustness.parse(["snr=0"])[1]
    wave = np.sin(np.arange(16_000) / 7).astype(np.float32)
    a = condition.corrupt(wave, robustness.rng(0, condition, "clip-1"))
    b = condition.corrupt(wave, robustness.rng(0, condition, "clip-1"))
    c = condition.corrupt(wave, robustness.rng(0, condition, "clip-2"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_the_report_has_one_row_per_condition_for_each_model_and_denoise_setting(tiny_model, tmp_path, capsys):
    out = tmp_path / "report" / "robustness.json"
    manifest = tmp_path / "three.jsonl"  # three clips: 16 scorings of the set stay quick
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()[:3]]
    manifest.write_text("".join(json.dumps({**r, "audio": str(SPEECH / r["audio"])}) + "\n" for r in rows))
    code = main(["evaluate", str(tiny_model), str(manifest), "--base", str(tiny_model),
                 "--robustness", "snr=0,20", "echo=0.5", "--denoise", "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())
    conditions = ["clean", "white 0 dB", "white 20 dB", "echo rt60 0.5 s"]
    assert len(rows) == 2 * 2 * len(conditions)  # base and fine-tuned, without and with denoise
    assert {(r["model"], r["denoise"]) for r in rows} == {(m, d) for m in ("base", "fine-tuned") for d in (False, True)}
    for row in rows:
        assert row["num_utterances"] == 3 and 0 <= row["wer"]
    table = out.with_suffix(".md").read_text().splitlines()
    assert [line.split(" | ")[0].strip("| ") for line in table[2:]] == conditions
    assert len(table[0].split(" | ")) == 1 + 4  # condition + a WER column per model and setting
    assert out.with_suffix(".png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "white 0 dB" in printed and str(out.with_suffix(".png")) in printed
