"""Cheap level and timing transforms: gain, clipping (saturation), time shift."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from augment._util import draw
from augment.chain import register


@register("gain")
@dataclass
class Gain:
    """Multiplies the signal by a gain drawn in dB."""

    gain_db: float | tuple[float, float] = (-6.0, 6.0)
    """Gain in dB, or a range."""

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        return (audio * 10 ** (draw(rng, self.gain_db) / 20)).astype(np.float32)


@register("clip")
@dataclass
class Clip:
    """Hard saturation at a fraction of the clip's own peak (an overdriven microphone or codec)."""

    level: float | tuple[float, float] = (0.3, 0.8)
    """Clipping threshold as a fraction of the peak, or a range."""

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        threshold = draw(rng, self.level) * float(np.abs(audio).max(initial=0.0))
        return np.clip(audio, -threshold, threshold).astype(np.float32)


@register("time_shift")
@dataclass
class TimeShift:
    """Shifts the signal by up to `max_s` either way, filling with silence; length is kept."""

    max_s: float = 0.5
    """Largest shift in seconds."""

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        limit = min(self.max_s * sample_rate, len(audio))
        # A continuous draw (sub-sample shifts by linear interpolation): two seeds never collide on
        # the same integer shift, and the shift is not quantised to the sample grid.
        shift = rng.uniform(-limit, limit)
        index = np.arange(len(audio))
        return np.interp(index - shift, index, audio, left=0.0, right=0.0).astype(np.float32)
