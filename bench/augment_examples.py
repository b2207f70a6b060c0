"""A listening page: before/after clips for each transform and one PNG of their spectrograms.

    python bench/augment_examples.py [--out runs/augment-examples]

Writes `clean.wav`, `<transform>.wav` for each registered transform and `spectrograms.png`.
The speech is eSpeak NG (from the demo corpus dependencies), so the effect of each transform on
real speech structure (harmonics, formants, pauses) is visible and audible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# This folder holds augment.py; keep it off the path so `import augment` finds the package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import soundfile as sf
import soxr

import augment

RATE = 16_000
EXAMPLES = {  # one clearly audible setting per transform
    "noise": {"snr_db": 5, "colours": ["pink"]},
    "echo": {"rt60_s": 0.8, "drr_db": 0.0},
    "discrete_echo": {"delay_s": 0.25, "decay": 0.5},
    "speed": {"factor": 1.1},
    "gain": {"gain_db": -12},
    "clip": {"level": 0.3},
    "time_shift": {"max_s": 0.5},
    "telephone": {},
    "denoise": {"strength": 1.0},
}


def speech() -> np.ndarray:
    from ray_asr.tts import EspeakSynth, Voice

    synth = EspeakSynth()
    wave = synth.say("The patient was started on metoprolol twice daily.", Voice("en-us+m3", 150, 45))
    return soxr.resample(wave.astype(np.float32) / 32768, synth.sample_rate, RATE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/augment-examples")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clean = speech()
    rng = np.random.default_rng(0)
    noisy_for_denoise = augment.build([{"name": "noise", "snr_db": 10, "colours": ["white"]}])(clean, RATE, rng)
    results = {"clean": clean}
    for name, params in EXAMPLES.items():
        source = noisy_for_denoise if name == "denoise" else clean
        if name == "denoise":
            results["noisy (denoise input)"] = noisy_for_denoise
        results[name] = augment.build([{"name": name, "p": 1.0, **params}])(source, RATE, np.random.default_rng(1))
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.0 * len(results)), sharex=True)
    for ax, (name, wave) in zip(axes, results.items()):
        sf.write(out / f"{name.split()[0]}.wav", wave, RATE)
        ax.specgram(wave, NFFT=400, Fs=RATE, noverlap=240, cmap="magma", vmin=-120)
        ax.set_ylabel("Hz")
        ax.set_title(name, loc="left", fontsize=10)
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out / "spectrograms.png", dpi=80)
    print(f"wrote {len(results)} clips and spectrograms.png to {out}")


if __name__ == "__main__":
    main()
