"""`ray-asr validate`: every row of a source through the training pipeline's own checks."""

from __future__ import annotations

import ray

from ray_asr import config, data, progress

POLL_S = 0.5  # how often the bar reads the sink's counts
# Rows per decode call when validating: nothing waits on the first rows, so a batch's fixed cost (a task, an
# actor call, the sink's count) is spread over more rows than training's small, quick-flowing batches.
VALIDATE_BATCH = 128


@ray.remote(num_cpus=0)
def _drain(dataset) -> None:
    """Pulls every block through the pipeline (the sink counts and quarantines as they pass)."""
    for _ in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        pass


def validate_split(cfg: config.Config, split: str, sink, enforce_limit: bool = True) -> dict:
    """Streams one split of `cfg` through the pipeline, discarding rows, and returns its sink summary.

    The stream runs in a task, not here: Ray Data's executor then logs (and creates its actors) in a worker,
    whose output stays in Ray's logs, and this process draws one bar from the sink's counts."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = data.build_dataset(cfg, split, sink, enforce_limit)
    done = _drain.remote(dataset)
    with progress.bar(ray.get(sink.planned_rows.remote(split)), f"validate {split}", "row") as bar:
        while True:
            finished, _ = ray.wait([done], timeout=POLL_S)
            counts = ray.get(sink.summary.remote(split))
            bar.update(max(counts["rows"] - bar.n, 0))
            if finished:
                ray.get(done)  # the pipeline's own error (e.g. too many rejected rows), if any
                return counts


def validate_source(source: str, tokenizer_dir: str, quarantine: str | None = None, language: str = "en",
                    max_duration_s: float = 30.0) -> dict:
    """Streams `source` through decode/resample/validate/tokenise on the running Ray.

    Returns `{"rows", "accepted", "rejected", "reasons", "hours"}`; rejected rows go to `quarantine`.
    """
    cfg = source_config(source, tokenizer_dir, language, max_duration_s)
    sink = data.open_sink(quarantine)
    try:
        return validate_split(cfg, "train", sink, enforce_limit=False)
    finally:
        ray.get(sink.close.remote())


def source_config(source: str, tokenizer_dir: str, language: str = "en", max_duration_s: float = 30.0) -> config.Config:
    """The config `validate_source` streams `source` with: `source` as the training split, `VALIDATE_BATCH` rows a
    decode call (`bench/executor_memory.py` measures the same pipeline through it)."""
    return config.from_dict({"model": {"name_or_path": tokenizer_dir, "language": language},
                             "data": {"train": source, "max_duration_s": max_duration_s,
                                      "prepare_batch_size": VALIDATE_BATCH}})


def format_table(summary: dict) -> str:
    """The human summary: counts, rejected rows by reason, hours of accepted audio."""
    lines = [f"{'rows':<24}{summary['rows']:>10}", f"{'accepted':<24}{summary['accepted']:>10}",
             f"{'rejected':<24}{summary['rejected']:>10}"]
    lines += [f"  {reason:<22}{count:>10}" for reason, count in summary["reasons"].items()]
    lines.append(f"{'hours (accepted)':<24}{summary['hours']:>10.3f}")
    return "\n".join(lines)
