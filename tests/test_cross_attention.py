"""Reassociated cross-attention: the same loss and gradients as the model's own, by another order of products."""

from __future__ import annotations

import copy

import torch
from transformers.modeling_outputs import BaseModelOutput

from ray_asr import cross_attention
from ray_asr.config import TrainConfig
from ray_asr.model import apply_strategy, load


def _loss_and_grads(model, encoded, labels, trains_encoder_output: bool = False):
    model.zero_grad(set_to_none=True)
    states = encoded.clone().requires_grad_(trains_encoder_output)
    loss = model(encoder_outputs=BaseModelOutput(last_hidden_state=states), labels=labels, use_cache=False).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, states.grad


def test_reassociated_loss_and_gradients_equal_the_standard_ones(tiny_model):
    standard = apply_strategy(load(str(tiny_model)), TrainConfig(strategy="freeze")).train()
    fast = copy.deepcopy(standard)
    assert cross_attention.install(fast) == fast.config.decoder_layers
    generator = torch.Generator().manual_seed(0)
    encoded = torch.randn(3, 1500, fast.config.d_model, generator=generator)
    labels = torch.randint(0, 250, (3, 9), generator=generator)  # 4 heads x 9 tokens < d_model 64: reassociated
    loss_a, grads_a, states_a = _loss_and_grads(standard, encoded, labels, trains_encoder_output=True)
    loss_b, grads_b, states_b = _loss_and_grads(fast, encoded, labels, trains_encoder_output=True)
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and any("encoder_attn.k_proj" in name for name in grads_a)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4), name
    assert torch.allclose(states_a, states_b, atol=1e-6)  # the gradient into a trained encoder too


def test_long_labels_and_generation_take_the_standard_path(tiny_model, tokenizer):
    model = load(str(tiny_model)).eval()
    cross_attention.install(model)
    calls = []
    for layer in model.model.decoder.layers:
        standard = layer.encoder_attn._standard_forward
        layer.encoder_attn._standard_forward = lambda *a, _f=standard, **k: calls.append(1) or _f(*a, **k)
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(input_features=features, labels=torch.zeros(1, 30, dtype=torch.long), use_cache=False)  # 4 x 30 > 64
        assert len(calls) == model.config.decoder_layers
        model.generate(input_features=features, max_new_tokens=3)  # a KV cache: the standard order
    assert len(calls) > model.config.decoder_layers
