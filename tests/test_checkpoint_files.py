"""A checkpoint folder is loaded only when complete: every rank's manifest lists whole files and rank 0's seal is
written last (`ray_asr.checkpoint`); a torn one is found, skipped, and never collected as a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs

from ray_asr import builtin, checkpoint, config, finetune
from ray_asr.checkpoint import RunState

FS = pyarrow.fs.LocalFileSystem()
ROOT = Path(__file__).resolve().parents[1]


def _rank_files(local: Path, rank: int, state: RunState | None) -> Path:
    (local / "ds").mkdir(parents=True)
    (local / "ds" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(bytes(range(256)) * 40)
    if state is not None:
        (local / checkpoint.STATE_FILE).write_text(state.to_json())
    return local


def _save(tmp: Path, dest: Path, state: RunState, world: int = 2, torn_rank: int | None = None, sealed=True) -> str:
    for rank in range(world):
        local = _rank_files(tmp / f"local-{dest.name}-{len(list(tmp.glob('local-*')))}", rank,
                            state if rank == 0 else None)
        checkpoint.persist(local, FS, dest.as_posix(), rank, tear=rank == torn_rank)
    if sealed and torn_rank is None:
        checkpoint.seal(FS, dest.as_posix(), world, state.step)
    return dest.as_posix()


def test_a_complete_folder_has_no_problems_and_each_fault_is_named(tmp_path):
    good = _save(tmp_path, tmp_path / "step-0000004", RunState(step=4))
    assert checkpoint.problems(FS, good) == []
    assert sorted(p.name for p in Path(good).iterdir()) == ["complete.json", "ds", "manifest-rank0.json",
                                                            "manifest-rank1.json", "state.json"]

    torn = _save(tmp_path, tmp_path / "step-0000006", RunState(step=6), torn_rank=1)  # rank 1 killed mid-copy
    assert checkpoint.problems(FS, torn) == ["complete.json missing (written last: the save did not finish)"]
    shard = Path(torn) / "ds" / "zero_pp_rank_1_optim_states.pt"
    assert shard.stat().st_size == 256 * 40 // 2  # half of it arrived

    short = _save(tmp_path, tmp_path / "step-0000008", RunState(step=8))
    with open(Path(short) / "ds" / "zero_pp_rank_0_optim_states.pt", "r+b") as f:
        f.truncate(100)  # sealed, then damaged on the storage
    assert checkpoint.problems(FS, short) == ["ds/zero_pp_rank_0_optim_states.pt: 100 of 10240 bytes"]
    (Path(good) / "manifest-rank1.json").unlink()
    assert checkpoint.problems(FS, good) == ["manifest-rank1.json missing"]
    assert checkpoint.local_problems(Path(short)) == checkpoint.problems(FS, short)


def test_the_newest_complete_checkpoint_is_chosen_over_newer_torn_ones(tmp_path):
    run = tmp_path / "run"
    _save(tmp_path, run / "step-0000002", RunState(step=2))
    _save(tmp_path, run / "step-0000004", RunState(step=4))
    _save(tmp_path, run / "step-0000006", RunState(step=6), torn_rank=0)
    _save(tmp_path, run / "step-0000008", RunState(step=8), sealed=False)
    (run / "notes.txt").write_text("not a checkpoint")
    assert checkpoint.newest_complete(FS, run.as_posix()) == (run / "step-0000004").as_posix()
    assert checkpoint.newest_complete(FS, (tmp_path / "absent").as_posix()) is None


def test_a_finished_run_whose_final_checkpoint_is_torn_is_not_collected(tmp_path):
    cfg = builtin.resolve(config.load(ROOT / "configs" / "smoke.yaml", [f"output_dir={tmp_path / 'out'}"]))
    run = Path(finetune.storage_path(cfg)) / cfg.train.run_name
    final = RunState(epoch=cfg.train.epochs, step=16, done=True)
    _save(tmp_path, run / "step-0000008", RunState(epoch=1, step=8))
    _save(tmp_path, run / "step-0000016-final", final, torn_rank=1)  # the driver died during the final save
    assert finetune.finished_checkpoint(cfg) is None  # so the rerun resumes from step 8 and trains again
    _save(tmp_path, run / "step-0000016-final", final)  # written again, whole
    found = finetune.finished_checkpoint(cfg)
    assert found is not None and found.path == (run / "step-0000016-final").as_posix()
    assert json.loads((Path(found.path) / checkpoint.SEAL).read_text()) == {"world": 2, "step": 16}
