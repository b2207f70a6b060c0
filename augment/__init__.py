"""Standalone, seeded audio augmentation (numpy/scipy/soxr/noisereduce only; never imports ray).

`augment.build(specs)` turns the config's `augment:` list into a chain; `chain(audio, sample_rate,
rng)` maps a mono float32 array to a new one. Transforms register themselves by name.
"""

from __future__ import annotations

from augment.chain import REGISTRY, Chain, build

__all__ = ["REGISTRY", "Chain", "build"]
