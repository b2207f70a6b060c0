"""Readers for every input format, as one streaming Ray Data datasource.

A source (JSONL manifest, also NeMo's and gzipped; Common Voice `.tsv`; parquet file; HF `save_to_disk`
folder; HF audiofolder; Kaldi/ESPnet data dir; lhotse cut set or recordings + supervisions; `hf://` hub
dataset, streamed) is planned on the driver into shards (byte ranges of a text file, line ranges of a
gzip file, row ranges of a table, data files of a streamed dataset) and each shard is read by its own
Ray task, so nothing is loaded whole. A row may name a segment of its audio file (`offset`,
`duration`), which `ray_asr.prepare` cuts out after decoding. Every input row becomes one "raw row" with a stable
id; rows that cannot even be parsed (not UTF-8, malformed JSON, missing keys) carry an `error` code
instead of being dropped, so the next stage can quarantine them.

This module tells the formats apart, reads plain manifests, Common Voice tables, parquet files and HF
`save_to_disk` folders itself, and leaves the rest to `ray_asr.formats`: `audiofolder`, `kaldi`,
`lhotse` and `hf_stream`, over the shared `rows` (raw rows, `Shard`, `SourceError`) and `lines`
(line-oriented and gzip files). It is the only module callers import. Shard sizes are the constants
below, read when `plan` runs and passed down, so setting them here takes effect everywhere.

A shard can be read in pieces (`read_shard(shard, piece, pieces)`): the decode stage reads one piece per call, so
that more actors share a small source and no row is read long before it is decoded (`ray_asr.data`). Only
shards whose slices cost no more than their rows split (`splits`); the rest are read whole.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from ray_asr.formats import audiofolder, hf_stream, kaldi, lhotse
from ray_asr.formats.lines import coarsen, first_record, is_gz, json_object, line_shards, text_lines, text_shards
from ray_asr.formats.rows import AUDIO_KEYS, RAW_SCHEMA, TEXT_KEYS, Shard, SourceError, from_record, raw_row, table_raw  # noqa: F401 (AUDIO_KEYS, TEXT_KEYS: callers read them here too)

LINES_PER_SHARD = 128  # manifest lines per read task: small blocks keep the stream flowing
ROWS_PER_SHARD = 256  # table rows per read task (rows may embed audio bytes)
# Read tasks that scan a whole index file (Kaldi wav.scp/segments, lhotse recordings) or decompress a
# gzip file from its start up to their range: capping their number keeps the total work at a few dozen
# passes over the file, whatever its size (each shard then holds more lines: rows/JOIN_MAX_SHARDS).
JOIN_MAX_SHARDS = 64
# Read tasks of any source: past this, shards grow instead (a million-line manifest: ~1,000 lines a task),
# so the driver's plan, and Ray Data's task and block bookkeeping, stay the same size whatever the rows.
MAX_SHARDS = 1024
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz")
FORMATS = ("a .jsonl manifest (also NeMo's, or .jsonl.gz), a Common Voice .tsv, a .parquet file, an HF dataset "
           "folder (save_to_disk, or audiofolder with metadata.csv/.jsonl), a Kaldi/ESPnet data dir (wav.scp + "
           "text), a lhotse cut set or recordings + supervisions .jsonl[.gz], or hf://NAME[?split=..&config=..]")


def plan(source: str | Path) -> tuple[list[Shard], int]:
    """Shards for a source and its row count (an upper bound for text files: blank lines count).

    Raises `SourceError`, one line naming the source, when it cannot be read at all.
    """
    if isinstance(source, str) and source.startswith(hf_stream.SCHEME):
        return hf_stream.shards(source)
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: does not exist")
    if path.is_dir():
        return _folder_shards(path)
    if path.name in kaldi.FILES and (path.parent / "wav.scp").is_file():
        return kaldi.shards(path.parent, LINES_PER_SHARD, JOIN_MAX_SHARDS)  # a file of a Kaldi data dir stands for the dir
    if path.name == "metadata.csv":
        return audiofolder.shards(path.parent, LINES_PER_SHARD)
    if path.name.lower().endswith(JSONL_SUFFIXES):
        shards, rows = _jsonl_shards(path)
        return coarsen(shards, MAX_SHARDS), rows
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        shards, rows, header = text_shards(path, "tsv", LINES_PER_SHARD)
        if "path" not in header or "sentence" not in header:
            raise SourceError(f"{path}: a Common Voice table needs 'path' and 'sentence' columns, has {', '.join(header)}")
        return coarsen(shards, MAX_SHARDS), rows
    if suffix == ".parquet":
        return _table_shards(path, "parquet")
    raise SourceError(f"{path}: unknown format (use {FORMATS})")


def _folder_shards(path: Path) -> tuple[list[Shard], int]:
    """A folder: HF `save_to_disk`, HF audiofolder, Kaldi data dir or lhotse manifests, told apart by their files."""
    if (path / "dataset_info.json").exists() or (path / "state.json").exists():
        return _table_shards(path, "hf")
    if (path / "dataset_dict.json").exists():
        raise SourceError(f"{path}: holds several splits; name one, e.g. {path / 'train'}")
    if any((path / name).is_file() for name in audiofolder.METADATA):
        return audiofolder.shards(path, LINES_PER_SHARD)
    if (path / "wav.scp").is_file() or (path / "segments").is_file():
        return kaldi.shards(path, LINES_PER_SHARD, JOIN_MAX_SHARDS)
    supervisions = sorted(p for p in path.glob("*supervisions*") if p.name.endswith(lhotse.SUFFIXES))
    if len(supervisions) > 1:
        raise SourceError(f"{path}: holds several lhotse supervision manifests; name one, e.g. {supervisions[0]} "
                          f"({', '.join(p.name for p in supervisions)})")
    if supervisions:
        return _jsonl_shards(supervisions[0])
    splits = sorted({p.parent.name for name in audiofolder.METADATA for p in path.glob(f"*/{name}")})
    if splits:
        raise SourceError(f"{path}: an audiofolder with splits; name one, e.g. {path / splits[0]} ({', '.join(splits)})")
    tsvs = sorted(p.name for p in path.glob("*.tsv"))
    if tsvs:
        raise SourceError(f"{path}: a Common Voice folder; name one of its tables, e.g. {path / 'train.tsv'} ({', '.join(tsvs)})")
    raise SourceError(f"{path}: not a dataset folder (no dataset_info.json, metadata.csv/.jsonl, wav.scp + text "
                      f"or lhotse *supervisions*.jsonl[.gz]; use {FORMATS})")


def _jsonl_shards(path: Path) -> tuple[list[Shard], int]:
    """A JSONL file: a lhotse cut set or recordings/supervisions (told by their first line), else a manifest."""
    kind = lhotse.kind(first_record(path))
    if kind is None:  # a manifest: shards and rows exactly as before lhotse support
        return line_shards(path, "jsonl", LINES_PER_SHARD, JOIN_MAX_SHARDS)
    return lhotse.shards(path, kind, LINES_PER_SHARD, JOIN_MAX_SHARDS)


def _table_shards(path: Path, kind: str) -> tuple[list[Shard], int]:
    rows = _open_table(kind, str(path)).num_rows
    shards = [Shard(kind, str(path), lo, min(lo + ROWS_PER_SHARD, rows), 0) for lo in range(0, rows, ROWS_PER_SHARD)]
    return coarsen(shards, MAX_SHARDS), rows


def _open_table(kind: str, path: str):
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata
    import datasets

    try:
        return datasets.load_from_disk(path).with_format("arrow")
    except (FileNotFoundError, ValueError) as err:
        raise SourceError(f"{path}: cannot open HF dataset ({err})") from None


def _read_text_shard(shard: Shard, piece: int = 0, pieces: int = 1) -> list[dict]:
    folder = Path(shard.path).parent
    audio_root = folder / "clips" if shard.kind == "tsv" else folder
    rows = []
    lines = list(text_lines(shard))  # decoded, not parsed: a piece parses only its own lines
    for number, text, bad in lines[_bounds(len(lines), piece, pieces)]:
        if bad is not None:
            rows.append(bad)
            continue
        if shard.kind == "tsv":
            values = next(csv.reader([text], delimiter="\t", quoting=csv.QUOTE_NONE), [])
            if len(values) < len(shard.header):
                rows.append(raw_row(shard, number, text, error="missing_keys",
                                    error_detail=f"{len(values)} columns, header has {len(shard.header)}"))
                continue
            record = dict(zip(shard.header, values))
        else:
            record, bad = json_object(shard, number, text)
            if bad is not None:
                rows.append(bad)
                continue
        rows.append(from_record(shard, number, text, record, audio_root))
    return rows


def _read_table_shard(shard: Shard, piece: int = 0, pieces: int = 1) -> list[dict]:
    span = _bounds(shard.stop - shard.start, piece, pieces)
    shard = replace(shard, start=shard.start + span.start, stop=shard.start + span.stop)
    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(shard.path).slice(shard.start, shard.stop - shard.start)
        audio_root = Path(shard.path).parent
    else:
        table = _open_table("hf", shard.path)[shard.start : shard.stop]
        audio_root = Path(shard.path)
    return [from_record(shard, shard.start + offset, table_raw(record), record, audio_root)
            for offset, record in enumerate(table.to_pylist())]


def _read_hf_stream_shard(shard: Shard) -> list[dict]:
    return hf_stream.read(shard, ROWS_PER_SHARD)  # ROWS_PER_SHARD read per call, like every constant here


_READERS = {"jsonl": _read_text_shard, "tsv": _read_text_shard, "csv": audiofolder.read_csv,
            "parquet": _read_table_shard, "hf": _read_table_shard, "kaldi": kaldi.read, "lhotse_cuts": lhotse.read_cuts,
            "lhotse_pair": lhotse.read_pair, "hf_stream": _read_hf_stream_shard}


# Kinds whose reader takes a piece of its shard for the cost of its rows: a plain text file's lines are split
# before they are parsed, a table's row range narrowed. A gzip file is decompressed from its start whatever the
# piece, and a join (Kaldi, lhotse pair) or a streamed dataset reads its index or files whole: those read whole.
_PIECEWISE = frozenset({"jsonl", "tsv", "parquet", "hf"})


def splits(shard: Shard) -> bool:
    """Whether `read_shard` reads a piece of this shard for the cost of the piece (else it is read whole)."""
    return shard.kind in _PIECEWISE and not is_gz(shard.path)


def read_shard(shard: Shard, piece: int = 0, pieces: int = 1) -> pa.Table:
    """Reads one shard, or the `piece`-th of `pieces` even slices of its rows, into raw rows (`RAW_SCHEMA`)."""
    if pieces == 1:
        return pa.Table.from_pylist(_READERS[shard.kind](shard), schema=RAW_SCHEMA)
    if not splits(shard):
        raise ValueError(f"{shard.path}: a {shard.kind} shard is read whole, not in {pieces} pieces")
    return pa.Table.from_pylist(_READERS[shard.kind](shard, piece, pieces), schema=RAW_SCHEMA)


def _bounds(rows: int, piece: int, pieces: int) -> slice:
    """The `piece`-th of `pieces` even, contiguous slices of `rows` items (together: each item once, in order)."""
    return slice(rows * piece // pieces, rows * (piece + 1) // pieces)


def read_all(source: str | Path) -> list[dict]:
    """Every raw row of a source, in order, without Ray (small sources, tests, evaluation)."""
    shards, _ = plan(source)
    return [row for shard in shards for row in read_shard(shard).to_pylist()]
