"""The Ray Data pipeline: read → decode/resample/validate/tokenise → (augment) → trainers.

    source shards ──read tasks──► raw rows ──Preparer actors (CPU tier)──► waveform + labels
                                                 │
                                                 └── rejected rows ──► QuarantineSink actor ──► quarantine.jsonl

Nothing is materialised: the dataset streams block by block into `TorchTrainer(datasets=...)`
workers, who read their share with `ray.train.get_dataset_shard` and turn waveforms into log-mel
themselves (`ray_asr.collate`). Per-row failures are caught inside the stage and routed to the
sink, which fails the run once a split's rejected share passes `data.max_rejected_fraction`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ray_asr import audio, labels, sources
from ray_asr.audio import Rejected
from ray_asr.config import Config
from ray_asr.prepare import prepare, quarantine_record

PREPARED_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("audio", pa.binary()),  # (samples,) 16 kHz mono as int16 or float32 bytes (data.wire_dtype)
    ("num_samples", pa.int32()),
    ("labels", pa.list_(pa.int32())),  # decoder labels ending in end-of-text, no start token
    ("text", pa.string()),
])


class TooManyRejected(RuntimeError):
    """More of a split was quarantined than `data.max_rejected_fraction` allows."""


class ManifestDatasource(Datasource):
    """A planned source (see `ray_asr.sources`) as a Ray Data datasource: one read task per shard."""

    def __init__(self, source: str | Path):
        self.source = str(source)
        self.shards, self.num_rows = sources.plan(source)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        def task(shard: sources.Shard) -> ReadTask:
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(shard.path,))
            return ReadTask(lambda: [sources.read_shard(shard)], meta, schema=sources.RAW_SCHEMA,
                            per_task_row_limit=per_task_row_limit)

        return [task(shard) for shard in self.shards]


@ray.remote(num_cpus=0)
class QuarantineSink:
    """Collects rejected rows of one split: writes each once to quarantine.jsonl and keeps counts.

    Reruns of the same rows (a second epoch) are not counted twice.
    """

    def __init__(self, path: str, split: str, total_rows: int, max_rejected_fraction: float | None):
        self.path, self.split, self.total_rows = Path(path), split, total_rows
        self.limit = None if max_rejected_fraction is None else max_rejected_fraction * total_rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")
        self.rejected: dict[str, str] = {}
        self.accepted: dict[str, float] = {}

    def record(self, accepted: list[tuple[str, float]], rejected: list[dict]) -> str | None:
        """Adds a batch's outcome; returns an error message once the rejected share is too high."""
        self.accepted.update(accepted)
        for record in rejected:
            if record["id"] not in self.rejected:
                self.rejected[record["id"]] = record["reason"]
                self.file.write(json.dumps({"split": self.split, **record}, ensure_ascii=False) + "\n")
        self.file.flush()
        if self.limit is not None and len(self.rejected) > self.limit:
            return (f"data.{self.split}: {len(self.rejected)} of {self.total_rows} rows rejected, over "
                    f"data.max_rejected_fraction ({self.limit / max(self.total_rows, 1):.2%}); see {self.path}")
        return None

    def summary(self) -> dict:
        reasons: dict[str, int] = {}
        for reason in self.rejected.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return {"rows": self.total_rows, "accepted": len(self.accepted), "rejected": len(self.rejected),
                "reasons": dict(sorted(reasons.items())), "hours": sum(self.accepted.values()) / 3600}

    def close(self) -> None:
        self.file.close()


class Preparer:
    """Ray Data stage (a callable class, so each actor loads the tokenizer once)."""

    def __init__(self, model_dir: str, language: str, task: str, max_duration_s: float, wire_dtype: str, sink):
        self.tokenizer = labels.load_tokenizer(model_dir, language, task)
        self.max_duration_s, self.wire_dtype, self.sink = max_duration_s, wire_dtype, sink

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = {name: [] for name in PREPARED_SCHEMA.names}
        accepted, rejected = [], []
        for row in batch.to_pylist():
            try:
                wave, ids = prepare(row, self.tokenizer, self.max_duration_s)
            except Rejected as err:
                rejected.append(quarantine_record(row, err.reason, err.detail))
                continue
            except Exception as err:  # one odd file must never take the whole run down
                rejected.append(quarantine_record(row, "internal_error", f"{type(err).__name__}: {err}"))
                continue
            accepted.append((row["id"], len(wave) / audio.SAMPLE_RATE))
            out["id"].append(row["id"])
            out["audio"].append(audio.to_wire(wave, self.wire_dtype))
            out["num_samples"].append(len(wave))
            out["labels"].append(ids)
            out["text"].append(row["text"].strip())
        problem = ray.get(self.sink.record.remote(accepted, rejected))
        if problem:
            raise TooManyRejected(problem)
        return pa.Table.from_pydict(out, schema=PREPARED_SCHEMA)


def open_sink(cfg: Config, split: str, total_rows: int, enforce_limit: bool = True):
    """A quarantine sink for one split, placed on this (the driver's) node so the file lands here."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    limit = cfg.data.max_rejected_fraction if enforce_limit else None
    return QuarantineSink.options(scheduling_strategy=here).remote(str(cfg.quarantine_path), split, total_rows, limit)


def _prepare_concurrency(cfg: Config) -> tuple[int, int]:
    if cfg.data.prepare_concurrency:
        return 1, cfg.data.prepare_concurrency
    return 1, max(1, int(ray.cluster_resources().get("CPU", 1)))


def build_dataset(cfg: Config, split: str, enforce_limit: bool = True):
    """The streaming dataset of one split (`train`, `eval`, `general_eval`) and its quarantine sink.

    Rows: `PREPARED_SCHEMA`. Augmentation applies to the training split only.
    """
    source = getattr(cfg.data, split)
    if source is None:
        raise ValueError(f"data.{split}: not set")
    datasource = ManifestDatasource(source)
    sink = open_sink(cfg, split, datasource.num_rows, enforce_limit)
    ds = ray.data.read_datasource(datasource)
    ds = ds.map_batches(
        Preparer,
        fn_constructor_kwargs={
            "model_dir": cfg.model.name_or_path, "language": cfg.model.language, "task": cfg.model.task,
            "max_duration_s": cfg.data.max_duration_s, "wire_dtype": cfg.data.wire_dtype, "sink": sink,
        },
        batch_size=cfg.data.prepare_batch_size,
        batch_format="pyarrow",
        concurrency=_prepare_concurrency(cfg),
        num_cpus=1,
    )
    if split == "train":
        ds = augment_stage(ds, cfg)
    return ds, sink


def augment_stage(ds, cfg: Config):
    """Hook for the CPU-tier augmentation stage; with no `augment:` list the data passes untouched."""
    if cfg.augment:
        import augment

        augment.build(cfg.augment)  # fails early, naming the bad spec
        raise NotImplementedError("augment: waveform augmentation is not available yet")
    return ds
