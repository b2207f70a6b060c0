"""EvalCache: evaluation splits replayed from worker memory after their first pass, decided by all ranks.

No test here forks or spawns a process: the suite's Ray driver lives in this one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch.distributed as dist
from ports import free_ports

from ray_asr.eval_cache import MIB, EvalCache, all_ranks, batch_bytes, shuffled


def _batches(count: int, samples: int = 1600, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for b in range(count):
        audio = np.empty(2, dtype=object)
        audio[:] = [rng.integers(-1000, 1000, samples, dtype=np.int16).tobytes() for _ in range(2)]
        labels = np.empty(2, dtype=object)
        labels[:] = [rng.integers(0, 50, 5 + i, dtype=np.int32) for i in range(2)]
        out.append({"id": np.array([f"m:{b}:{i}" for i in range(2)], dtype=object), "audio": audio,
                    "num_samples": np.array([samples, samples], np.int32), "labels": labels})
    return out


class Stream:
    """An iterable over batches that counts how often it is iterated."""

    def __init__(self, batches):
        self.items, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.items)


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(x[k], y[k]))
                                     for k in x) for x, y in zip(a, b))


@pytest.fixture
def one_rank():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_ports()[0]}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_batch_bytes_counts_audio_and_labels():
    batch = _batches(1, samples=1000)[0]
    # 2 clips x 1000 int16 samples, labels 5 and 6 int32 ids, ids "m:0:0" / "m:0:1", num_samples 2 x int32
    assert batch_bytes(batch) == 2 * 2000 + (5 + 6) * 4 + 2 * 5 + 2 * 4


def test_second_pass_replays_the_first_from_memory_without_streaming(one_rank):
    cache, batches = EvalCache(limit_mb=1), _batches(4)
    stream = Stream(batches)
    first = list(cache.batches("eval", stream))
    assert cache.settle("eval", "cpu") is True
    second = list(cache.batches("eval", stream))
    assert stream.passes == 1 and _same(first, batches) and _same(second, batches)
    # Kept batches are copies: nothing in them shares memory with what the stream handed out.
    batches[0]["labels"][0][0] = 999
    assert second[0]["labels"][0][0] != 999


def test_a_split_over_the_limit_streams_every_time(one_rank):
    batches = _batches(8)  # ~51 KB of audio
    cache = EvalCache(limit_mb=20_000 / MIB)
    stream = Stream(batches)
    for _ in range(3):
        assert _same(list(cache.batches("eval", stream)), batches)
        assert cache.settle("eval", "cpu") is False
    assert stream.passes == 3


def test_zero_limit_never_keeps_and_needs_no_process_group():
    cache, stream = EvalCache(limit_mb=0), Stream(_batches(2))
    for _ in range(2):
        list(cache.batches("eval", stream))
        assert cache.settle("eval", "cpu") is False
    assert stream.passes == 2


@pytest.mark.parametrize("other_fits", [True, False])
def test_ranks_keep_a_split_only_when_every_share_fits(other_fits):
    # Another rank's vote stands in for a second process: this rank's share fits, the other's may not.
    votes = []

    def every_rank(fits: bool, _device) -> bool:
        votes.append(fits)
        return fits and other_fits

    cache, stream = EvalCache(limit_mb=1), Stream(_batches(4))
    list(cache.batches("eval", stream))
    kept = cache.settle("eval", "cpu", every_rank=every_rank)
    replayed = list(cache.batches("eval", stream))
    assert votes == [True] and kept is other_fits
    assert stream.passes == (1 if other_fits else 2) and _same(replayed, stream.items)


def test_all_ranks_is_a_minimum_over_the_process_group(one_rank):
    assert all_ranks(True, "cpu") is True and all_ranks(False, "cpu") is False


def test_a_kept_training_split_is_dealt_out_again_every_row_once_in_a_seeded_order():
    kept = _batches(5)  # 10 rows, with variable-length labels as the data tier gives them
    first = list(shuffled(kept, 4, np.random.default_rng(1)))
    assert [len(b["id"]) for b in first] == [4, 4, 2]
    rows = {i: (a, n, tuple(l)) for b in kept for i, a, n, l in zip(b["id"], b["audio"], b["num_samples"], b["labels"])}
    dealt = [(i, a, n, tuple(l)) for b in first for i, a, n, l in zip(b["id"], b["audio"], b["num_samples"], b["labels"])]
    assert sorted(i for i, *_ in dealt) == sorted(rows)  # every row once
    assert all(rows[i] == (a, n, l) for i, a, n, l in dealt)  # columns stay together
    again = list(shuffled(kept, 4, np.random.default_rng(1)))
    other = list(shuffled(kept, 4, np.random.default_rng(2)))
    order = [i for b in first for i in b["id"]]
    assert order == [i for b in again for i in b["id"]]  # the epoch's seed decides
    assert order != [i for b in other for i in b["id"]]
    assert order != [i for b in kept for i in b["id"]]  # not the first epoch's order
    assert list(shuffled([], 4, np.random.default_rng(0))) == []
