"""How Ray Train hands each worker its share of the streaming datasets (kept out of `ray_asr.data`, which
every data-tier process imports, since importing Ray Train costs each of them about a second)."""

from __future__ import annotations

from ray.train import DataConfig


class ExactSplitDataConfig(DataConfig):
    """Ray Train ingest that splits each dataset across workers without dropping rows.

    Ray's default (`streaming_split(equal=True)`) drops up to `world_size - 1` rows per epoch to
    give every worker the same count; here every accepted row reaches exactly one worker, and the
    train loop keeps ranks in lock-step when their shares differ by a batch.
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            if ds.name is None:
                ds.set_name(name)
            ds.context.execution_options = self._resolve_execution_options(name)
            for rank, split in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                output[rank][name] = split
        return output
