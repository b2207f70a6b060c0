"""HF audiofolder: a `metadata.csv` or `metadata.jsonl` whose `file_name` column is relative to its folder.

A CSV transcript may hold a newline inside quotes, so `metadata.csv` is split between records, not lines;
`metadata.jsonl` is an ordinary JSONL manifest (read by `sources`' manifest reader).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ray_asr.formats.lines import first_record, shard_lines, text_shards
from ray_asr.formats.rows import TEXT_KEYS, Shard, SourceError, from_record, raw_row

METADATA = ("metadata.csv", "metadata.jsonl")


def shards(folder: Path, lines_per_shard: int) -> tuple[list[Shard], int]:
    """An HF audiofolder: `metadata.csv` or `metadata.jsonl` whose `file_name` is relative to the folder."""
    folder = folder.absolute()
    present = [folder / name for name in METADATA if (folder / name).is_file()]
    if len(present) > 1:
        raise SourceError(f"{folder}: holds both metadata.csv and metadata.jsonl; keep one")
    metadata = present[0]
    if metadata.suffix == ".jsonl":
        columns = tuple((first_record(metadata) or {}).keys())
        found, total, _ = text_shards(metadata, "jsonl", lines_per_shard)
    else:
        found, total = _csv_shards(metadata, lines_per_shard)
        columns = found[0].header if found else _csv_header(metadata)
    if "file_name" not in columns or not any(key in columns for key in TEXT_KEYS):
        raise SourceError(f"{metadata}: an audiofolder needs a file_name column and a text column "
                          f"({', '.join(TEXT_KEYS)}); has {', '.join(columns) or 'none'}")
    return found, total


def _csv_header(path: Path) -> tuple[str, ...]:
    with open(path, "rb") as f:
        head = f.readline().decode("utf-8-sig", "replace").rstrip("\r\n")
    return tuple(next(csv.reader([head]), []))


def _csv_shards(path: Path, lines_per_shard: int) -> tuple[list[Shard], int]:
    """Splits a `metadata.csv` between records, counting them in one sequential scan.

    A transcript may hold a newline inside quotes, so a newline ends a record only where the quotes
    since the record's start balance (CSV writes a quote inside a field as two).
    """
    header = _csv_header(path)
    found, records, quoted = [], 0, False
    with open(path, "rb") as f:
        f.readline()
        start = offset = f.tell()
        first_line = line = 2  # line number of the next line to scan
        for physical in f:
            offset, line = offset + len(physical), line + 1
            quoted ^= bool(physical.count(b'"') & 1)
            if quoted:
                continue
            records += 1
            if records % lines_per_shard == 0:
                found.append(Shard("csv", str(path), start, offset, first_line, header))
                start, first_line = offset, line
    if start < offset:
        found.append(Shard("csv", str(path), start, offset, first_line, header))
    return found, records + quoted  # an unclosed quote still ends in one (bad) record


def read_csv(shard: Shard) -> list[dict]:
    """An audiofolder `metadata.csv` shard: one row per CSV record (quoted newlines included)."""
    rows, record, quoted = [], [], False
    for number, line in shard_lines(shard):
        if not record:
            first = number
        record.append(line)
        quoted ^= bool(line.count(b'"') & 1)
        if not quoted:
            rows += _csv_row(shard, first, b"\n".join(record))
            record = []
    if record:  # an unclosed quote at the shard's end
        rows += _csv_row(shard, first, b"\n".join(record))
    return rows


def _csv_row(shard: Shard, number: int, data: bytes) -> list[dict]:
    """The row of one CSV record (none for a blank line), with `file_name` relative to the metadata's folder."""
    if not data.strip():
        return []
    try:
        text = data.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as err:
        return [raw_row(shard, number, data.decode("utf-8", "backslashreplace"), error="not_utf8",
                        error_detail=f"record is not UTF-8 ({err.reason} at byte {err.start})")]
    values = next(csv.reader(io.StringIO(text)), [])
    if len(values) < len(shard.header):
        return [raw_row(shard, number, text, error="missing_keys",
                        error_detail=f"{len(values)} columns, header has {len(shard.header)}")]
    return [from_record(shard, number, text, dict(zip(shard.header, values)), Path(shard.path).parent)]
