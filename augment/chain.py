"""The transform registry and the chain that applies transforms in order, each with probability p."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

REGISTRY: dict[str, type] = {}
"""Transform classes by config name; a transform module adds itself with `@register("name")`."""


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        REGISTRY[name] = cls
        return cls

    return add


@dataclass
class Chain:
    """Transforms applied in order; each runs with its own probability `p`."""

    steps: list = field(default_factory=list)
    """`(p, transform)` pairs."""

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        out = np.asarray(audio, dtype=np.float32).copy()
        for p, transform in self.steps:
            if rng.random() < p:
                out = transform(out, sample_rate, rng)
        return out.astype(np.float32, copy=False)


def build(specs: list[dict]) -> Chain:
    """`[{name: noise, p: 0.5, ...}, ...]` → a `Chain`; an unknown name or parameter names the spec."""
    steps = []
    for i, spec in enumerate(specs):
        params = dict(spec)
        name = params.pop("name", None)
        p = float(params.pop("p", 1.0))
        if name not in REGISTRY:
            known = ", ".join(sorted(REGISTRY)) or "none yet"
            raise ValueError(f"augment[{i}].name: unknown transform {name!r} (known: {known})")
        try:
            transform = REGISTRY[name](**params)
        except TypeError as err:
            raise ValueError(f"augment[{i}] ({name}): {err}") from None
        steps.append((p, transform))
    return Chain(steps)
