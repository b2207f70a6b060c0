"""Telephone channel: narrow band (about 300-3400 Hz) and an 8 kHz round trip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr
from scipy.signal import butter, sosfiltfilt

from augment._util import draw
from augment.chain import register

PHONE_RATE = 8_000  # narrowband telephony


@register("telephone")
@dataclass
class Telephone:
    """Band-limits to a drawn telephone band and resamples through 8 kHz and back."""

    low_hz: float | tuple[float, float] = (250.0, 350.0)
    """Lower band edge in Hz, or a range."""
    high_hz: float | tuple[float, float] = (3000.0, 3400.0)
    """Upper band edge in Hz, or a range (at most 3400: the band must fit an 8 kHz channel)."""

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        low, high = draw(rng, self.low_hz), min(draw(rng, self.high_hz), 0.45 * sample_rate)
        sos = butter(8, [low, high], btype="bandpass", fs=sample_rate, output="sos")
        band = sosfiltfilt(sos, audio.astype(np.float64)) if len(audio) > 60 else audio.astype(np.float64)
        narrow = soxr.resample(band.astype(np.float32), sample_rate, PHONE_RATE)
        back = soxr.resample(narrow, PHONE_RATE, sample_rate)
        out = np.zeros(len(audio), np.float32)
        out[: min(len(back), len(audio))] = back[: len(audio)]
        return out
