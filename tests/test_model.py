"""Strategies and frozen depth on a tiny Whisper: what trains, what stays frozen, what costs no backward."""

from __future__ import annotations

import pytest
import torch

from ray_asr import config, model
from ray_asr.config import ConfigError


def _train(**values):
    return config.from_dict({"train": values}).train


def _grads(m) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in m.named_parameters()}


@pytest.mark.parametrize("strategy,depth,expected", [("full", None, 0), ("freeze", None, 2), ("freeze", 1, 1),
                                                     ("full", 2, 2), ("lora", 1, 1)])
def test_frozen_depth_follows_strategy(strategy, depth, expected):
    assert model.frozen_depth(_train(strategy=strategy, frozen_encoder_layers=depth), 2) == expected


def test_depth_beyond_the_encoder_names_the_field():
    with pytest.raises(ConfigError, match="train.frozen_encoder_layers: the model has 2 encoder layers"):
        model.frozen_depth(_train(frozen_encoder_layers=3), 2)


def test_frozen_depth_freezes_front_end_positions_and_bottom_layers(tiny_model):
    m = model.apply_strategy(model.load(str(tiny_model)), _train(strategy="full", frozen_encoder_layers=1))
    grads = _grads(m)
    for name, trainable in grads.items():
        frozen = name.startswith(("model.encoder.conv", "model.encoder.embed_positions", "model.encoder.layers.0."))
        assert trainable != frozen, name
    assert grads["model.encoder.layer_norm.weight"] and grads["model.decoder.embed_tokens.weight"]


def test_frozen_layers_record_no_autograd(tiny_model):
    m = model.apply_strategy(model.load(str(tiny_model)), _train(strategy="full", frozen_encoder_layers=1))
    seen = {}
    for i, layer in enumerate(m.model.encoder.layers):
        layer.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, out[0].requires_grad
                                                                                    if isinstance(out, tuple)
                                                                                    else out.requires_grad))
    m(input_features=torch.randn(1, 80, 3000), labels=torch.tensor([[258, 300, 256]])).loss.backward()
    assert seen == {0: False, 1: True}


def test_freeze_strategy_freezes_the_whole_encoder_and_optionally_embeddings(tiny_model):
    m = model.apply_strategy(model.load(str(tiny_model)), _train(strategy="freeze", freeze_token_embeddings=True))
    grads = _grads(m)
    assert not any(v for n, v in grads.items() if n.startswith("model.encoder."))
    assert not grads["model.decoder.embed_tokens.weight"]
    assert grads["model.decoder.layers.0.fc1.weight"]


def test_lora_trains_only_adapters_outside_the_frozen_depth(tiny_model):
    m = model.apply_strategy(model.load(str(tiny_model)), _train(strategy="lora", frozen_encoder_layers=1))
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(".encoder.layers.0." in n for n in trainable)
    assert any(".encoder.layers.1." in n for n in trainable) and any(".decoder.layers.0." in n for n in trainable)
    summary = model.trainable_summary(m)
    assert 0 < summary["share"] < 0.5
