"""Speed perturbation by resampling (tempo and pitch change together, as in Kaldi's 0.9/1.0/1.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from augment._util import draw
from augment.chain import register


@register("speed")
@dataclass
class Speed:
    """Plays the clip `factor` times faster: the output has `len / factor` samples."""

    factor: float | tuple[float, float] = (0.9, 1.1)
    """Speed factor, or a range drawn uniformly."""

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        factor = draw(rng, self.factor)
        # Reading at rate·factor and writing at rate shortens the clip by `factor`.
        return soxr.resample(audio.astype(np.float32), sample_rate * factor, sample_rate, quality="MQ").astype(np.float32)
