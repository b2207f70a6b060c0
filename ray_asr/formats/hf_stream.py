"""`hf://NAME[?split=..&config=..]`: a hub dataset (or a local folder the `datasets` library can load), streamed.

Nothing is downloaded up front: the stream is planned as one shard per data file, and each read task
streams its file as arrow, audio undecoded.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from ray_asr.formats.rows import Shard, SourceError, from_record, table_raw

SCHEME = "hf://"


def _parse(spec: str) -> tuple[str, str, str | None]:
    """`hf://NAME?split=..&config=..` → (name, split, config); split defaults to train."""
    name, _, query = spec[len(SCHEME):].partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - {"split", "config"})
    if not name or unknown:
        raise SourceError(f"{spec}: expected hf://NAME[?split=SPLIT&config=CONFIG]"
                          + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    return name, params.get("split") or "train", params.get("config") or None


def _open(spec: str):
    """The split of an `hf://` source as a streaming `IterableDataset` (nothing downloaded up front)."""
    name, split, config = _parse(spec)
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # noqa: BLE001 (hub, network, files or builder: any of them means the source is unreadable)
        message = (str(err).strip().splitlines() or [""])[0]
        raise SourceError(f"{spec}: cannot be streamed ({type(err).__name__}: {message})") from None


def shards(spec: str) -> tuple[list[Shard], int]:
    """One shard per data file of the stream (`IterableDataset.n_shards`): streams cannot seek to a row.

    The count is the dataset card's when it records one (hub datasets usually do); otherwise one
    streamed pass on the driver counts the rows, because the count sets the learning-rate schedule and the
    rejected-share limit. For a local audiofolder that pass reads only the metadata file; for a hub
    dataset without a recorded count it downloads the split once.
    """
    name, split, _ = _parse(spec)
    if Path(name).is_dir():  # a local folder: named absolutely, so read tasks find it whatever their directory
        spec = SCHEME + str(Path(name).absolute()) + spec[len(SCHEME) + len(name):]
    ds = _open(spec)
    splits = ds.info.splits or {}
    known = splits[split].num_examples if split in splits else None
    total = known or sum(batch.num_rows for batch in ds.with_format("arrow").iter(batch_size=1000))
    files = max(1, ds.n_shards)
    return [Shard("hf_stream", spec, k, files, 0) for k in range(files)], total


def read(shard: Shard, batch_rows: int) -> list[dict]:
    """One data file of an `hf://` stream, as arrow (audio undecoded: the Audio feature's bytes and path).

    Ids are `<name>:<split>:<data file>.<row in it>`: a stream cannot tell a row's global number.
    `batch_rows` rows are fetched at a time (`sources.ROWS_PER_SHARD`).
    """
    name, split, config = _parse(shard.path)
    ds = _open(shard.path)
    if shard.stop > 1:
        ds = ds.shard(num_shards=shard.stop, index=shard.start)
    local = Path(name).is_dir()
    label = f"{Path(name).name if local else name}{'/' + config if config else ''}:{split}:{shard.start}"
    rows, number = [], 0
    for batch in ds.with_format("arrow").iter(batch_size=batch_rows):
        for record in batch.to_pylist():
            row = from_record(shard, number, table_raw(record), record, Path(name) if local else Path())
            rows.append({**row, "id": f"{label}.{number}"})
            number += 1
    return rows
