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


def test_teacher_forced_loss_is_transformers_loss_in_fp32_and_keeps_fp32_from_bf16_logits(tiny_model):
    """The training and evaluation loss (`train.teacher_forced_loss`) equals transformers' own on an fp32 model, with
    and without a prompt's decoder inputs; on bf16 logits it is the fp32 cross-entropy of those logits, from which
    transformers' own loss, computed in bf16, is more than 1e-3 away."""
    from types import SimpleNamespace

    from ray_asr.collate import IGNORE_INDEX
    from ray_asr.train import teacher_forced_loss

    net = model.load(str(tiny_model)).eval()
    torch.manual_seed(0)
    features = torch.randn(2, 80, 3000)
    labels = torch.tensor([[258, 300, 301, 256], [258, 302, 256, IGNORE_INDEX]])
    with torch.no_grad():
        ours = teacher_forced_loss(net, net.config, {"input_features": features}, {"labels": labels})
        theirs = net(input_features=features, labels=labels).loss
        prompt = torch.tensor([[net.config.decoder_start_token_id, 300, 301, 302]] * 2)
        masked = labels.clone()
        masked[:, 0] = IGNORE_INDEX
        prompted = teacher_forced_loss(net, net.config, {"input_features": features},
                                       {"labels": masked, "decoder_input_ids": prompt})
        theirs_prompted = net(input_features=features, decoder_input_ids=prompt, labels=masked).loss
    assert torch.allclose(ours, theirs, atol=1e-6) and torch.allclose(prompted, theirs_prompted, atol=1e-6)

    # Logits near 20, as a trained Whisper's are, in bf16.
    logits = (20 * torch.randn(2, 4, 512)).to(torch.bfloat16)
    config_ = SimpleNamespace(pad_token_id=256, decoder_start_token_id=1)
    ours = teacher_forced_loss(lambda **_: SimpleNamespace(logits=logits), config_, {}, {"labels": labels})
    reference = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 512), labels.reshape(-1))
    in_bf16 = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), labels.reshape(-1))
    assert ours.dtype == torch.float32 and abs(float(ours - reference)) < 1e-5
    assert abs(float(in_bf16) - float(reference)) > 1e-3
