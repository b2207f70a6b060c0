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


def fp32_values(net) -> dict:
    """Copies of the trainable parameters' loaded values, by name, for `restore_masters`."""
    return {name: p.detach().clone() for name, p in net.named_parameters() if p.requires_grad}


def restore_masters(engine, values: dict) -> None:
    """Puts the loaded fp32 values back into DeepSpeed's fp32 master copies (every rank calls it).

    In bf16 and fp16 DeepSpeed casts the module first and builds its masters from the cast, so every trainable
    weight would start rounded to 8 bits of mantissa: a run whose best evaluation is its start would export a
    model that is not the one it started from, and small updates would accumulate on rounded values.
    """
    from deepspeed.utils import safe_set_full_fp32_param

    unfused = unfused_masters(engine)
    for name, param in engine.module.named_parameters():
        if name in values:
            if id(param) in unfused:
                unfused[id(param)].data.copy_(values[name])
            else:
                safe_set_full_fp32_param(param, values[name])


def fp32_master(param, unfused: dict):
    """The full fp32 master value of a trainable parameter (collective under ZeRO-3), or None where DeepSpeed keeps
    none (fp32 without ZeRO: the parameter is its own master). `unfused`: `unfused_masters(engine)`."""
    from deepspeed.utils import safe_get_full_fp32_param

    master = unfused.get(id(param))
    return master if master is not None else safe_get_full_fp32_param(param)


def unfused_masters(engine) -> dict:
    """fp32 masters by `id` of their parameter where DeepSpeed keeps them outside its fragment mapping: bf16 or
    fp16 without ZeRO (stage 0) runs `FP16_UnfusedOptimizer`, whose copies `safe_get_full_fp32_param` cannot see
    (it returns None, and the export would read the rounded bf16 values)."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if not isinstance(engine.optimizer, FP16_UnfusedOptimizer):
        return {}
    return {id(low): master for lows, masters in zip(engine.optimizer.fp16_groups, engine.optimizer.fp32_groups)
            for low, master in zip(lows, masters, strict=True)}


def init_distributed(backend: str) -> None:
    """`deepspeed.init_distributed` (joining a process group already set up, as Ray Train's, or one from the
    environment) without JIT-compiling DeepSpeed's shared-memory all-reduce, in this process.

    On the CPU accelerator DeepSpeed compiles it at every process-group start: tens of seconds on a fresh
    machine, and a process killed mid-compile leaves a lock file that every later run waits on without a
    word. Only DeepSpeed's inference all-reduce uses it; training reduces through torch.distributed.
    On that accelerator it also gets a device name ZeRO-3 can compare with tensors' devices (`CpuDeviceName`).
    """
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    _comparable_cpu_device()
    deepspeed.init_distributed(dist_backend=backend)


class CpuDeviceName(str):
    """The CPU accelerator's device name, `'cpu'`, that also equals `torch.device('cpu')`.

    ZeRO-3 keeps no fp32 master copy of a rank's partition when the partition is already fp32 on the optimizer's
    device, but it asks `partition.device == accelerator.current_device_name()`, a `torch.device` against the string
    `'cpu'`, which torch never finds equal: every fp32 run on CPU held a second copy of its partition (461 MiB a
    worker for whisper-small on 2 workers; BENCHMARKS.md, "ZeRO memory"). Everywhere else it is the plain string.
    """

    __hash__ = str.__hash__

    def __eq__(self, other):
        import torch

        if isinstance(other, torch.device):
            return torch.device(str(self)) == other
        return str.__eq__(self, other)

    def __ne__(self, other):
        return not self == other


def _comparable_cpu_device() -> None:
    """Gives DeepSpeed, where it runs on its CPU accelerator, a device name that compares with tensors' devices
    (`CpuDeviceName`); a CUDA (or any other) accelerator is left as it is."""
    from deepspeed.accelerator import get_accelerator, set_accelerator
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    class CpuAccelerator(CPU_Accelerator):
        def current_device_name(self):
            return CpuDeviceName(super().current_device_name())

    if type(get_accelerator()) is CPU_Accelerator:
        set_accelerator(CpuAccelerator())
