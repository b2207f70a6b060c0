"""The encoder split at the frozen boundary: bit-equal to the model's own forward, cached or not."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

from ray_asr import evaluate
from ray_asr.activation_cache import ActivationCache
from ray_asr.config import TrainConfig
from ray_asr.encoder import FrozenBoundary, deterministic, fingerprint
from ray_asr.model import apply_strategy, load


def _batch(seed: int = 0, clips: int = 3):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(clips, 80, 3000, generator=generator)
    labels = torch.randint(0, 250, (clips, 7), generator=generator)
    return features, labels


# Part of the encoder frozen; all of it (the tiny model has 2 layers); bf16, where the frozen layers' attention runs
# one head at a time (`ray_asr.encoder_attention`) both inside the model's own forward and at the boundary.
@pytest.mark.parametrize(("depth", "dtype"), [(1, torch.float32), (2, torch.float32), (1, torch.bfloat16)])
def test_loss_is_bit_equal_with_and_without_the_cache(tiny_model, tmp_path, depth, dtype):
    model = apply_strategy(load(str(tiny_model)), TrainConfig(strategy="full", frozen_encoder_layers=depth)).to(dtype)
    features, labels = _batch()
    features = features.to(dtype)
    plain = model(input_features=features, labels=labels).loss
    cache = ActivationCache(limit_mb=1, folder=tmp_path, fingerprint=fingerprint(model, depth, dtype))
    boundary = FrozenBoundary(model, depth, cache)
    keys = ["a", "b", "c"]
    first = model(encoder_outputs=BaseModelOutput(last_hidden_state=boundary(features, keys)), labels=labels).loss
    assert cache.misses == 3 and cache.hits == 0
    # Cached: the features no longer matter for the frozen part (zeros here), the loss is the same bits.
    second = model(encoder_outputs=BaseModelOutput(last_hidden_state=boundary(torch.zeros_like(features), keys)),
                   labels=labels).loss
    assert cache.hits == 3
    assert torch.equal(plain, first) and torch.equal(plain, second), (plain, first, second)
    # 1 MiB holds two of the tiny model's (1500, 64) fp32 activations (375 KiB each): the third spilled to disk;
    # in bf16 (188 KiB each) all three fit.
    on_disk = 1 if dtype == torch.float32 else 0
    assert len(cache.memory) == 3 - on_disk and len(list(cache.folder.glob("*.npy"))) == on_disk


def test_gradients_flow_above_the_boundary_only(tiny_model, tmp_path):
    model = apply_strategy(load(str(tiny_model)), TrainConfig(strategy="full", frozen_encoder_layers=1))
    features, labels = _batch(1)
    boundary = FrozenBoundary(model, 1, ActivationCache(64, tmp_path, "x"))
    for keys in (["a", "b", "c"], ["a", "b", "c"]):  # computed, then cached
        model.zero_grad()
        loss = model(encoder_outputs=BaseModelOutput(last_hidden_state=boundary(features, keys)), labels=labels).loss
        loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        assert grads["model.encoder.layers.1.fc1.weight"].abs().sum() > 0
        assert all(p.grad is None for name, p in model.named_parameters() if name.startswith("model.encoder.layers.0."))


def test_partial_hits_compute_only_the_missing_clips(tiny_model, tmp_path):
    model = apply_strategy(load(str(tiny_model)), TrainConfig(strategy="freeze"))
    features, _ = _batch(2)
    cache = ActivationCache(64, tmp_path, "x")
    boundary = FrozenBoundary(model, 2, cache)
    with torch.no_grad():
        whole = model.model.encoder(features).last_hidden_state
        boundary(features[:1], ["a"])
        mixed = boundary(features, ["a", "b", None])  # "a" cached, "b" new, an unnamed clip is never stored
    assert cache.hits == 1 and set(cache.memory) == {"a", "b"}
    assert torch.allclose(mixed, whole, atol=1e-5)


def test_fingerprint_changes_with_weights_depth_and_dtype(tiny_model):
    model = load(str(tiny_model))
    base = fingerprint(model, 1, torch.float32)
    assert fingerprint(model, 1, torch.float32) == base
    assert fingerprint(model, 2, torch.float32) != base and fingerprint(model, 1, torch.bfloat16) != base
    with torch.no_grad():
        model.model.decoder.layers[0].fc1.weight.add_(1.0)  # above the boundary: the activations stay valid
    assert fingerprint(model, 1, torch.float32) == base
    with torch.no_grad():
        model.model.encoder.layers[0].fc1.weight.add_(1e-3)
    assert fingerprint(model, 1, torch.float32) != base


def test_dropout_makes_the_encoder_uncacheable(tiny_model):
    model = load(str(tiny_model))
    assert deterministic(model.config)
    model.config.attention_dropout = 0.1
    assert not deterministic(model.config)


def test_generation_from_encoder_outputs_equals_generation_from_features(tiny_model, tokenizer):
    model = load(str(tiny_model)).eval()
    features, _ = _batch(3, clips=2)
    with torch.no_grad():
        encoded = BaseModelOutput(last_hidden_state=model.model.encoder(features).last_hidden_state)
    a, _ = evaluate.generate(model, [6, 6], tokenizer.eos_token_id, input_features=features, language="en")
    b, _ = evaluate.generate(model, [6, 6], tokenizer.eos_token_id, encoder_outputs=encoded, language="en")
    assert a == b and any(a)
