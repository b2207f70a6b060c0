"""Worker-side collate: log-mel batch and -100 label padding to the longest, not to 448."""

from __future__ import annotations

import numpy as np
import torch

from ray_asr import audio
from ray_asr.collate import IGNORE_INDEX, WhisperCollator, pad_labels
from ray_asr.features import log_mel


def test_labels_pad_to_longest_with_ignore_index():
    out = pad_labels([[1, 2, 3], [4], [5, 6]])
    assert out.tolist() == [[1, 2, 3], [4, -100, -100], [5, 6, -100]]
    assert out.dtype == torch.long


def test_collator_builds_model_inputs_from_wire_rows(tiny_model):
    rng = np.random.default_rng(0)
    waves = [rng.uniform(-0.3, 0.3, n).astype(np.float32) for n in (8_000, 40_000)]
    batch = {
        "audio": np.array([audio.to_wire(w, "int16") for w in waves], dtype=object),
        "labels": np.array([np.array([5, 6, 7]), np.array([8])], dtype=object),
    }
    out = WhisperCollator(n_mels=80, wire_dtype="int16")(batch)
    assert out["input_features"].shape == (2, 80, 3000)
    assert out["labels"].tolist() == [[5, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    # the same as computing each clip alone: padding in the batch does not leak between clips
    alone = log_mel(torch.from_numpy(audio.from_wire(batch["audio"][0], "int16"))[None])
    assert torch.allclose(out["input_features"][0], alone[0], atol=1e-5)


def test_collator_applies_spec_augment_when_configured():
    waves = [np.random.default_rng(1).uniform(-0.3, 0.3, 32_000).astype(np.float32)]
    batch = {"audio": np.array([audio.to_wire(w, "float32") for w in waves], dtype=object),
             "labels": np.array([np.array([5])], dtype=object)}
    plain = WhisperCollator(wire_dtype="float32")(batch)["input_features"]
    masked = WhisperCollator(wire_dtype="float32", seed=3,
                             spec_augment={"time_masks": 2, "time_width": 100, "freq_masks": 2, "freq_width": 20})(batch)
    assert masked["input_features"].shape == plain.shape
    assert (masked["input_features"] == 0).sum() > (plain == 0).sum()


def _batch(n: int = 4) -> dict:
    rng = np.random.default_rng(2)
    waves = [rng.uniform(-0.3, 0.3, 16_000).astype(np.float32) for _ in range(n)]
    return {"audio": np.array([audio.to_wire(w, "float32") for w in waves], dtype=object),
            "labels": np.array([np.array([5])] * n, dtype=object), "id": np.array([str(i) for i in range(n)]),
            "text": np.array(["x"] * n)}


def test_spec_augment_reaches_the_training_split_only():
    from ray_asr.collate import for_splits

    spec = {"time_masks": 2, "time_width": 100, "freq_masks": 2, "freq_width": 20}
    train, evaluation = for_splits(80, "float32", "cpu", spec, seed=0)
    assert evaluation.spec_augment is None and train.spec_augment == spec
    batch = _batch()
    trained, scored = train(batch)["input_features"], evaluation(batch)["input_features"]
    assert not torch.equal(trained, scored)  # masked for training
    assert torch.equal(scored, WhisperCollator(wire_dtype="float32", keep=("id", "text"))(batch)["input_features"])
    same, other = for_splits(80, "float32", "cpu", None, seed=0)
    assert same.spec_augment is None and other.spec_augment is None  # not configured: nothing masked anywhere
    assert "rating" in same.keep and "rating" not in other.keep  # feedback ratings decide how training rows train


def test_spec_augment_p_is_the_share_of_clips_masked():
    from ray_asr.features import spec_augment

    features = torch.rand(200, 8, 100) + 1.0  # no zeros before masking
    masked = spec_augment(features, torch.Generator().manual_seed(0), time_masks=2, time_width=20, freq_masks=1,
                          freq_width=3, p=0.25)
    touched = (masked == 0).flatten(1).any(dim=1).float().mean().item()
    assert 0.15 < touched < 0.35
    untouched = spec_augment(features, torch.Generator().manual_seed(0), p=0.0)
    assert torch.equal(untouched, features)
