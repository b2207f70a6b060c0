"""Standalone, seeded audio augmentation (numpy/scipy/soxr/noisereduce only; never imports ray).

`augment.build(specs)` turns the config's `augment:` list into a chain; `chain(audio, sample_rate,
rng)` maps a mono float32 array to a new one. Each transform is a small dataclass registered by
name; all randomness comes from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

from augment import denoise, echo, noise, simple, speed, telephone  # noqa: F401 (registers the transforms)
from augment.chain import REGISTRY, Chain, build

__all__ = ["REGISTRY", "Chain", "build"]
