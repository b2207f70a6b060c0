"""Run checkpoints: every rank's DeepSpeed shard plus the loop's own state, as one Ray Train checkpoint.

    <checkpoint>/state.json          step, epoch, batches done in the epoch, eval history (rank 0)
    <checkpoint>/ds/...              DeepSpeed: module (trainable parameters only), optimizer and
                                     scheduler state, one file set per rank (names carry the rank)
    <checkpoint>/model/              only in a finished run's final checkpoint: the export
    <checkpoint>/manifest-rank<r>.json  each rank's files and their sizes, written after them
    <checkpoint>/complete.json       rank 0, written last, once every rank's manifest is in

Each rank copies its own files into the one checkpoint folder in storage (`persist`), then its manifest;
once every rank has, rank 0 seals the folder (`seal`). Only then is it reported to Ray Train. A folder
torn by a kill or a full disk lacks the seal or a file of a manifest (`problems`), and is never loaded.
Loading never unpickles arbitrary objects: DeepSpeed's reader is swapped for one that calls
`torch.load(weights_only=True)` with an allow-list of the few DeepSpeed types it stores.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

STATE_FILE = "state.json"
DS_TAG = "ds"
MANIFEST = "manifest-rank{rank}.json"
SEAL = "complete.json"


def _allowed_globals() -> list:
    """Non-tensor types DeepSpeed writes into its checkpoints (found with `get_unsafe_globals_in_checkpoint`)."""
    import collections

    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address, collections.OrderedDict, set]


def weights_only_engine(ds_config=None):
    """A DeepSpeed checkpoint engine whose `load` is `torch.load(weights_only=True)` with the allow-list."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    allowed = _allowed_globals()

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)

    return WeightsOnlyCheckpointEngine(ds_config)


def use_safe_loading(engine) -> None:
    """Makes `engine.load_checkpoint` read with `torch.load(weights_only=True)`."""
    engine.checkpoint_engine = weights_only_engine(engine._config)


def save(engine, folder: Path, state: RunState | None) -> None:
    """Writes this rank's DeepSpeed shard into `folder` (collective: every rank calls it) and, on rank 0, state."""
    folder.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(folder), tag=DS_TAG, exclude_frozen_parameters=True)
    if state is not None:
        (folder / STATE_FILE).write_text(state.to_json())


def _local_files(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(fs, path: str, content: str | bytes) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(content.encode() if isinstance(content, str) else content)


def persist(local: Path, fs, dest: str, rank: int, tear: bool = False) -> None:
    """Copies this rank's checkpoint files from `local` into `dest` on the storage filesystem `fs`, then
    its manifest (so a listed file is whole). `tear` (fault injection): stops after half of the largest
    file, as a kill during the copy leaves it. Raises OSError where storage refuses (full, unwritable)."""
    import pyarrow.fs

    files = _local_files(local)
    fs.create_dir(dest, recursive=True)
    if tear:
        name = max(files, key=files.get)
        fs.create_dir(f"{dest}/{name}".rsplit("/", 1)[0], recursive=True)
        _write(fs, f"{dest}/{name}", (local / name).read_bytes()[: files[name] // 2])
        return
    pyarrow.fs.copy_files(str(local), dest, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    _write(fs, f"{dest}/{MANIFEST.format(rank=rank)}", json.dumps(files))


def seal(fs, dest: str, world: int, step: int) -> None:
    """Marks `dest` complete (rank 0, after every rank's `persist` returned)."""
    _write(fs, f"{dest}/{SEAL}", json.dumps({"world": world, "step": step}))


def problems(fs, dest: str) -> list[str]:
    """Why the checkpoint folder `dest` cannot be loaded (no seal, a rank's manifest or file missing or short);
    empty when it is complete."""
    import pyarrow.fs

    found = {info.path[len(dest) + 1:]: info.size for info in
             fs.get_file_info(pyarrow.fs.FileSelector(dest, recursive=True, allow_not_found=True))
             if info.type == pyarrow.fs.FileType.File}
    if SEAL not in found:
        return [f"{SEAL} missing (written last: the save did not finish)"]
    with fs.open_input_stream(f"{dest}/{SEAL}") as stream:
        world = json.loads(stream.read())["world"]
    issues = []
    for rank in range(world):
        manifest = MANIFEST.format(rank=rank)
        if manifest not in found:
            issues.append(f"{manifest} missing")
            continue
        with fs.open_input_stream(f"{dest}/{manifest}") as stream:
            listed = json.loads(stream.read())
        issues += [f"{name}: {found.get(name, 'no file')} of {size} bytes" for name, size in listed.items()
                   if found.get(name) != size]
    return issues


def newest_complete(fs, root: str) -> str | None:
    """The newest complete checkpoint folder (`step-*`, by name) under a run's folder `root`, or None."""
    import pyarrow.fs

    found = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    steps = sorted((i.path for i in found if i.base_name.startswith("step-") and i.type == pyarrow.fs.FileType.Directory),
                   reverse=True)
    return next((path for path in steps if not problems(fs, path)), None)


def local_problems(folder: Path) -> list[str]:
    """`problems` of a checkpoint folder on this machine."""
    import pyarrow.fs

    return problems(pyarrow.fs.LocalFileSystem(), Path(folder).resolve().as_posix())


@dataclass
class RunState:
    """Where a run stands: what a checkpoint must carry for a restart to go on exactly where it stopped."""

    epoch: int = 0
    """Epochs completed."""
    batches_done: int = 0
    """Micro-batches trained in the epoch in progress (a restart skips them)."""
    step: int = 0
    """Optimizer steps taken."""
    history: list[dict] = field(default_factory=list)
    """One row per evaluation (`ray_asr.metrics` keys), the starting model's first when measured."""
    done: bool = False
    """The final checkpoint has been written (its export included)."""
    evaluated_step: int | None = None
    """The step last evaluated, so an epoch end on the evaluation cadence is not evaluated twice."""
    stopped_early: bool = False
    """`train.early_stopping` ended the run before its last epoch."""

    def finished(self, epochs: int) -> bool:
        """Whether this state ends a run of `epochs` epochs (a run given more epochs goes on)."""
        return self.done and (self.epoch >= epochs or self.stopped_early)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunState:
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def read_state(folder: Path) -> RunState:
    return RunState.from_json((Path(folder) / STATE_FILE).read_text())


def load(engine, folder: Path) -> None:
    """Restores module, optimizer and scheduler from a checkpoint folder (collective)."""
    path, _ = engine.load_checkpoint(str(folder), tag=DS_TAG, load_module_strict=False,
                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"{folder}: no DeepSpeed checkpoint to resume from")
