"""The generated DeepSpeed config for each stage, offload and precision."""

from __future__ import annotations

import pytest

from ray_asr import config
from ray_asr.zero import deepspeed_config


def _ds(overrides, steps=100):
    return deepspeed_config(config.from_dict({}, overrides).train, steps)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_stage_and_batch(stage):
    cfg = _ds([f"train.deepspeed.stage={stage}", "train.batch_size_per_worker=4",
               "train.deepspeed.gradient_accumulation_steps=2"])
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 2
    assert ("stage3_gather_16bit_weights_on_model_save" in cfg["zero_optimization"]) == (stage == 3)


def test_offload_and_precision():
    cfg = _ds(["train.deepspeed.stage=3", "train.deepspeed.offload_param=true",
               "train.deepspeed.offload_optimizer=true", "train.precision=fp16"])
    zero = cfg["zero_optimization"]
    assert zero["offload_param"]["device"] == "cpu" and zero["offload_optimizer"]["device"] == "cpu"
    assert cfg["fp16"]["enabled"] and not cfg["bf16"]["enabled"]
    assert _ds(["train.precision=fp32"])["bf16"]["enabled"] is False


def test_optimizer_schedule_and_clipping():
    cfg = _ds(["train.learning_rate=3e-5", "train.warmup_steps=500", "train.deepspeed.gradient_clipping=0"], steps=40)
    assert cfg["optimizer"]["params"]["lr"] == 3e-5
    assert cfg["scheduler"]["params"]["warmup_num_steps"] == 39  # warm-up never outlasts the run
    assert cfg["scheduler"]["params"]["total_num_steps"] == 40
    assert "gradient_clipping" not in cfg
