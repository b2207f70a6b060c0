"""The pipeline as `datasets=` input of a real 2-worker TorchTrainer: disjoint shares, every row once."""

from __future__ import annotations

import json

import pytest
import ray
import ray.train
from ray.train.torch import TorchTrainer

from ray_asr import config, data, ingest
from ray_asr.collate import WhisperCollator

pytestmark = pytest.mark.usefixtures("ray_local")


def _consume_share(loop_config: dict) -> None:
    """Each worker reads its shard through the worker-side collator and records the ids it saw."""
    rank = ray.train.get_context().get_world_rank()
    shard = ray.train.get_dataset_shard("train")
    ids, clips = [], 0
    for batch in shard.iter_batches(batch_size=4, batch_format="numpy"):
        ids.extend(batch["id"].tolist())
        features = WhisperCollator(n_mels=80)(batch)
        assert features["input_features"].shape[1:] == (80, 3000)
        clips += features["input_features"].shape[0]
    assert clips == len(ids)
    with open(f"{loop_config['out']}/rank{rank}.json", "w") as f:
        json.dump(ids, f)
    ray.train.report({"rows": len(ids)})


def test_two_workers_receive_disjoint_shares_covering_every_accepted_row(catalogue, tiny_model, tmp_path):
    # The catalogue's rows plus 60 good ones, so the stream has enough blocks to share out.
    manifest = catalogue.manifest.parent / "ingest.jsonl"  # beside the catalogue: its audio paths are relative
    extra = [json.dumps({"audio": str(catalogue.manifest.parent / "clips" / "good_16k.wav"), "text": f"extra {i}"})
             for i in range(60)]
    manifest.write_bytes(catalogue.manifest.read_bytes() + ("\n".join(extra) + "\n").encode())
    rename = {old: old.replace("manifest.jsonl", "ingest.jsonl") for old in catalogue.ids.values()}
    good = {rename[i] for i in catalogue.good} | {f"ingest.jsonl:{len(catalogue.expected) + 1 + i}" for i in range(60)}
    # Trainers hold one of the two CPUs; a read task (0.25) and a decode actor (0.5) share the other.
    cfg = config.from_dict({"model": {"name_or_path": str(tiny_model)}, "output_dir": str(tmp_path),
                            "data": {"train": str(manifest), "prepare_num_cpus": 0.5, "prepare_batch_size": 4}})
    sink = data.open_sink(cfg.quarantine_path)
    ds = data.build_dataset(cfg, "train", sink, enforce_limit=False)
    trainer = TorchTrainer(
        _consume_share,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "storage"), name="ingest"),
        datasets={"train": ds},
        dataset_config=ingest.ExactSplitDataConfig(),
    )
    trainer.fit()
    shares = [set(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1)]
    seen = [i for r in (0, 1) for i in json.loads((tmp_path / f"rank{r}.json").read_text())]
    assert len(seen) == len(set(seen))  # no row twice
    assert not shares[0] & shares[1] and all(shares)  # disjoint, and each worker got a share
    assert set(seen) == good  # together, every accepted row
    quarantined = {json.loads(line)["id"] for line in cfg.quarantine_path.read_text().splitlines()}
    assert quarantined == {rename[i] for i in catalogue.bad}
