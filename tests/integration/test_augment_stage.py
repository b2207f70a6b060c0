"""The augmentation stage in the Ray Data pipeline: new audio every epoch, the same audio on a rerun."""

from __future__ import annotations

import pytest
import ray

from ray_asr import audio, config, data

pytestmark = pytest.mark.usefixtures("ray_local")


def _epoch(ds) -> dict[str, tuple]:
    return {row["id"]: (row["audio"], row["num_samples"])
            for batch in ds.iter_batches(batch_size=16, batch_format="pyarrow") for row in batch.to_pylist()}


def _dataset(catalogue, tiny_model, tmp_path, split="train"):
    cfg = config.from_dict({
        "model": {"name_or_path": str(tiny_model)}, "output_dir": str(tmp_path),
        "data": {"train": str(catalogue.manifest), "eval": str(catalogue.manifest), "augment_num_cpus": 0.5,
                 "prepare_num_cpus": 0.5},
        "augment": [{"name": "noise", "p": 1.0, "snr_db": [5, 20]}, {"name": "speed", "p": 0.5}],
        "train": {"seed": 7},
    })
    return data.build_dataset(cfg, split, data.open_sink(None), enforce_limit=False)


def test_epochs_differ_and_reruns_repeat(catalogue, tiny_model, tmp_path):
    ds = _dataset(catalogue, tiny_model, tmp_path)
    first, second = _epoch(ds), _epoch(ds)
    assert set(first) == set(second) == catalogue.good
    assert all(first[i][0] != second[i][0] for i in first)  # every row got new noise in epoch 2
    rerun = _dataset(catalogue, tiny_model, tmp_path)
    assert _epoch(rerun) == first  # a new run with the same seed sees the same audio
    for wire, n in first.values():
        assert len(audio.from_wire(wire, "int16")) == n


def test_evaluation_split_is_never_augmented(catalogue, tiny_model, tmp_path):
    ds = _dataset(catalogue, tiny_model, tmp_path, split="eval")
    assert _epoch(ds) == _epoch(ds)
    assert ray.is_initialized()


def test_preprocess_applies_to_every_split_the_same_each_epoch(catalogue, tiny_model, tmp_path):
    def dataset(split, preprocess):
        cfg = config.from_dict({
            "model": {"name_or_path": str(tiny_model)}, "output_dir": str(tmp_path),
            "data": {"train": str(catalogue.manifest), "eval": str(catalogue.manifest), "preprocess": preprocess,
                     "wire_dtype": "float32"},
        })
        return data.build_dataset(cfg, split, data.open_sink(None), enforce_limit=False)

    plain = _epoch(dataset("eval", []))
    denoised = dataset("eval", [{"name": "denoise", "strength": 1.0}])
    first, second = _epoch(denoised), _epoch(denoised)
    assert first == second and set(first) == catalogue.good
    assert all(first[i][0] != plain[i][0] for i in first)
    assert _epoch(dataset("train", [{"name": "denoise", "strength": 1.0}])) == first
