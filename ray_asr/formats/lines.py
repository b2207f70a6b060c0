"""Line-oriented files, plain or gzipped: split into shards on the driver, read back line by line per task.

A plain file is split into byte ranges at line boundaries; a gzip file into line ranges (a gzip stream
cannot be entered in the middle). The readers yield numbered lines, their text, or their JSON objects,
turning a line that cannot be parsed into its error row rather than dropping it.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ray_asr.formats.rows import Shard, SourceError, raw_row

SCAN_BYTES = 1 << 20
GZIP_ERRORS = (OSError, EOFError, zlib.error)  # what a damaged or non-gzip `.gz` raises while read


def text_shards(path: Path, kind: str, lines_per_shard: int) -> tuple[list[Shard], int, tuple[str, ...]]:
    """Splits a line-oriented file at line boundaries, counting lines in one sequential scan."""
    header: tuple[str, ...] = ()
    with open(path, "rb") as f:
        if kind == "tsv":
            first = f.readline()
            header = tuple(first.decode("utf-8", "replace").rstrip("\r\n").split("\t"))
        start = offset = f.tell()
        first_line = line = 2 if kind == "tsv" else 1  # line number of the next line to scan
        shards, last = [], b"\n"
        while chunk := f.read(SCAN_BYTES):
            pos = 0
            while (nl := chunk.find(b"\n", pos)) != -1:
                pos, line = nl + 1, line + 1
                if line - first_line == lines_per_shard:
                    shards.append(Shard(kind, str(path), start, offset + pos, first_line, header))
                    start, first_line = offset + pos, line
            offset += len(chunk)
            last = chunk[-1:]
    if start < offset:  # the remainder, possibly without a final newline
        shards.append(Shard(kind, str(path), start, offset, first_line, header))
    total = line - (2 if kind == "tsv" else 1) + (last != b"\n")
    return shards, total, header


def coarsen(shards: list[Shard], limit: int) -> list[Shard]:
    """Merges neighbouring shards so that at most `limit` remain (see `sources.JOIN_MAX_SHARDS`)."""
    size = math.ceil(len(shards) / limit)
    if size <= 1:
        return shards
    return [replace(shards[i], stop=shards[min(i + size, len(shards)) - 1].stop) for i in range(0, len(shards), size)]


def is_gz(path: str | Path) -> bool:
    """Whether a file is read as gzip (by its name)."""
    return str(path).lower().endswith(".gz")


def open_lines(path: str | Path) -> Iterator[bytes]:
    """Every line of a whole text file, gzipped or not, without its line end."""
    opener = gzip.open if is_gz(path) else open
    with opener(path, "rb") as f:
        for line in f:
            yield line.rstrip(b"\n")


def first_record(path: Path) -> dict | None:
    """The first non-blank line of a JSONL file as an object, or None when it is not one (format detection)."""
    try:
        for line in itertools.islice(open_lines(path), 1000):
            if line.strip():
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return None
                return record if isinstance(record, dict) else None
    except GZIP_ERRORS as err:
        raise SourceError(f"{path}: cannot be read ({err})") from None
    return None


def gz_shards(path: Path, kind: str, lines_per_shard: int, max_shards: int) -> tuple[list[Shard], int]:
    """Line-range shards of a gzip file, its lines counted in one decompressing pass.

    A gzip stream cannot be entered in the middle, so byte ranges are impossible: each shard's task
    decompresses from the start and skips to its lines. That is why their number is capped
    (`max_shards`, `sources.JOIN_MAX_SHARDS`): the total work stays a few dozen passes over the file rather than growing with
    its square. A very large manifest reads better decompressed (byte-range shards of bounded size).
    """
    lines, last = 0, b"\n"
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(SCAN_BYTES):
                lines, last = lines + chunk.count(b"\n"), chunk[-1:]
    except GZIP_ERRORS as err:
        raise SourceError(f"{path}: not a readable gzip file ({err})") from None
    total = lines + (last != b"\n")
    shards = [Shard(kind, str(path), lo, min(lo + lines_per_shard, total), lo + 1)
              for lo in range(0, total, lines_per_shard)]
    return coarsen(shards, max_shards), total


def line_shards(path: Path, kind: str, lines_per_shard: int, max_shards: int) -> tuple[list[Shard], int]:
    """Shards of a line-oriented file: byte ranges, or line ranges when it is gzipped."""
    if is_gz(path):
        return gz_shards(path, kind, lines_per_shard, max_shards)
    shards, total, _ = text_shards(path, kind, lines_per_shard)
    return shards, total


def shard_lines(shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its newline) for every line of a text shard, blank ones included."""
    if is_gz(shard.path):  # start/stop are line indices: decompress from the start, skip to them
        with gzip.open(shard.path, "rb") as f:
            for number, line in enumerate(itertools.islice(f, shard.start, shard.stop), start=shard.first_line):
                yield number, line.rstrip(b"\n")
        return
    with open(shard.path, "rb") as f:
        f.seek(shard.start)
        data = f.read(shard.stop - shard.start)
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()  # the empty remainder after the shard's final newline
    yield from enumerate(lines, start=shard.first_line)


def text_lines(shard: Shard) -> Iterator[tuple[int, str | None, dict | None]]:
    """(line number, text, None) per non-blank line of a text shard, or (number, None, its `not_utf8` row)."""
    for number, line in shard_lines(shard):
        if not line.strip():
            continue  # a blank line holds no row (manifests often end with one)
        try:
            yield number, line.decode("utf-8").rstrip("\r"), None
        except UnicodeDecodeError as err:
            yield number, None, raw_row(shard, number, line.decode("utf-8", "backslashreplace"), error="not_utf8",
                                        error_detail=f"line is not UTF-8 ({err.reason} at byte {err.start})")


def json_object(shard: Shard, number: int, text: str) -> tuple[dict | None, dict | None]:
    """A JSONL line as (object, None), or (None, its `malformed_json` row)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, raw_row(shard, number, text, error="malformed_json", error_detail=f"not JSON ({err.msg})")
    if not isinstance(record, dict):
        return None, raw_row(shard, number, text, error="malformed_json",
                             error_detail=f"a JSON {type(record).__name__}, not an object")
    return record, None


def json_lines(shard: Shard) -> Iterator[tuple[int, dict | None, dict | None]]:
    """(line number, object, None) per non-blank JSONL line, or (number, None, the row for a line that is not one)."""
    for number, text, bad in text_lines(shard):
        if bad is not None:
            yield number, None, bad
        else:
            yield number, *json_object(shard, number, text)
