"""Augmentation throughput per CPU core: ray-asr's `augment` versus audiomentations, same chain.

Chain on 5 s, 16 kHz clips, every transform applied (p = 1):
  noise (SNR 5-20 dB, coloured) → echo (convolution with one of 8 room impulse responses,
  RT60 0.2-0.8 s, from files for both libraries) → speed 0.9-1.1.
audiomentations has no resampling speed change; its nearest transform, TimeStretch (tempo only,
phase vocoder), stands in. One process, one thread: clips/s is per core.

    OMP_NUM_THREADS=1 python bench/augment.py [--clips 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# This file is named augment.py; keep its folder off the path so `import augment` finds the package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import soundfile as sf

import augment
from augment.echo import synthetic_rir

RATE = 16_000


def clips(count: int, seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    return [(0.1 * np.sin(2 * np.pi * (150 + 10 * i) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
             + 0.01 * rng.standard_normal(len(t))).astype(np.float32) for i in range(count)]


def timed(fn, waves) -> float:
    fn(waves[0])  # warm caches (impulse responses, filter designs)
    start = time.perf_counter()
    for wave in waves:
        fn(wave)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    import audiomentations as am

    rir_dir = Path(tempfile.mkdtemp(prefix="rirs-"))
    rng = np.random.default_rng(0)
    for i in range(8):
        sf.write(rir_dir / f"rir{i}.wav", synthetic_rir(0.2 + 0.08 * i, 3.0, RATE, rng).astype(np.float32), RATE)
    waves = clips(args.clips, args.seconds)

    ours = augment.build([
        {"name": "noise", "p": 1.0, "snr_db": [5, 20]},
        {"name": "echo", "p": 1.0, "rir_files": [str(rir_dir)]},
        {"name": "speed", "p": 1.0, "factor": [0.9, 1.1]},
    ])
    gen = np.random.default_rng(1)
    theirs = am.Compose([
        am.AddColorNoise(min_snr_db=5, max_snr_db=20, p=1.0),
        am.ApplyImpulseResponse(ir_path=str(rir_dir), p=1.0, leave_length_unchanged=True),
        am.TimeStretch(min_rate=0.9, max_rate=1.1, leave_length_unchanged=False, p=1.0),
    ])
    ours_s = timed(lambda w: ours(w, RATE, gen), waves)
    theirs_s = timed(lambda w: theirs(samples=w, sample_rate=RATE), waves)
    audio_s = args.clips * args.seconds
    print(f"\n{args.clips} clips of {args.seconds:g} s, chain noise → echo → speed, one core")
    print(f"{'library':<34}{'clips/s/core':>14}{'x realtime/core':>17}")
    print(f"{'ray-asr augment':<34}{args.clips / ours_s:>14.1f}{audio_s / ours_s:>17.0f}")
    print(f"{'audiomentations ' + am.__version__:<34}{args.clips / theirs_s:>14.1f}{audio_s / theirs_s:>17.0f}")
    print(f"ray-asr / audiomentations: {theirs_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
