"""Each training worker keeps its share of the evaluation splits after their first pass (and of the training split
after its first epoch, where nothing augments it: `shuffled` deals it out again each epoch).

Evaluation runs every `train.eval_every_steps` on the same, never augmented rows. Streaming them
through the data tier each time costs a new Ray Data execution (its coordinator, read tasks and
decode actors start again) and re-decodes every clip; the prepared rows (int16 waveform bytes and
label ids, ~32 KB per second of audio) are small, so a worker keeps them in memory up to
`data.eval_cache_mb`.

Keeping is decided for all ranks together: a rank that reads from memory never iterates its
dataset shard again, and a streaming split waits for every rank to start each pass, so either
every rank keeps a split or none does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

MIB = 1 << 20


def batch_bytes(batch: dict[str, np.ndarray]) -> int:
    """Memory a raw batch (`ray_asr.data.PREPARED_SCHEMA` columns as numpy) holds, roughly."""
    size = 0
    for column in batch.values():
        if column.dtype != object:
            size += column.nbytes
            continue
        for value in column:
            size += value.nbytes if isinstance(value, np.ndarray) else len(value) if isinstance(value, (bytes, str)) else 8
    return size


def _own(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy that holds no view into Ray's object store (a view would pin the block there)."""
    out = {}
    for name, column in batch.items():
        if column.dtype == object:
            copied = np.empty(len(column), dtype=object)
            copied[:] = [value.copy() if isinstance(value, np.ndarray) else value for value in column]
            out[name] = copied
        else:
            out[name] = column.copy()
    return out


class EvalCache:
    """Raw batches of each evaluation split, per rank; `batches()` streams or replays, `settle()` decides."""

    def __init__(self, limit_mb: float):
        self.limit = limit_mb * MIB
        self.kept: dict[str, list[dict]] = {}  # split → this rank's raw batches, once every rank's share fit
        self.pending: dict[str, list[dict] | None] = {}  # first pass in progress; None once over the limit
        self.settled: set[str] = set()

    def batches(self, split: str, stream: Iterable[dict]) -> Iterator[dict]:
        """This rank's raw batches of `split`: from memory once kept, else from `stream` (recorded on the first pass)."""
        if split in self.kept:
            yield from self.kept[split]
            return
        record = split not in self.settled and self.limit > 0
        kept, size = [], 0
        for batch in stream:
            if record and kept is not None:
                size += batch_bytes(batch)
                if size <= self.limit:
                    kept.append(_own(batch))
                else:
                    kept = None  # over the limit: this rank votes to stream every time
            yield batch
        if record:
            self.pending[split] = kept

    def settle(self, split: str, device, every_rank: Callable[[bool, object], bool] | None = None) -> bool:
        """Collective, after a pass over `split` on every rank: keeps it when every rank's share fit. Returns kept.

        `every_rank(fits, device)` tells whether `fits` holds on all ranks (default: an all-reduce).
        """
        if self.limit <= 0:
            return False  # the same on every rank (one config): nothing to agree on
        if split not in self.settled:
            self.settled.add(split)
            kept = self.pending.pop(split, None)
            if (every_rank or all_ranks)(kept is not None, device):
                self.kept[split] = kept
        return split in self.kept


def shuffled(batches: list[dict[str, np.ndarray]], batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
    """The rows of kept raw batches in a new order (`rng`), `batch_size` at a time: an epoch replayed from memory
    as a shuffled stream would give it, every row once."""
    if not batches:
        return
    columns = {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}
    order = rng.permutation(len(next(iter(columns.values()))))
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        yield {name: column[chosen] for name, column in columns.items()}


def all_ranks(flag: bool, device) -> bool:
    """Whether `flag` is true on every rank of the default process group."""
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
