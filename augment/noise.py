"""Additive noise at a target SNR, from synthetic colours or noise recordings."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from augment._util import Recordings, draw, fit_length, power
from augment.chain import register


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f²) noise by spectral shaping of white noise."""
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    exponent = {"pink": 0.5, "brown": 1.0}[colour]  # amplitude ∝ f^-exponent
    return np.fft.irfft(spectrum / f**exponent, n)


@register("noise")
@dataclass
class Noise:
    """Adds noise so that the achieved SNR (measured on the actual signals) equals a drawn target."""

    snr_db: float | tuple[float, float] = (5.0, 20.0)
    """Target signal-to-noise ratio in dB, or a `[lo, hi]` range drawn uniformly."""
    colours: tuple[str, ...] = ("white", "pink", "brown")
    """Synthetic noise colours to pick from."""
    files: list[str] = field(default_factory=list)
    """Noise recordings or folders of them; looped or cropped to length. Used instead of colours."""

    def __post_init__(self) -> None:
        self.colours = tuple(self.colours)
        for colour in self.colours:
            if colour not in ("white", "pink", "brown"):
                raise ValueError(f"colours: unknown colour {colour!r} (white, pink, brown)")
        self._recordings = Recordings(self.files)

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        snr = draw(rng, self.snr_db)
        if self._recordings:
            noise = fit_length(self._recordings.pick(sample_rate, rng), len(audio), rng).astype(np.float64)
        else:
            noise = coloured_noise(len(audio), self.colours[int(rng.integers(len(self.colours)))], rng)
        signal_power, noise_power = power(audio), power(noise)
        if signal_power == 0 or noise_power == 0:
            return audio.astype(np.float32, copy=True)
        scale = np.sqrt(signal_power / (noise_power * 10 ** (snr / 10)))
        return (audio + scale * noise).astype(np.float32)
