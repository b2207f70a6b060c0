"""Worker-side batching: waveforms → log-mel on the worker's device, labels padded with -100.

Used as `collate_fn` of `iter_torch_batches` on a `get_dataset_shard` iterator, so the heavy
feature computation happens on the trainer (GPU when it has one), not on the data tier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from ray_asr.audio import from_wire
from ray_asr.features import log_mel, spec_augment

IGNORE_INDEX = -100  # label value that cross-entropy skips


def pad_labels(label_lists, pad_to: int | None = None) -> torch.Tensor:
    """`[list of ids]` → `(batch, longest)` int64, padding with -100 (not to 448)."""
    longest = max(len(ids) for ids in label_lists)
    out = torch.full((len(label_lists), pad_to or longest), IGNORE_INDEX, dtype=torch.long)
    for i, ids in enumerate(label_lists):
        out[i, : len(ids)] = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    return out


def stack_waves(waves) -> torch.Tensor:
    """`[(samples,) float32]` → `(batch, longest)` float32, zero-padded (log-mel ignores the padding)."""
    stacked = np.zeros((len(waves), max(len(w) for w in waves)), np.float32)
    for i, wave in enumerate(waves):
        stacked[i, : len(wave)] = wave
    return torch.from_numpy(stacked)


@dataclass
class WhisperCollator(NumpyBatchCollateFn):
    """Turns a numpy batch of `ray_asr.data.PREPARED_SCHEMA` rows into model inputs."""

    n_mels: int = 80
    """Mel bins of the model (80 for most Whisper sizes, 128 for large-v3)."""
    wire_dtype: str = "int16"
    """How the data tier packed the waveforms (`data.wire_dtype`)."""
    device: str | torch.device = "cpu"
    """Where log-mel is computed and tensors are returned."""
    spec_augment: dict | None = None
    """SpecAugment settings (`time_masks`, `time_width`, `freq_masks`, `freq_width`, `p`); None = off. Give it to
    the training split's collator only: evaluation scores the clips as they are."""
    seed: int = 0
    """Seed of the SpecAugment generator (give each worker its own, e.g. seed + rank)."""
    keep: tuple = ()
    """Columns passed through as Python lists (e.g. `("id", "text")` for evaluation)."""

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        stacked = stack_waves([from_wire(buffer, self.wire_dtype) for buffer in batch["audio"]])
        features = log_mel(stacked.to(self.device), self.n_mels)  # (batch, n_mels, 3000)
        if self.spec_augment is not None:
            features = spec_augment(features, self._generator, **self.spec_augment)
        out = {"input_features": features, "labels": pad_labels(batch["labels"]).to(self.device)}
        out.update((name, batch[name].tolist()) for name in self.keep)
        return out


def for_splits(n_mels: int, wire_dtype: str, device, spec_augment: dict | None, seed: int,
               keep: tuple = ("id", "text")) -> tuple[WhisperCollator, WhisperCollator]:
    """The training split's collator (SpecAugment when configured) and the evaluation splits' (never)."""
    plain = WhisperCollator(n_mels=n_mels, wire_dtype=wire_dtype, device=device, keep=keep)
    if spec_augment is None:
        return plain, plain
    return WhisperCollator(n_mels=n_mels, wire_dtype=wire_dtype, device=device, keep=keep, spec_augment=spec_augment,
                           seed=seed), plain
