"""The exported model: the base weights with the trained parameters' fp32 master values put back.

Frozen parameters come from the base model's own files, untouched by bf16 training; trainable ones
from DeepSpeed's fp32 master copies, gathered across ranks under ZeRO-1..3. LoRA adapters are merged.
The folder loads offline with `WhisperForConditionalGeneration.from_pretrained` and
`WhisperProcessor.from_pretrained`: safetensors weights, tokenizer, feature extractor, and a
generation config carrying the language and task.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ray_asr import model as model_lib
from ray_asr.config import Config


def trainable_state(engine) -> dict[str, torch.Tensor]:
    """fp32 values of every trainable parameter, by name (collective under ZeRO-3: every rank calls it)."""
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        full = safe_get_full_fp32_param(param)
        state[name] = (full if full is not None else param.data).detach().float().cpu().clone()
    return state


def build(cfg: Config, trainable: dict[str, torch.Tensor]):
    """The base model with `trainable` loaded into it and adapters merged: a plain Whisper in fp32."""
    model = model_lib.apply_strategy(model_lib.load(cfg.model.name_or_path), cfg.train)
    missing = set(trainable) - {name for name, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"trained parameters unknown to the base model: {sorted(missing)[:3]}")
    model.load_state_dict(trainable, strict=False)
    if cfg.train.strategy == "lora":
        model = model.merge_and_unload()
    return model


def write(cfg: Config, trainable: dict[str, torch.Tensor], out: Path, adapter_out: Path | None = None) -> Path:
    """Writes the export folder `out` (and, for LoRA, the unmerged adapter to `adapter_out`)."""
    from transformers import WhisperProcessor

    out = Path(out)
    if cfg.train.strategy == "lora" and adapter_out is not None:
        peft_model = model_lib.apply_strategy(model_lib.load(cfg.model.name_or_path), cfg.train)
        peft_model.load_state_dict(trainable, strict=False)
        peft_model.save_pretrained(adapter_out, safe_serialization=True)
    model = build(cfg, trainable)
    model.generation_config.language = cfg.model.language
    model.generation_config.task = cfg.model.task
    model.save_pretrained(out, safe_serialization=True)
    WhisperProcessor.from_pretrained(cfg.model.name_or_path).save_pretrained(out)
    return out
