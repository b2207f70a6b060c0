"""The generated DeepSpeed config for each stage, offload and precision."""

from __future__ import annotations

import pytest

from ray_asr import config
from ray_asr.zero import deepspeed_config, optimizer


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
    auto = config.from_dict({}).train
    assert deepspeed_config(auto, 10, precision="bf16")["bf16"]["enabled"]  # `auto` as resolved on the device


def test_optimizer_schedule_and_clipping():
    import torch

    cfg = _ds(["train.learning_rate=4e-5", "train.warmup_steps=500", "train.deepspeed.gradient_clipping=0"], steps=40)
    # torch's fused AdamW is handed to DeepSpeed (no extension to compile); under offload DeepSpeed's CPU Adam.
    assert "optimizer" not in cfg and cfg["zero_allow_untested_optimizer"]
    train = config.from_dict({}, ["train.learning_rate=4e-5", "train.weight_decay=0.01"]).train
    adamw = optimizer(train, [torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["fused"]
    assert (adamw.defaults["lr"], adamw.defaults["weight_decay"]) == (4e-5, 0.01)
    offload = config.from_dict({}, ["train.deepspeed.offload_optimizer=true", "train.learning_rate=4e-5"]).train
    assert optimizer(offload, []) is None and deepspeed_config(offload, 40)["optimizer"]["params"]["lr"] == 4e-5
    assert cfg["scheduler"]["params"]["warmup_num_steps"] == 39  # warm-up never outlasts the run
    assert cfg["scheduler"]["params"]["total_num_steps"] == 40
    assert "gradient_clipping" not in cfg
    none = _ds(["train.warmup_steps=0"], steps=1)["scheduler"]["params"]
    assert (none["warmup_num_steps"], none["total_num_steps"]) == (1, 2)  # DeepSpeed refuses 0 warm-up steps


DEEPSPEED_SCRIPT = """
import os, sys, json, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed
from ray_asr import config, hardware, model
from ray_asr.zero import deepspeed_config, init_distributed, optimizer
init_distributed("gloo")
precision = hardware.resolve_precision("auto", torch.device("cpu"))
result = {"losses": {}, "precision": precision}
for stage in (0, 2, 3):
    train = config.from_dict({}, [f"train.deepspeed.stage={stage}", "train.batch_size_per_worker=2",
                                  "train.learning_rate=1e-3", "train.warmup_steps=0"]).train
    m = model.apply_strategy(model.load(sys.argv[1]), train)
    params = [p for p in m.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=m, model_parameters=params, optimizer=optimizer(train, params),
                                      config=deepspeed_config(train, 20, precision))
    torch.manual_seed(0)
    x = torch.randn(2, 80, 3000, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    y = torch.tensor([[258, 300, 301, 256], [258, 302, 256, -100]])
    losses = []
    for _ in range(5):
        loss = engine(input_features=x, labels=y).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    result["losses"][stage] = losses
    if stage == 3:  # whether the optimizer's fp32 partitions are the parameters' own (no second copy)
        groups = zip(engine.optimizer.fp32_partitioned_groups_flat, engine.optimizer.fp16_partitioned_groups_flat)
        result["master_is_partition"] = all(a.data_ptr() == b.data_ptr() for a, b in groups)
# bf16 (no step taken, so any CPU will do): the exported trainable values are the loaded fp32 ones, not their
# bf16 rounding, whether DeepSpeed keeps its masters unfused (stage 0) or in ZeRO's partitions.
from ray_asr.export import trainable_state
from ray_asr.zero import fp32_values, restore_masters
result["bf16_masters_exact"] = {}
for stage in (0, 2, 3):
    train = config.from_dict({}, [f"train.deepspeed.stage={stage}", "train.batch_size_per_worker=2"]).train
    m = model.apply_strategy(model.load(sys.argv[1]), train)
    params = [p for p in m.parameters() if p.requires_grad]
    loaded = fp32_values(m)
    engine, *_ = deepspeed.initialize(model=m, model_parameters=params, optimizer=optimizer(train, params),
                                      config=deepspeed_config(train, 20, "bf16"))
    restore_masters(engine, loaded)
    state = trainable_state(engine)
    result["bf16_masters_exact"][stage] = state.keys() == loaded.keys() and all(
        torch.equal(state[n], loaded[n]) for n in loaded)
print(json.dumps(result))
"""


def test_generated_config_trains_under_deepspeed_on_cpu(tiny_model):
    """Single process, gloo, DeepSpeed's CPU accelerator, this CPU's `auto` precision: each ZeRO stage lowers the
    loss, ZeRO-3 in fp32 keeps no second fp32 copy of the partition (`zero.CpuDeviceName`), and in bf16 the fp32
    masters hold the loaded values exactly, where the export reads them (`zero.restore_masters`)."""
    import json
    import subprocess
    import sys

    from ports import free_ports

    port = str(free_ports()[0])
    run = subprocess.run([sys.executable, "-c", DEEPSPEED_SCRIPT, str(tiny_model), port], capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for stage, values in result["losses"].items():
        assert values[-1] < values[0] - 0.1, (stage, values)
    # ZeRO-3 in fp32 trains the partitions in place; in bf16 it keeps fp32 masters beside them.
    assert result["master_is_partition"] == (result["precision"] == "fp32")
    assert result["bf16_masters_exact"] == {"0": True, "2": True, "3": True}


def test_one_worker_without_offload_runs_stage_0_and_anything_else_keeps_its_stage():
    from ray_asr.zero import effective

    two = config.from_dict({}, ["train.deepspeed.stage=2"]).train
    assert effective(two, world_size=1).deepspeed.stage == 0 and two.deepspeed.stage == 2  # a copy, not a change
    assert effective(two, world_size=2).deepspeed.stage == 2
    offload = config.from_dict({}, ["train.deepspeed.stage=3", "train.deepspeed.offload_param=true"]).train
    assert effective(offload, world_size=1).deepspeed.stage == 3  # offload is what one GPU wants ZeRO-3 for
