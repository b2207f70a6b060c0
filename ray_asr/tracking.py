"""Experiment tracking (`train.report_to`): rank 0 writes the trainer's scalars to TensorBoard and/or MLflow.

Tags group by split, so TensorBoard shows one section each: `train/loss`, `train/learning_rate`,
`train/clips_per_s`, `train/epoch`, `eval/wer`, `eval/loss`, `general_eval/wer`, `time/eval_seconds`, ...
(see `tag`). MLflow gets the same names, with the run's config as params.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import numbers
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from ray_asr.config import ConfigError

log = logging.getLogger(__name__)

KNOWN = ("mlflow", "tensorboard")

# Trainer history-row keys that are not per-split eval metrics; `step` is the x axis, not a scalar.
_FIXED = {
    "step": "",
    "epoch": "train/epoch",
    "train_loss": "train/loss",
    "train_clips_per_s": "train/clips_per_s",
    "learning_rate": "train/learning_rate",
    "eval_seconds": "time/eval_seconds",
}
# What `metrics.report` returns per eval split, plus the loss the trainer adds as `eval_loss`.
_EVAL = {"wer", "cer", "eval_loss", "substitutions", "deletions", "insertions", "num_utterances",
         "runaway_outputs", "repetition_rate"}
_SPLIT_PREFIXES = (("general_", "general_eval"), ("", "eval"))

# Old MLflow servers reject param values over 500 characters (newer ones allow 6000) and batches of more than
# 100 params: staying under both works everywhere.
_PARAM_MAX_CHARS = 500
_PARAM_BATCH = 100


def check(report_to: list) -> None:
    """Raises `ConfigError` (one line naming `train.report_to`) for an unknown tracker, or `mlflow` without
    the package. Runs on the driver before Ray starts, so a typo fails in a second, not on a GPU worker."""
    if isinstance(report_to, str) or not isinstance(report_to, list | tuple):
        raise ConfigError(f"train.report_to: expected a list of trackers ({', '.join(KNOWN)}), got {report_to!r}")
    for name in report_to:
        if name not in KNOWN:
            raise ConfigError(f"train.report_to: unknown tracker {name!r} (known: {', '.join(KNOWN)})")
    # find_spec, not import: importing mlflow takes seconds and pulls in half of PyPI.
    if "mlflow" in report_to and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("train.report_to: mlflow needs the mlflow package: pip install mlflow")


def tag(key: str) -> str:
    """The tracker name of a trainer history-row key: `train_loss` → `train/loss`, `wer` → `eval/wer`,
    `eval_loss` → `eval/loss`, `general_wer` → `general_eval/wer`, `eval_seconds` → `time/eval_seconds`.

    Returns "" for `step` (the x axis, not a metric). Keys that already hold a `/`, and keys the trainer
    does not write today, come back unchanged so a new metric still shows up rather than vanishing.
    """
    if "/" in key:
        return key
    if key in _FIXED:
        return _FIXED[key]
    for prefix, split in _SPLIT_PREFIXES:
        name = key[len(prefix):]
        if key.startswith(prefix) and name in _EVAL:
            return f"{split}/{'loss' if name == 'eval_loss' else name}"
    return key


def _finite(value: Any) -> float | None:
    """The value as a float when it is a finite real number; None for None, NaN, inf, bools and the rest."""
    # bool is an int, but a flag such as `finished` is not a curve anyone wants to plot.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _flatten(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested config dict → `{"train.learning_rate": "1e-05", ...}`, each value cut to what MLflow accepts."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
            continue
        text = str(value)
        flat[name] = text if len(text) <= _PARAM_MAX_CHARS else text[: _PARAM_MAX_CHARS - 3] + "..."
    return flat


class _Backend(Protocol):
    name: str

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def close(self, failed: bool) -> None: ...


class _TensorBoard:
    """Event files under `<folder>/tensorboard`, written and fsynced at every call so a killed run keeps its
    curves.

    tensorboardX's `SummaryWriter` queues events for a background thread, and its `flush()` does not wait for
    that queue, so a flush right after `add_scalar` can leave the scalar in memory; its synchronous
    `EventsWriter` writes in the caller's thread instead.
    """

    name = "tensorboard"

    def __init__(self, folder: Path, params: dict) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import scalar, text

        self.event, self.summary, self.scalar = Event, Summary, scalar
        logdir = folder / "tensorboard"
        logdir.mkdir(parents=True, exist_ok=True)
        # Files are named by the second and host; a resumed run within that second would truncate the earlier
        # file, so the suffix keeps names unique.
        self.writer = EventsWriter(str(logdir / "events"), filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        if params:
            rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(_flatten(params).items()))
            self._write(0, text("params", "| param | value |\n|---|---|\n" + rows))

    def _write(self, step: int, summary: Any) -> None:
        self.writer.write_event(self.event(wall_time=time.time(), step=step, summary=summary))
        self.writer.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        # One event holding every value: one write and one fsync per call, not one per tag.
        self._write(step, self.summary(value=[v for name, value in values.items()
                                              for v in self.scalar(name, value).value]))

    def close(self, failed: bool) -> None:
        self.writer.close()


def mlflow_uri(folder: Path) -> str:
    """The tracking URI a run in `folder` uses when `MLFLOW_TRACKING_URI` is unset: `<folder>/mlruns/mlflow.db`
    (SQLite), or the file store `<folder>/mlruns` where SQLAlchemy is missing (mlflow-skinny).

    MLflow 3 refuses file stores unless `MLFLOW_ALLOW_FILE_STORE=true` and defaults to SQLite itself; full
    `mlflow` always brings SQLAlchemy. View with `mlflow ui --backend-store-uri <this URI>`.
    """
    store = (Path(folder) / "mlruns").resolve()
    if importlib.util.find_spec("sqlalchemy") is None:
        return store.as_uri()
    return f"sqlite:///{store / 'mlflow.db'}"


class _MLflow:
    """One MLflow run; `MLFLOW_TRACKING_URI` picks the server, else a local store under `<folder>/mlruns`."""

    name = "mlflow"

    def __init__(self, folder: Path, run_name: str, params: dict) -> None:
        import mlflow  # lazy: heavy, and only installed by those who use it

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            (folder / "mlruns").mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
            mlflow.set_tracking_uri(mlflow_uri(folder))
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run_name)
        flat = list(_flatten(params).items())
        for start in range(0, len(flat), _PARAM_BATCH):
            mlflow.log_params(dict(flat[start : start + _PARAM_BATCH]))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics(values, step=step)

    def close(self, failed: bool) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


class Tracker:
    """Writes scalars to every tracker in `train.report_to`; with none it is a no-op, so callers need no `if`.

    Only rank 0 opens one. A tracker that fails mid-run (an MLflow server gone away) is logged and dropped:
    losing curves is better than losing hours of training.
    """

    def __init__(self, backends: list[_Backend] | None = None) -> None:
        self.backends: list[_Backend] = list(backends or [])

    @classmethod
    def open(cls, report_to: list, folder: Path, run_name: str, params: dict) -> Tracker:
        """Starts each tracker named in `report_to` (duplicates once); `params` is the run's config as a
        (nested) dict, logged as MLflow params and as a TensorBoard text table."""
        check(report_to)
        folder = Path(folder)
        backends: list[_Backend] = []
        try:
            for name in dict.fromkeys(report_to):
                backends.append(_TensorBoard(folder, params) if name == "tensorboard"
                                else _MLflow(folder, run_name, params))
        except BaseException:
            for backend in backends:  # don't leave an MLflow run open because TensorBoard failed, or the reverse
                backend.close(failed=True)
            raise
        return cls(backends)

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        """Writes each finite numeric value of a history row at `step`, named by `tag`; skips the rest."""
        tagged = {}
        for key, value in values.items():
            name, number = tag(key), _finite(value)
            if name and number is not None:
                tagged[name] = number
        if not tagged:
            return
        for backend in list(self.backends):
            try:
                backend.scalars(step, tagged)
            except Exception as err:  # noqa: BLE001 - any tracker failure must not end training
                log.warning(f"[tracking] {backend.name} failed, not writing to it again: {err}")
                self.backends.remove(backend)

    def close(self, failed: bool = False) -> None:
        """Flushes and closes every tracker (an MLflow run ends FINISHED, or FAILED); safe to call twice."""
        backends, self.backends = self.backends, []
        for backend in backends:
            try:
                backend.close(failed)
            except Exception as err:  # noqa: BLE001 - close the others anyway
                log.warning(f"[tracking] closing {backend.name} failed: {err}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close(failed=kind is not None)


def read_tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag written under `folder` (a run's output folder, or its `tensorboard` subfolder) as
    `{tag: [(step, value), ...]}` in write order, read by TensorBoard's own reader. Values are float32."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise ImportError("reading TensorBoard event files needs tensorboard: pip install tensorboard") from None
    folder = Path(folder)
    logdir = folder / "tensorboard" if (folder / "tensorboard").is_dir() else folder
    # 0 = keep every event; the default samples long runs down to 10,000 points per tag.
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {name: [(event.step, event.value) for event in accumulator.Scalars(name)]
            for name in accumulator.Tags()["scalars"]}
