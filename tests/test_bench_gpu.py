"""bench/gpu.py runs first time on a lent GPU: the same script, on the CPU with the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# Slow for its time, not for Ray: three training setups in a fresh process, 62 s on 2 busy cores.
@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_with_the_tiny_model(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--tiny", "--steps", "2", "--batch", "2",
                          "--warmup", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["results"]]
    assert names == ["HF recipe (Seq2SeqTrainer)", "ray-asr ZeRO-2", "ray-asr ZeRO-3"]
    assert all(r["samples_per_s"] > 0 and r["tflops"] > 0 and r["mfu"] is None for r in report["results"])
    assert "ray-asr ZeRO-3 / HF recipe:" in run.stdout
