"""Per-clip activations at the frozen boundary: in worker memory up to a limit, on local disk past it.

When the bottom encoder layers are frozen and nothing perturbs a clip's input, their output for that
clip is the same every epoch and every evaluation. Computing it once saves the frozen layers' whole
forward afterwards (for whisper-base with the encoder frozen: ~70-80% of a training step on a CPU).

    <folder>/<fingerprint>/<sha1 of the key>.npy     one tensor per clip, (1500, d_model), compute dtype

The folder is keyed by a fingerprint of the frozen weights, the frozen depth and the dtype, so a
changed model or depth never reads stale activations. Disk files are numpy arrays read with
`allow_pickle=False`. With several workers on a node every entry also goes to disk: the streaming
split hands a clip to whichever worker asks, and a neighbour's file beats recomputing it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

MIB = 1 << 20
# numpy has no bf16: such tensors travel as their int16 bit patterns.
_AS_NUMPY = {torch.bfloat16: torch.int16}


def default_folder() -> Path:
    return Path(tempfile.gettempdir()) / "ray-asr-activations"


class ActivationCache:
    """A key → tensor store: memory first (up to `limit_mb`), then `folder` on local disk."""

    def __init__(self, limit_mb: float, folder: str | Path, fingerprint: str, share_disk: bool = False,
                 keep_files: bool = False):
        self.limit = limit_mb * MIB
        self.folder = Path(folder) / fingerprint
        self.share_disk, self.keep_files = share_disk, keep_files
        self.memory: dict[str, torch.Tensor] = {}
        self.used = 0
        self.written: list[Path] = []
        self.hits = self.misses = 0

    def _path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def get(self, key: str, dtype: torch.dtype) -> torch.Tensor | None:
        """The stored tensor of `key` (on the CPU), or None."""
        found = self.memory.get(key)
        if found is None:
            path = self._path(key)
            if path.exists():
                try:
                    array = np.load(path, allow_pickle=False)
                except (OSError, ValueError):  # a neighbour's file half-written when it died: recompute
                    array = None
                if array is not None:
                    found = torch.from_numpy(array).view(dtype)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Stores a copy of `tensor` (never a view into a batch, which would keep the whole batch alive)."""
        tensor = tensor.detach().to("cpu", copy=True)
        size = tensor.numel() * tensor.element_size()
        in_memory = self.used + size <= self.limit
        if in_memory:
            self.memory[key] = tensor
            self.used += size
        if not in_memory or self.share_disk:
            self._write(key, tensor)

    def _write(self, key: str, tensor: torch.Tensor) -> None:
        path = self._path(key)
        if path.exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        array = tensor.view(_AS_NUMPY.get(tensor.dtype, tensor.dtype)).numpy()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        tmp.replace(path)  # readers see a whole file or none
        self.written.append(path)

    def close(self) -> None:
        """Frees memory and, unless the folder was the user's choice, deletes the files this worker wrote."""
        self.memory.clear()
        self.used = 0
        if self.keep_files:
            return
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written.clear()
        try:
            self.folder.rmdir()  # only once every worker's files are gone
        except OSError:
            pass
