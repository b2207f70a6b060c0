"""Readers for every input format, as one streaming Ray Data datasource.

A source (JSONL manifest, Common Voice `.tsv`, parquet file, HF `save_to_disk` folder) is planned on
the driver into shards (byte ranges of a text file, or row ranges of a table) and each shard is read
by its own Ray task, so nothing is loaded whole. Every input row becomes one "raw row" with a stable
id; rows that cannot even be parsed (not UTF-8, malformed JSON, missing keys) carry an `error` code
instead of being dropped, so the next stage can quarantine them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

RAW_SCHEMA = pa.schema([
    ("id", pa.string()),  # "<file>:<line>" or "<file>:<row>", stable across epochs and reruns
    ("source", pa.string()),  # the file or folder the row came from
    ("raw", pa.string()),  # the original row, for quarantine
    ("audio_path", pa.string()),  # absolute path, or null when bytes are embedded
    ("audio_bytes", pa.binary()),  # encoded audio embedded in the dataset, or null
    ("text", pa.string()),
    ("error", pa.string()),  # catalogue reason when the row could not be parsed
    ("error_detail", pa.string()),
])
AUDIO_KEYS = ("audio", "path", "audio_filepath", "file")
TEXT_KEYS = ("text", "sentence", "transcription", "transcript", "normalized_text")
LINES_PER_SHARD = 128  # manifest lines per read task: small blocks keep the stream flowing
ROWS_PER_SHARD = 256  # table rows per read task (rows may embed audio bytes)
_SCAN_BYTES = 1 << 20


class SourceError(ValueError):
    """The input itself cannot be read (missing, unknown format); the message names it."""


@dataclass(frozen=True)
class Shard:
    """One read task's share of a source."""

    kind: str  # "jsonl" | "tsv" | "parquet" | "hf"
    path: str
    start: int  # byte offset (text files) or first row (tables)
    stop: int  # end byte offset or end row, exclusive
    first_line: int  # 1-based line number of `start` (text files)
    header: tuple[str, ...] = ()  # TSV column names


def _text_shards(path: Path, kind: str) -> tuple[list[Shard], int, tuple[str, ...]]:
    """Splits a line-oriented file at line boundaries, counting lines in one sequential scan."""
    header: tuple[str, ...] = ()
    with open(path, "rb") as f:
        if kind == "tsv":
            first = f.readline()
            header = tuple(first.decode("utf-8", "replace").rstrip("\r\n").split("\t"))
        start = offset = f.tell()
        first_line = line = 2 if kind == "tsv" else 1  # line number of the next line to scan
        shards, last = [], b"\n"
        while chunk := f.read(_SCAN_BYTES):
            pos = 0
            while (nl := chunk.find(b"\n", pos)) != -1:
                pos, line = nl + 1, line + 1
                if line - first_line == LINES_PER_SHARD:
                    shards.append(Shard(kind, str(path), start, offset + pos, first_line, header))
                    start, first_line = offset + pos, line
            offset += len(chunk)
            last = chunk[-1:]
    if start < offset:  # the remainder, possibly without a final newline
        shards.append(Shard(kind, str(path), start, offset, first_line, header))
    total = line - (2 if kind == "tsv" else 1) + (last != b"\n")
    return shards, total, header


def plan(source: str | Path) -> tuple[list[Shard], int]:
    """Shards for a source and its row count (an upper bound for text files: blank lines count)."""
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: does not exist")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return _table_shards(path, "hf")
        if (path / "dataset_dict.json").exists():
            raise SourceError(f"{path}: holds several splits; name one, e.g. {path / 'train'}")
        tsvs = sorted(p.name for p in path.glob("*.tsv"))
        if tsvs:
            raise SourceError(f"{path}: a Common Voice folder; name one of its tables, e.g. {path / 'train.tsv'} ({', '.join(tsvs)})")
        raise SourceError(f"{path}: not a dataset folder (no dataset_info.json)")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        shards, rows, _ = _text_shards(path, "jsonl")
        return shards, rows
    if suffix == ".tsv":
        shards, rows, header = _text_shards(path, "tsv")
        if "path" not in header or "sentence" not in header:
            raise SourceError(f"{path}: a Common Voice table needs 'path' and 'sentence' columns, has {', '.join(header)}")
        return shards, rows
    if suffix == ".parquet":
        return _table_shards(path, "parquet")
    raise SourceError(f"{path}: unknown format (use .jsonl, Common Voice .tsv, .parquet or an HF dataset folder)")


def _table_shards(path: Path, kind: str) -> tuple[list[Shard], int]:
    rows = _open_table(kind, str(path)).num_rows
    shards = [Shard(kind, str(path), lo, min(lo + ROWS_PER_SHARD, rows), 0) for lo in range(0, rows, ROWS_PER_SHARD)]
    return shards, rows


def _open_table(kind: str, path: str):
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata
    import datasets

    try:
        return datasets.load_from_disk(path).with_format("arrow")
    except (FileNotFoundError, ValueError) as err:
        raise SourceError(f"{path}: cannot open HF dataset ({err})") from None


def _row(shard: Shard, number: int, raw: str, **fields) -> dict:
    row = {"id": f"{Path(shard.path).name}:{number}", "source": shard.path, "raw": raw, "audio_path": None,
           "audio_bytes": None, "text": None, "error": None, "error_detail": None}
    row.update(fields)
    return row


def _pick(record: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in record:
            return key, record[key]
    return None, None


def _from_record(shard: Shard, number: int, raw: str, record: dict, audio_root: Path) -> dict:
    """Normalises one parsed row (manifest line, TSV line or table row) to the raw schema."""
    audio_key, audio = _pick(record, AUDIO_KEYS)
    text_key, text = _pick(record, TEXT_KEYS)
    missing = [name for name, key in (("audio", audio_key), ("text", text_key)) if key is None]
    if missing:
        return _row(shard, number, raw, error="missing_keys", error_detail=f"row has no {' or '.join(missing)} key")
    fields = {"text": text if isinstance(text, str) else None}
    if text is not None and not isinstance(text, str):
        return _row(shard, number, raw, error="empty_transcript", error_detail=f"text is {type(text).__name__}, not a string")
    if isinstance(audio, dict):  # HF Audio feature: {"bytes": ..., "path": ...}
        if audio.get("bytes"):
            return _row(shard, number, raw, audio_bytes=audio["bytes"], **fields)
        audio = audio.get("path")
    if not isinstance(audio, str) or not audio:
        return _row(shard, number, raw, error="missing_keys", error_detail=f"{audio_key} is not a file path")
    return _row(shard, number, raw, audio_path=str(audio_root / audio), **fields)


def _read_text_shard(shard: Shard) -> list[dict]:
    with open(shard.path, "rb") as f:
        f.seek(shard.start)
        data = f.read(shard.stop - shard.start)
    folder = Path(shard.path).parent
    audio_root = folder / "clips" if shard.kind == "tsv" else folder
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()  # the empty remainder after the shard's final newline
    rows = []
    for number, line in enumerate(lines, start=shard.first_line):
        if not line.strip():
            continue  # a blank line holds no row (manifests often end with one)
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as err:
            rows.append(_row(shard, number, line.decode("utf-8", "backslashreplace"), error="not_utf8",
                             error_detail=f"line is not UTF-8 ({err.reason} at byte {err.start})"))
            continue
        if shard.kind == "tsv":
            values = next(csv.reader([text], delimiter="\t", quoting=csv.QUOTE_NONE), [])
            if len(values) < len(shard.header):
                rows.append(_row(shard, number, text, error="missing_keys",
                                 error_detail=f"{len(values)} columns, header has {len(shard.header)}"))
                continue
            record = dict(zip(shard.header, values))
        else:
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                rows.append(_row(shard, number, text, error="malformed_json", error_detail=f"not JSON ({err.msg})"))
                continue
            if not isinstance(record, dict):
                rows.append(_row(shard, number, text, error="malformed_json",
                                 error_detail=f"a JSON {type(record).__name__}, not an object"))
                continue
        rows.append(_from_record(shard, number, text, record, audio_root))
    return rows


def _read_table_shard(shard: Shard) -> list[dict]:
    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(shard.path).slice(shard.start, shard.stop - shard.start)
        audio_root = Path(shard.path).parent
    else:
        table = _open_table("hf", shard.path)[shard.start : shard.stop]
        audio_root = Path(shard.path)
    rows = []
    for offset, record in enumerate(table.to_pylist()):
        shown = {k: ({"path": v.get("path")} if isinstance(v, dict) else v) for k, v in record.items()}
        raw = json.dumps(shown, ensure_ascii=False, default=str)
        rows.append(_from_record(shard, shard.start + offset, raw, record, audio_root))
    return rows


def read_shard(shard: Shard) -> pa.Table:
    """Reads one shard into a table of raw rows (`RAW_SCHEMA`)."""
    rows = _read_text_shard(shard) if shard.kind in ("jsonl", "tsv") else _read_table_shard(shard)
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def read_all(source: str | Path) -> list[dict]:
    """Every raw row of a source, in order, without Ray (small sources, tests, evaluation)."""
    shards, _ = plan(source)
    return [row for shard in shards for row in read_shard(shard).to_pylist()]
