"""Spectral-gating noise reduction (noisereduce): an augmentation and a preprocessing step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from augment._util import draw
from augment.chain import register


@register("denoise")
@dataclass
class Denoise:
    """Reduces stationary noise; `strength` is the share of the estimated noise removed."""

    strength: float | tuple[float, float] = (0.6, 1.0)
    """noisereduce's `prop_decrease`, or a range (1.0 removes all the estimated noise)."""

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        import noisereduce

        if len(audio) < 2048:  # shorter than one analysis window: nothing to estimate
            return audio.astype(np.float32, copy=True)
        out = noisereduce.reduce_noise(y=audio, sr=sample_rate, stationary=True, prop_decrease=draw(rng, self.strength))
        return np.nan_to_num(out).astype(np.float32)
