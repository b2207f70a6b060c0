"""Encoder self-attention one head at a time: SDPA's values within bf16 rounding, and only where it applies."""

from __future__ import annotations

import torch

from ray_asr.config import TrainConfig
from ray_asr.model import apply_strategy, load


def _count_standard(model) -> list:
    calls = []
    for layer in model.model.encoder.layers:
        standard = layer.self_attn._standard_forward
        layer.self_attn._standard_forward = lambda *a, _f=standard, **k: calls.append(1) or _f(*a, **k)
    return calls


def test_bf16_without_gradients_matches_sdpa_within_rounding(tiny_model):
    reference = load(str(tiny_model)).eval()  # fp32 SDPA: what both bf16 orders approximate
    model = load(str(tiny_model)).to(torch.bfloat16).eval()
    attention = model.model.encoder.layers[0].self_attn
    hidden = torch.randn(2, 1500, model.config.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = reference.model.encoder.layers[0].self_attn(hidden)[0]
        per_head = attention(hidden.bfloat16())[0].float()
        sdpa = attention._standard_forward(hidden.bfloat16())[0].float()
    assert not torch.equal(per_head, sdpa)  # the per-head order ran, not SDPA's kernel
    ours, theirs = (float((out - exact).norm() / exact.norm()) for out in (per_head, sdpa))
    assert ours < 0.02 and ours < 2 * theirs, (ours, theirs)


def test_the_standard_path_where_gradients_masks_or_fp32_need_it(tiny_model):
    model = apply_strategy(load(str(tiny_model)), TrainConfig(strategy="full", frozen_encoder_layers=1))
    model = model.to(torch.bfloat16).train()
    calls = _count_standard(model)
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1)).bfloat16()
    model.model.encoder(features)  # layer 0 frozen: per head, even with autograd on; layer 1 trains: SDPA
    assert len(calls) == 1
    with torch.no_grad():
        model.model.encoder(features)  # nothing needs gradients: per head everywhere
        assert len(calls) == 1
        model.float().model.encoder(features.float())  # fp32: SDPA's kernel is the faster one there
        assert len(calls) == 3
