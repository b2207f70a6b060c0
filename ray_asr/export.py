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


def _trained(cfg: Config, trainable: dict[str, torch.Tensor]):
    """The base model, shaped by the strategy (a peft model for LoRA), with `trainable` loaded into it."""
    model = model_lib.apply_strategy(model_lib.load(cfg.model.name_or_path), cfg.train)
    missing = set(trainable) - {name for name, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"trained parameters unknown to the base model: {sorted(missing)[:3]}")
    model.load_state_dict(trainable, strict=False)
    return model


def write(cfg: Config, trainable: dict[str, torch.Tensor], out: Path, adapter_out: Path | None = None) -> Path:
    """Writes the export folder `out`: a plain fp32 Whisper with adapters merged (and, for LoRA, the
    unmerged adapter to `adapter_out`)."""
    from transformers import WhisperProcessor

    out = Path(out)
    model = _trained(cfg, trainable)
    if cfg.train.strategy == "lora":
        if adapter_out is not None:
            model.save_pretrained(adapter_out, safe_serialization=True)  # before merging folds it in
        model = model.merge_and_unload()
    model.generation_config.language = cfg.model.language
    model.generation_config.task = cfg.model.task
    model.save_pretrained(out, safe_serialization=True)
    WhisperProcessor.from_pretrained(cfg.model.name_or_path).save_pretrained(out)
    return out
