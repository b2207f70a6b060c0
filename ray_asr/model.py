"""Loading Whisper and shaping what trains: frozen depth, the freeze/full/LoRA strategies.

Frozen depth N freezes the encoder's conv front end, its positions and its bottom N layers. Frozen
layers cost no backward: the input features never require grad and neither do the frozen
parameters, so autograd records nothing until the first trainable layer.
"""

from __future__ import annotations

import re

from ray_asr.config import TrainConfig


def load(path: str, attn_implementation: str = "sdpa"):
    """`WhisperForConditionalGeneration` from an HF folder (SDPA attention: 2x eager on CPU), its encoder's
    self-attention one head at a time where that is faster (`ray_asr.encoder_attention`)."""
    from transformers import WhisperForConditionalGeneration

    from ray_asr import encoder_attention

    model = WhisperForConditionalGeneration.from_pretrained(path, attn_implementation=attn_implementation)
    if attn_implementation == "sdpa":
        encoder_attention.install(model)
    return model


def require_folder(path: str) -> None:
    """Fails in one line on a path that is not a Whisper model folder (before loading anything)."""
    from pathlib import Path

    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Whisper model folder (no config.json)")


# Strategies that train only what growth added (`ray_asr.grow`): every pretrained weight stays as it was.
GROWTH_ONLY = ("add_layers", "head")


def frozen_depth(train: TrainConfig, encoder_layers: int, added_encoder_layers: int = 0) -> int:
    """Encoder layers to freeze: the configured depth, or the strategy's default (all pretrained ones for `freeze`
    and the growth-only strategies; none for `full` and `lora`)."""
    if train.frozen_encoder_layers is not None:
        if train.frozen_encoder_layers > encoder_layers:
            from ray_asr.config import ConfigError

            raise ConfigError(f"train.frozen_encoder_layers: the model has {encoder_layers} encoder layers, "
                              f"got {train.frozen_encoder_layers}")
        return train.frozen_encoder_layers
    return encoder_layers - added_encoder_layers if train.strategy in ("freeze", *GROWTH_ONLY) else 0


def depth_of(model, train: TrainConfig) -> int:
    """`frozen_depth` of a loaded model, counting the encoder layers its growth added."""
    from ray_asr.grow import Growth

    added = len(Growth.of(model.name_or_path).added_encoder_layers)
    return frozen_depth(train, model.config.encoder_layers, added)


def freeze_encoder(model, depth: int) -> None:
    """Freezes the conv front end, positions and bottom `depth` layers (and the final norm when all are)."""
    encoder = model.model.encoder
    if depth == 0:
        return
    frozen = [encoder.conv1, encoder.conv2, encoder.embed_positions, *encoder.layers[:depth]]
    if depth == len(encoder.layers):
        frozen.append(encoder.layer_norm)
    for module in frozen:
        module.requires_grad_(False)


def _adapter_targets(names: list[str], depth: int) -> str:
    """A peft `target_modules` regex: the named linears, except in frozen encoder layers."""
    frozen = "|".join(str(i) for i in range(depth))
    skip = rf"(?!model\.encoder\.layers\.({frozen})\.)" if depth else ""
    return rf"^{skip}model\.(encoder|decoder)\.layers\.\d+\..*\b({'|'.join(map(re.escape, names))})$"


def apply_strategy(model, train: TrainConfig):
    """Applies `train.strategy` and frozen depth; returns the model to train (a peft model for LoRA). Layers a
    grown model added (`ray_asr.grow`) train under every strategy."""
    from ray_asr.grow import Growth

    growth = Growth.of(model.name_or_path)
    depth = frozen_depth(train, model.config.encoder_layers, len(growth.added_encoder_layers))
    added = growth.added_layers(model.model)
    if train.strategy == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=train.lora.r, lora_alpha=train.lora.alpha, lora_dropout=train.lora.dropout,
                          target_modules=_adapter_targets(train.lora.target_modules, depth))
        model = get_peft_model(model, lora)  # freezes every base weight, adapters train
        for layer in added:
            layer.requires_grad_(True)
        return model
    if train.strategy in GROWTH_ONLY:
        _train_growth_only(model, train, growth, added)
        return model
    freeze_encoder(model, depth)
    if train.freeze_token_embeddings:
        model.model.decoder.embed_tokens.requires_grad_(False)
    return model


def _train_growth_only(model, train: TrainConfig, growth, added: list) -> None:
    """Freezes everything but the added layers and, for `head`, the new rows of the token embedding (tied to the
    output projection): the old rows get a zero gradient, so Adam leaves them exactly as they were."""
    from ray_asr.config import ConfigError

    model.requires_grad_(False)
    for layer in added:
        layer.requires_grad_(True)
    if train.strategy == "head":
        first = growth.first_new_token
        if first is None:
            raise ConfigError("train.strategy: head trains the rows model.add_tokens or model.new_language add; "
                              "set one of them")
        embed = model.get_input_embeddings().weight
        embed.requires_grad_(True)
        embed.register_hook(lambda grad: _old_rows_zeroed(grad, first))
    elif not added:
        raise ConfigError("train.strategy: add_layers trains only the layers train.add_layers adds; set "
                          "train.add_layers: {decoder: 2}")


def _old_rows_zeroed(grad, first: int):
    """`grad` with its rows before `first` zeroed (a new tensor: hooks must not change theirs in place)."""
    keep = grad.clone()
    keep[:first] = 0
    return keep


def trainable_summary(model) -> dict:
    """Trainable and total parameter counts."""
    def count(p) -> int:
        return getattr(p, "ds_numel", p.numel())  # ZeRO-3 leaves each rank an empty shell of the full size

    total = sum(count(p) for p in model.parameters())
    trainable = sum(count(p) for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "share": trainable / max(total, 1)}
