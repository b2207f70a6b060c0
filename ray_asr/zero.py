"""DeepSpeed config generated from `train.deepspeed` and `train.precision` (one place, data not code)."""

from __future__ import annotations

import dataclasses

from ray_asr.config import TrainConfig


def optimizer(train: TrainConfig, params: list):
    """The AdamW that `deepspeed.initialize(optimizer=...)` gets: torch's fused kernel on CPU and CUDA alike (no
    extension to compile, unlike DeepSpeed's FusedAdam); None under optimizer offload, where DeepSpeed's CPU Adam
    (from the config) steps the offloaded states."""
    import torch

    if train.deepspeed.offload_optimizer:
        return None
    return torch.optim.AdamW(params, **ADAMW, lr=train.learning_rate, weight_decay=train.weight_decay, fused=True)


ADAMW = {"betas": (0.9, 0.98), "eps": 1e-6}  # Whisper's own fine-tuning betas; eps for bf16-safe updates


def effective(train: TrainConfig, world_size: int) -> TrainConfig:
    """`train` with the ZeRO stage one rank can use: with a single worker and nothing offloaded there is nothing
    to partition, and stages 1-3 only add copies (measured: a whisper-base decoder step 1.2 s at stage 0, 1.4-1.6 s
    at stage 2, one process)."""
    ds = train.deepspeed
    if world_size > 1 or ds.stage == 0 or ds.offload_optimizer or ds.offload_param:
        return train
    return dataclasses.replace(train, deepspeed=dataclasses.replace(ds, stage=0))


def deepspeed_config(train: TrainConfig, total_steps: int, precision: str | None = None,
                     hidden_size: int | None = None) -> dict:
    """The `deepspeed.initialize(config=...)` dict: ZeRO stage and offload, precision, warm-up/decay, and the
    AdamW settings where DeepSpeed builds the optimizer itself (offload; see `optimizer`).

    `precision` is `train.precision` resolved for the device (`ray_asr.hardware`); None takes it as written.
    `hidden_size` (the model's d_model) sizes the communication buckets to the model: DeepSpeed's defaults
    (5e8 elements) made ZeRO-3 allocate a 1.9 GB reduce buffer per worker for whisper-small's 242M parameters.
    """
    precision = precision or train.precision
    ds = train.deepspeed
    # DeepSpeed's WarmupDecayLR needs 1 <= warm-up < total steps.
    warmup = max(1, min(train.warmup_steps, total_steps - 1))
    total = max(total_steps, warmup + 1)
    zero: dict = {"stage": ds.stage}
    if ds.stage >= 1 and ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if hidden_size and ds.stage >= 1:
        # The sizes transformers' DeepSpeed integration derives ("auto"): one hidden x hidden matrix per bucket.
        zero["reduce_bucket_size"] = hidden_size * hidden_size
        if ds.stage == 3:
            zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
            zero["stage3_param_persistence_threshold"] = 10 * hidden_size
    if ds.stage == 3:
        # Read only by DeepSpeed's `save_16bit_model`, which ray-asr never calls: the export is built from the fp32
        # master copies (`export.trainable_state`, `safe_get_full_fp32_param`), checkpoints from the rank partitions.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if ds.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config = {
        "train_micro_batch_size_per_gpu": train.batch_size_per_worker,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,  # torch's AdamW: ZeRO partitions its param groups like any
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": train.learning_rate, "warmup_type": "linear",
            "warmup_num_steps": warmup, "total_num_steps": total}},
        "steps_per_print": 10**9,  # progress lines come from the train loop, not DeepSpeed
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:
        config["optimizer"] = {"type": "AdamW", "params": {"lr": train.learning_rate, "betas": list(ADAMW["betas"]),
                                                           "eps": ADAMW["eps"], "weight_decay": train.weight_decay}}
    if ds.gradient_clipping > 0:
        config["gradient_clipping"] = ds.gradient_clipping
    return config


def init_distributed(backend: str) -> None:
    """`deepspeed.init_distributed` (joining a process group already set up, as Ray Train's, or one from the
    environment) without JIT-compiling DeepSpeed's shared-memory all-reduce, in this process.

    On the CPU accelerator DeepSpeed compiles it at every process-group start: tens of seconds on a fresh
    machine, and a process killed mid-compile leaves a lock file that every later run waits on without a
    word. Only DeepSpeed's inference all-reduce uses it; training reduces through torch.distributed.
    """
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend)
