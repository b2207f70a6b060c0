"""DeepSpeed config generated from `train.deepspeed` and `train.precision` (one place, data not code)."""

from __future__ import annotations

from ray_asr.config import TrainConfig


def deepspeed_config(train: TrainConfig, total_steps: int) -> dict:
    """The `deepspeed.initialize(config=...)` dict: ZeRO stage and offload, precision, AdamW, warm-up/decay.

    ZeRO-3 gathers 16-bit weights on save so the exported model is one consolidated state dict.
    """
    ds = train.deepspeed
    # DeepSpeed's WarmupDecayLR needs 1 <= warm-up < total steps.
    warmup = max(1, min(train.warmup_steps, total_steps - 1))
    total = max(total_steps, warmup + 1)
    zero: dict = {"stage": ds.stage}
    if ds.stage >= 1 and ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if ds.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config = {
        "train_micro_batch_size_per_gpu": train.batch_size_per_worker,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "optimizer": {"type": "AdamW", "params": {"lr": train.learning_rate, "betas": [0.9, 0.98], "eps": 1e-6,
                                                  "weight_decay": train.weight_decay}},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": train.learning_rate, "warmup_type": "linear",
            "warmup_num_steps": warmup, "total_num_steps": total}},
        "steps_per_print": 10**9,  # progress lines come from the train loop, not DeepSpeed
        "wall_clock_breakdown": False,
    }
    if ds.gradient_clipping > 0:
        config["gradient_clipping"] = ds.gradient_clipping
    return config
