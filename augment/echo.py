"""Room reverberation (convolution with a room impulse response) and a simple discrete echo."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import fftconvolve

from augment._util import Recordings, draw, power
from augment.chain import register

DECAY_60DB = 3 * np.log(10)  # amplitude exp(-a·t) falls 60 dB at t = RT60 when a = 3·ln(10)/RT60


def synthetic_rir(rt60_s: float, drr_db: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A direct-path impulse plus an exponentially decaying noise tail (Polack's model).

    The tail's energy is set so that direct / reverberant energy equals `drr_db`.
    """
    n = max(1, int(rt60_s * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-DECAY_60DB * t / rt60_s)
    tail[0] = 0.0
    tail *= np.sqrt(1.0 / (np.sum(tail**2) * 10 ** (drr_db / 10)))
    tail[0] = 1.0  # the direct path
    return tail


def _matched(out: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Same length as the input, same energy (reverb must not change loudness)."""
    out = out[: len(reference)]
    target, got = power(reference), power(out)
    return (out * np.sqrt(target / got) if got > 0 else out).astype(np.float32)


@register("echo")
@dataclass
class Echo:
    """Reverberation by convolution with a synthetic RIR (RT60, DRR) or a recorded one (`rir_files`)."""

    rt60_s: float | tuple[float, float] = (0.2, 0.8)
    """Reverberation time (60 dB decay), seconds, or a range."""
    drr_db: float | tuple[float, float] = (0.0, 10.0)
    """Direct-to-reverberant energy ratio in dB, or a range."""
    rir_files: list[str] = field(default_factory=list)
    """Recorded impulse responses (files or folders) used instead of synthetic ones."""

    def __post_init__(self) -> None:
        self._recordings = Recordings(self.rir_files, suffixes=(".wav", ".flac"))

    def rir(self, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        if self._recordings:
            return self._recordings.pick(sample_rate, rng)
        return synthetic_rir(draw(rng, self.rt60_s), draw(rng, self.drr_db), sample_rate, rng)

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        return _matched(fftconvolve(audio.astype(np.float64), self.rir(sample_rate, rng)), audio)


@register("discrete_echo")
@dataclass
class DiscreteEcho:
    """A few repeats of the signal, each `delay_s` later and `decay` times quieter."""

    delay_s: float | tuple[float, float] = (0.05, 0.3)
    """Delay between repeats, seconds, or a range."""
    decay: float | tuple[float, float] = (0.2, 0.6)
    """Amplitude ratio of each repeat to the previous one, or a range."""
    repeats: int = 3
    """How many repeats."""

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        delay, decay = max(1, int(draw(rng, self.delay_s) * sample_rate)), draw(rng, self.decay)
        kernel = np.zeros(delay * self.repeats + 1)
        kernel[np.arange(self.repeats + 1) * delay] = decay ** np.arange(self.repeats + 1)
        return _matched(fftconvolve(audio.astype(np.float64), kernel), audio)
