"""Run checkpoints: every rank's DeepSpeed shard plus the loop's own state, as one Ray Train checkpoint.

    <checkpoint>/state.json          step, epoch, batches done in the epoch, eval history (rank 0)
    <checkpoint>/ds/...              DeepSpeed: module (trainable parameters only), optimizer and
                                     scheduler state, one file set per rank (names carry the rank)
    <checkpoint>/model/              only in a finished run's final checkpoint: the export

Ray Train V2 uploads what each rank reports into the same checkpoint folder, so the ranks' shards
meet there. Loading never unpickles arbitrary objects: DeepSpeed's reader is swapped for one that
calls `torch.load(weights_only=True)` with an allow-list of the few DeepSpeed types it stores.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

STATE_FILE = "state.json"
DS_TAG = "ds"


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
