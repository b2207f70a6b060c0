"""`ray-asr evaluate --num-workers N`: evaluation as Ray Data batch inference, for sets one process should not hold.

    source ──read──► Preparer actors (the training pipeline's decode/validate/tokenise) ──► N Recognizer actors
                          └── rejected rows ──► sink (counted by reason)                     (one model replica each)

The clips stream through the same data tier as training, and each replica scores its batches with the
same `Scorer` the one-process path uses, so both paths give the same report on the same set.
"""

from __future__ import annotations

import numpy as np
import ray

from ray_asr import allocator, config, data, metrics
from ray_asr.audio import from_wire

# Decoding a clip costs a few percent of recognising it, so the data tier gets a small share and the
# replicas the rest of the CPUs.
PREPARE_CPUS = 0.25
MIN_REPLICA_CPUS = 0.25  # below this a replica's one thread would be starved by its neighbours


class Recognizer:
    """A model replica (a Ray Data actor): prepared rows in, per-utterance report rows out."""

    def __init__(self, model_dir: str, language: str | None, batch_size: int, prompt: str | None, wire_dtype: str,
                 use_gpu: bool, threads: int, beam_size: int = 1):
        import torch

        from ray_asr.evaluate import Scorer

        torch.set_num_threads(threads)  # its CPU share, not the node's core count
        allocator.keep_freed_memory()
        self.scorer = Scorer(model_dir, language, batch_size, device="cuda" if use_gpu else "cpu",
                             beam_size=beam_size)
        self.prompt, self.wire_dtype = prompt, wire_dtype

    def __call__(self, batch: dict) -> dict:
        from ray_asr.evaluate import Clip

        clips = [Clip(str(i), str(text), from_wire(buffer, self.wire_dtype), list(labels))
                 for i, text, buffer, labels in zip(batch["id"], batch["text"], batch["audio"], batch["labels"],
                                                    strict=True)]
        rows = self.scorer.rows(clips, self.prompt)
        return {key: np.array([row[key] for row in rows]) for key in ("id", "reference", "hypothesis", "runaway",
                                                                       "looping")}


def _replica_room(cluster_cpus: float) -> float:
    """The cluster's CPUs less the data tier's: what the replicas share."""
    return cluster_cpus - PREPARE_CPUS


def replica_cpus(num_workers: int, cluster_cpus: float) -> float:
    """CPUs each replica reserves: the cluster's CPUs less the data tier's, shared out (at most 1 each)."""
    return min(1.0, _replica_room(cluster_cpus) / num_workers)


def check(model_dir: str, source: str) -> None:
    """Fails in one line, before Ray starts, on a model folder or source that cannot be read."""
    from ray_asr import sources
    from ray_asr.model import require_folder

    require_folder(model_dir)
    sources.plan(source)


def evaluate(model_dir: str, source: str, num_workers: int, use_gpu: bool = False, batch_size: int = 8,
             language: str | None = None, prompt: str | None = None, beam_size: int = 1) -> dict:
    """The same report as `evaluate.evaluate_source`, computed by `num_workers` replicas on the running Ray.

    The streaming executor runs in a zero-CPU task rather than here, as Ray Train runs its own: Ray
    Data's and Ray core's notices land in that worker's log, and the console shows one bar.
    """
    from transformers import GenerationConfig

    from ray_asr import progress
    from ray_asr.labels import language_code

    if num_workers < 1:
        raise ValueError("--num-workers must be at least 1")
    resources = ray.cluster_resources()
    if use_gpu and resources.get("GPU", 0) < num_workers:
        raise ValueError(f"--num-workers {num_workers} --use-gpu needs {num_workers} GPUs; the cluster has "
                         f"{resources.get('GPU', 0):g}")
    cpus = 1.0 if use_gpu else replica_cpus(num_workers, resources.get("CPU", 0))
    if cpus < MIN_REPLICA_CPUS:
        raise ValueError(f"--num-workers {num_workers}: the cluster's {resources.get('CPU', 0):g} CPUs leave "
                         f"{max(cpus, 0):.2f} per replica; use at most "
                         f"{max(1, int(_replica_room(resources.get('CPU', 0)) / MIN_REPLICA_CPUS))} or add nodes")
    generation = GenerationConfig.from_pretrained(model_dir)
    language = language_code(language or generation.language or "en")
    cfg = config.from_dict({"model": {"name_or_path": model_dir, "language": language,
                                      "task": generation.task or "transcribe"},
                            # float32 on the wire: the same samples the one-process path scores
                            "data": {"eval": source, "prepare_num_cpus": PREPARE_CPUS, "wire_dtype": "float32",
                                     "prepare_batch_size": batch_size, "prepare_concurrency": 1}})
    replica = {"model_dir": model_dir, "language": language, "batch_size": batch_size, "prompt": prompt,
               "wire_dtype": cfg.data.wire_dtype, "use_gpu": use_gpu, "threads": max(1, int(cpus)),
               "beam_size": beam_size}
    with progress.shown(True) as channel:
        rows, rejected = ray.get(_stream.remote(cfg, replica, num_workers, cpus, 1 if use_gpu else 0, channel))
    per_utterance = [{"id": str(r["id"]), "reference": str(r["reference"]), "hypothesis": str(r["hypothesis"]),
                      "runaway": bool(r["runaway"]), "looping": bool(r["looping"])} for r in rows]
    per_utterance.sort(key=lambda row: row["id"])
    return {**metrics.report(per_utterance, language), "rejected": rejected, "per_utterance": per_utterance}


@ray.remote(num_cpus=0)
def _stream(cfg, replica: dict, num_workers: int, cpus: float, gpus: int, channel) -> tuple[list[dict], dict]:
    """Runs the pipeline to the end: per-utterance rows and the rejected rows' count by reason."""
    from ray_asr.progress import Reporter

    reporter = Reporter(channel)
    sink = data.open_sink(None)
    try:
        ds = data.build_dataset(cfg, "eval", sink, enforce_limit=False)
        total = ray.get(sink.registered_rows.remote("eval"))
        ds = ds.map_batches(Recognizer, fn_constructor_kwargs=replica, batch_size=replica["batch_size"],
                            batch_format="numpy", concurrency=num_workers, num_cpus=cpus, num_gpus=gpus)
        if total:
            reporter.start("evaluate", total, "clip")
        rows = []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            n = len(batch["id"])
            rows += [{key: batch[key][i] for key in batch} for i in range(n)]
            reporter.advance("evaluate", n)
        reporter.end("evaluate")
        return rows, ray.get(sink.summary.remote("eval"))["reasons"]
    finally:
        ray.get(sink.close.remote())
