"""ActivationCache: memory up to its limit, disk past it, exact round trips, neighbours share files."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_asr.activation_cache import MIB, ActivationCache


@settings(max_examples=20, deadline=None)
@given(dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), rows=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_disk_round_trip_is_exact_in_every_compute_dtype(tmp_path_factory, dtype, rows, seed):
    folder = tmp_path_factory.mktemp("acts")
    tensor = torch.randn(rows, 8, generator=torch.Generator().manual_seed(seed)).to(dtype)
    ActivationCache(0, folder, "fp").put("clip", tensor)  # 0 MiB: straight to disk
    again = ActivationCache(0, folder, "fp").get("clip", dtype)
    assert again.dtype == dtype and torch.equal(again, tensor)


def test_memory_limit_spills_to_disk_and_close_removes_only_its_own_files(tmp_path):
    cache = ActivationCache(1, tmp_path, "fp")
    block = torch.zeros(MIB // 4 // 2)  # half a MiB of fp32
    for key in "abc":
        cache.put(key, block)
    assert set(cache.memory) == {"a", "b"} and cache.used == MIB
    assert len(list((tmp_path / "fp").glob("*.npy"))) == 1
    assert torch.equal(cache.get("c", torch.float32), block) and cache.get("d", torch.float32) is None
    assert (cache.hits, cache.misses) == (1, 1)
    cache.close()
    assert not (tmp_path / "fp").exists() and not cache.memory


def test_a_neighbour_reads_what_a_sharing_worker_wrote_and_a_chosen_folder_is_kept(tmp_path):
    writer = ActivationCache(64, tmp_path, "fp", share_disk=True, keep_files=True)
    writer.put("x", torch.ones(3))
    assert "x" in writer.memory  # in memory for itself, on disk for the others
    reader = ActivationCache(64, tmp_path, "fp")
    assert torch.equal(reader.get("x", torch.float32), torch.ones(3))
    writer.close()
    assert list((tmp_path / "fp").glob("*.npy"))  # the user's folder: a rerun with the same weights reuses it
    assert ActivationCache(64, tmp_path, "other").get("x", torch.float32) is None  # another fingerprint


def test_a_stored_tensor_is_a_copy_not_a_view_of_its_batch(tmp_path):
    batch = torch.zeros(4, 1000)
    cache = ActivationCache(64, tmp_path, "fp")
    cache.put("row", batch[1])
    batch.fill_(7.0)
    stored = cache.memory["row"]
    assert stored.sum() == 0 and stored.untyped_storage().nbytes() == 1000 * 4
