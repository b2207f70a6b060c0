"""Readers for every input format, as one streaming Ray Data datasource.

A source (JSONL manifest, also NeMo's and gzipped; Common Voice `.tsv`; parquet file; HF `save_to_disk`
folder; HF audiofolder; Kaldi/ESPnet data dir; lhotse cut set or recordings + supervisions; `hf://` hub
dataset, streamed) is planned on the driver into shards (byte ranges of a text file, line ranges of a
gzip file, row ranges of a table, data files of a streamed dataset) and each shard is read by its own
Ray task, so nothing is loaded whole. A row may name a segment of its audio file (`offset`,
`duration`), which `ray_asr.prepare` cuts out after decoding. Every input row becomes one "raw row" with a stable
id; rows that cannot even be parsed (not UTF-8, malformed JSON, missing keys) carry an `error` code
instead of being dropped, so the next stage can quarantine them.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qsl

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
    ("offset", pa.float64()),  # seconds into the audio file where the row's segment starts; null = 0
    ("duration", pa.float64()),  # seconds of the segment; null = to the end of the file
])
AUDIO_KEYS = ("audio", "path", "audio_filepath", "file", "file_name")  # file_name: HF audiofolder metadata
TEXT_KEYS = ("text", "sentence", "transcription", "transcript", "normalized_text")
LINES_PER_SHARD = 128  # manifest lines per read task: small blocks keep the stream flowing
ROWS_PER_SHARD = 256  # table rows per read task (rows may embed audio bytes)
_SCAN_BYTES = 1 << 20
# Read tasks that scan a whole index file (Kaldi wav.scp/segments, lhotse recordings) or decompress a
# gzip file from its start up to their range: capping their number keeps the total work at a few dozen
# passes over the file, whatever its size (each shard then holds more lines: rows/JOIN_MAX_SHARDS).
JOIN_MAX_SHARDS = 64
HF_SCHEME = "hf://"
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz")
AUDIOFOLDER_METADATA = ("metadata.csv", "metadata.jsonl")
KALDI_FILES = ("wav.scp", "text", "segments")
_LHOTSE_SUFFIXES = (".jsonl", ".jsonl.gz")
_GZIP_ERRORS = (OSError, EOFError, zlib.error)  # what a damaged or non-gzip `.gz` raises while read
FORMATS = ("a .jsonl manifest (also NeMo's, or .jsonl.gz), a Common Voice .tsv, a .parquet file, an HF dataset "
           "folder (save_to_disk, or audiofolder with metadata.csv/.jsonl), a Kaldi/ESPnet data dir (wav.scp + "
           "text), a lhotse cut set or recordings + supervisions .jsonl[.gz], or hf://NAME[?split=..&config=..]")


class SourceError(ValueError):
    """The input itself cannot be read (missing, unknown format); the message names it."""


@dataclass(frozen=True)
class Shard:
    """One read task's share of a source."""

    kind: str  # "jsonl" | "tsv" | "csv" | "parquet" | "hf" | "kaldi" | "lhotse_cuts" | "lhotse_pair" | "hf_stream"
    path: str  # the file read (Kaldi: the data dir's `text`; lhotse pair: the supervisions; hf_stream: the hf:// name)
    start: int  # byte offset (text files), line index (gzip files), first row (tables), data file (hf_stream)
    stop: int  # end byte offset, line index or row, exclusive (hf_stream: how many data files there are)
    first_line: int  # 1-based line number of `start` (text files)
    header: tuple[str, ...] = ()  # TSV/CSV column names
    index: str = ""  # the file joined to this one: a lhotse pair's recordings
    cwd: str = ""  # the driver's working directory: Kaldi and lhotse paths may be relative to it


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
    """Shards for a source and its row count (an upper bound for text files: blank lines count).

    Raises `SourceError`, one line naming the source, when it cannot be read at all.
    """
    if isinstance(source, str) and source.startswith(HF_SCHEME):
        return _hf_stream_shards(source)
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: does not exist")
    if path.is_dir():
        return _folder_shards(path)
    if path.name in KALDI_FILES and (path.parent / "wav.scp").is_file():
        return _kaldi_shards(path.parent)  # a file of a Kaldi data dir stands for the dir
    if path.name == "metadata.csv":
        return _audiofolder_shards(path.parent)
    if path.name.lower().endswith(JSONL_SUFFIXES):
        return _jsonl_shards(path)
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        shards, rows, header = _text_shards(path, "tsv")
        if "path" not in header or "sentence" not in header:
            raise SourceError(f"{path}: a Common Voice table needs 'path' and 'sentence' columns, has {', '.join(header)}")
        return shards, rows
    if suffix == ".parquet":
        return _table_shards(path, "parquet")
    raise SourceError(f"{path}: unknown format (use {FORMATS})")



def _folder_shards(path: Path) -> tuple[list[Shard], int]:
    """A folder: HF `save_to_disk`, HF audiofolder, Kaldi data dir or lhotse manifests, told apart by their files."""
    if (path / "dataset_info.json").exists() or (path / "state.json").exists():
        return _table_shards(path, "hf")
    if (path / "dataset_dict.json").exists():
        raise SourceError(f"{path}: holds several splits; name one, e.g. {path / 'train'}")
    if any((path / name).is_file() for name in AUDIOFOLDER_METADATA):
        return _audiofolder_shards(path)
    if (path / "wav.scp").is_file() or (path / "segments").is_file():
        return _kaldi_shards(path)
    supervisions = sorted(p for p in path.glob("*supervisions*") if p.name.endswith(_LHOTSE_SUFFIXES))
    if len(supervisions) > 1:
        raise SourceError(f"{path}: holds several lhotse supervision manifests; name one, e.g. {supervisions[0]} "
                          f"({', '.join(p.name for p in supervisions)})")
    if supervisions:
        return _jsonl_shards(supervisions[0])
    splits = sorted({p.parent.name for name in AUDIOFOLDER_METADATA for p in path.glob(f"*/{name}")})
    if splits:
        raise SourceError(f"{path}: an audiofolder with splits; name one, e.g. {path / splits[0]} ({', '.join(splits)})")
    tsvs = sorted(p.name for p in path.glob("*.tsv"))
    if tsvs:
        raise SourceError(f"{path}: a Common Voice folder; name one of its tables, e.g. {path / 'train.tsv'} ({', '.join(tsvs)})")
    raise SourceError(f"{path}: not a dataset folder (no dataset_info.json, metadata.csv/.jsonl, wav.scp + text "
                      f"or lhotse *supervisions*.jsonl[.gz]; use {FORMATS})")


def _coarsen(shards: list[Shard], limit: int) -> list[Shard]:
    """Merges neighbouring shards so that at most `limit` remain (see `JOIN_MAX_SHARDS`)."""
    size = math.ceil(len(shards) / limit)
    if size <= 1:
        return shards
    return [replace(shards[i], stop=shards[min(i + size, len(shards)) - 1].stop) for i in range(0, len(shards), size)]


def _is_gz(path: str | Path) -> bool:
    return str(path).lower().endswith(".gz")


def _open_lines(path: str | Path) -> Iterator[bytes]:
    """Every line of a whole text file, gzipped or not, without its line end."""
    opener = gzip.open if _is_gz(path) else open
    with opener(path, "rb") as f:
        for line in f:
            yield line.rstrip(b"\n")


def _first_record(path: Path) -> dict | None:
    """The first non-blank line of a JSONL file as an object, or None when it is not one (format detection)."""
    try:
        for line in itertools.islice(_open_lines(path), 1000):
            if line.strip():
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return None
                return record if isinstance(record, dict) else None
    except _GZIP_ERRORS as err:
        raise SourceError(f"{path}: cannot be read ({err})") from None
    return None


def _gz_shards(path: Path, kind: str) -> tuple[list[Shard], int]:
    """Line-range shards of a gzip file, its lines counted in one decompressing pass.

    A gzip stream cannot be entered in the middle, so byte ranges are impossible: each shard's task
    decompresses from the start and skips to its lines. That is why their number is capped
    (`JOIN_MAX_SHARDS`): the total work stays a few dozen passes over the file rather than growing with
    its square. A very large manifest reads better decompressed (byte-range shards of bounded size).
    """
    lines, last = 0, b"\n"
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_SCAN_BYTES):
                lines, last = lines + chunk.count(b"\n"), chunk[-1:]
    except _GZIP_ERRORS as err:
        raise SourceError(f"{path}: not a readable gzip file ({err})") from None
    total = lines + (last != b"\n")
    shards = [Shard(kind, str(path), lo, min(lo + LINES_PER_SHARD, total), lo + 1) for lo in range(0, total, LINES_PER_SHARD)]
    return _coarsen(shards, JOIN_MAX_SHARDS), total


def _line_shards(path: Path, kind: str) -> tuple[list[Shard], int]:
    """Shards of a line-oriented file: byte ranges, or line ranges when it is gzipped."""
    if _is_gz(path):
        return _gz_shards(path, kind)
    shards, total, _ = _text_shards(path, kind)
    return shards, total


def _jsonl_shards(path: Path) -> tuple[list[Shard], int]:
    """A JSONL file: a lhotse cut set or recordings/supervisions (told by their first line), else a manifest."""
    kind = _lhotse_kind(_first_record(path))
    if kind is None:
        return _line_shards(path, "jsonl")  # a manifest: shards and rows exactly as before lhotse support
    path = path.absolute()  # lhotse audio paths may be relative to the manifest's folder, on any node
    if kind == "cuts":
        shards, _ = _line_shards(path, "lhotse_cuts")
        return [replace(s, cwd=os.getcwd()) for s in shards], _count_cut_rows(path)
    if kind == "supervisions":
        return _lhotse_pair_shards(path, _lhotse_partner(path, "recordings"))
    return _lhotse_pair_shards(_lhotse_partner(path, "supervisions"), path)


def _lhotse_kind(record: dict | None) -> str | None:
    """"cuts", "supervisions" or "recordings" for a lhotse manifest's first line; None for a plain manifest.

    A line with an audio key (`audio`, `path`, ...) is a plain manifest's, whatever else it holds, so
    every manifest read before lhotse support is read exactly as before.
    """
    if not isinstance(record, dict) or any(key in record for key in AUDIO_KEYS):
        return None
    if str(record.get("type", "")).endswith("Cut") or ("recording" in record and "supervisions" in record):
        return "cuts"
    if {"recording_id", "start", "duration"} <= record.keys():
        return "supervisions"
    if {"sources", "sampling_rate"} <= record.keys():
        return "recordings"
    return None


def _lhotse_partner(path: Path, want: str) -> Path:
    """The other half of a lhotse pair: the same name with "supervisions" ⇄ "recordings", else the only one beside it."""
    have = "supervisions" if want == "recordings" else "recordings"
    if have in path.name:
        at = path.name.rfind(have)
        partner = path.with_name(path.name[:at] + want + path.name[at + len(have):])
        if partner.is_file():
            return partner
    candidates = sorted(p for p in path.parent.glob(f"*{want}*") if p.name.endswith(_LHOTSE_SUFFIXES))
    if len(candidates) == 1:
        return candidates[0]
    found = f"found {', '.join(p.name for p in candidates)}" if candidates else "found none"
    raise SourceError(f"{path}: lhotse {have} need their {want} manifest (*{want}*.jsonl[.gz]) beside them; {found}")


def _lhotse_pair_shards(supervisions: Path, recordings: Path) -> tuple[list[Shard], int]:
    """Shards of the supervisions; each read task joins its share with the recordings it names.

    The recordings file is scanned by each task, keeping only the recordings its supervisions name, so a
    task's memory follows its shard, not the corpus; shards are capped at `JOIN_MAX_SHARDS` for that scan.
    """
    if _lhotse_kind(_first_record(recordings)) != "recordings":
        raise SourceError(f"{recordings}: not a lhotse recordings manifest (its first line has no sources/sampling_rate)")
    shards, total = _line_shards(supervisions, "lhotse_pair")
    cwd = os.getcwd()
    return [replace(s, index=str(recordings.absolute()), cwd=cwd) for s in _coarsen(shards, JOIN_MAX_SHARDS)], total


def _count_cut_rows(path: Path) -> int:
    """Rows of a cut set: one per supervision (a cut may hold several), one per unparseable or empty cut.

    Parses every line on the driver: lines would undercount a long recording's cut many times over,
    and the count sets the learning-rate schedule.
    """
    rows = 0
    try:
        for line in _open_lines(path):
            if line.strip():
                try:
                    cut = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    cut = None
                supervisions = cut.get("supervisions") if isinstance(cut, dict) else None
                rows += max(1, len(supervisions) if isinstance(supervisions, list) else 0)
    except _GZIP_ERRORS as err:
        raise SourceError(f"{path}: cannot be read ({err})") from None
    return rows


def _audiofolder_shards(folder: Path) -> tuple[list[Shard], int]:
    """An HF audiofolder: `metadata.csv` or `metadata.jsonl` whose `file_name` is relative to the folder."""
    folder = folder.absolute()
    present = [folder / name for name in AUDIOFOLDER_METADATA if (folder / name).is_file()]
    if len(present) > 1:
        raise SourceError(f"{folder}: holds both metadata.csv and metadata.jsonl; keep one")
    metadata = present[0]
    if metadata.suffix == ".jsonl":
        columns = tuple((_first_record(metadata) or {}).keys())
        shards, total, _ = _text_shards(metadata, "jsonl")
    else:
        shards, total = _csv_shards(metadata)
        columns = shards[0].header if shards else _csv_header(metadata)
    if "file_name" not in columns or not any(key in columns for key in TEXT_KEYS):
        raise SourceError(f"{metadata}: an audiofolder needs a file_name column and a text column "
                          f"({', '.join(TEXT_KEYS)}); has {', '.join(columns) or 'none'}")
    return shards, total


def _csv_header(path: Path) -> tuple[str, ...]:
    with open(path, "rb") as f:
        head = f.readline().decode("utf-8-sig", "replace").rstrip("\r\n")
    return tuple(next(csv.reader([head]), []))


def _csv_shards(path: Path) -> tuple[list[Shard], int]:
    """Splits a `metadata.csv` between records, counting them in one sequential scan.

    A transcript may hold a newline inside quotes, so a newline ends a record only where the quotes
    since the record's start balance (CSV writes a quote inside a field as two).
    """
    header = _csv_header(path)
    shards, records, quoted = [], 0, False
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
            if records % LINES_PER_SHARD == 0:
                shards.append(Shard("csv", str(path), start, offset, first_line, header))
                start, first_line = offset, line
    if start < offset:
        shards.append(Shard("csv", str(path), start, offset, first_line, header))
    return shards, records + quoted  # an unclosed quote still ends in one (bad) record


def _kaldi_shards(folder: Path) -> tuple[list[Shard], int]:
    """A Kaldi/ESPnet data dir: shards of `text` (one row per utterance), joined per task with wav.scp/segments.

    Each read task scans `segments` and `wav.scp` once, keeping only the entries its utterances name:
    memory follows the shard, not the corpus, and Kaldi's sorted-file convention is not relied on.
    Shards are capped at `JOIN_MAX_SHARDS` so those scans stay a few dozen passes in all.
    """
    folder = folder.absolute()
    missing = [name for name in ("wav.scp", "text") if not (folder / name).is_file()]
    if missing:
        raise SourceError(f"{folder}: a Kaldi data dir needs wav.scp and text; {' and '.join(missing)} missing")
    shards, total, _ = _text_shards(folder / "text", "kaldi")
    cwd = os.getcwd()
    return [replace(s, cwd=cwd) for s in _coarsen(shards, JOIN_MAX_SHARDS)], total


def _parse_hf(spec: str) -> tuple[str, str, str | None]:
    """`hf://NAME?split=..&config=..` → (name, split, config); split defaults to train."""
    name, _, query = spec[len(HF_SCHEME):].partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - {"split", "config"})
    if not name or unknown:
        raise SourceError(f"{spec}: expected hf://NAME[?split=SPLIT&config=CONFIG]"
                          + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    return name, params.get("split") or "train", params.get("config") or None


def _open_hf_stream(spec: str):
    """The split of an `hf://` source as a streaming `IterableDataset` (nothing downloaded up front)."""
    name, split, config = _parse_hf(spec)
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # noqa: BLE001 (hub, network, files or builder: any of them means the source is unreadable)
        message = (str(err).strip().splitlines() or [""])[0]
        raise SourceError(f"{spec}: cannot be streamed ({type(err).__name__}: {message})") from None


def _hf_stream_shards(spec: str) -> tuple[list[Shard], int]:
    """One shard per data file of the stream (`IterableDataset.n_shards`): streams cannot seek to a row.

    The count is the dataset card's when it records one (hub datasets usually do); otherwise one
    streamed pass on the driver counts the rows, because the count sets the learning-rate schedule and the
    rejected-share limit. For a local audiofolder that pass reads only the metadata file; for a hub
    dataset without a recorded count it downloads the split once.
    """
    name, split, _ = _parse_hf(spec)
    if Path(name).is_dir():  # a local folder: named absolutely, so read tasks find it whatever their directory
        spec = HF_SCHEME + str(Path(name).absolute()) + spec[len(HF_SCHEME) + len(name):]
    ds = _open_hf_stream(spec)
    splits = ds.info.splits or {}
    known = splits[split].num_examples if split in splits else None
    total = known or sum(batch.num_rows for batch in ds.with_format("arrow").iter(batch_size=1000))
    files = max(1, ds.n_shards)
    return [Shard("hf_stream", spec, k, files, 0) for k in range(files)], total


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
           "audio_bytes": None, "text": None, "error": None, "error_detail": None, "offset": None, "duration": None}
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
    if audio_key == "audio_filepath":  # NeMo: `offset` and `duration` name the part of the file that is the row
        try:
            fields.update(offset=_seconds(record.get("offset"), "offset"),
                          duration=_seconds(record.get("duration"), "duration"))
        except ValueError as err:
            return _row(shard, number, raw, error="missing_keys", error_detail=str(err))
    return _row(shard, number, raw, audio_path=str(audio_root / audio), **fields)


def _seconds(value, name: str) -> float | None:
    """A manifest's time in seconds as a float (None stays None); ValueError names a field that is not one."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} is {value!r}, not a number of seconds")
    return float(value)


def _shard_lines(shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its newline) for every line of a text shard, blank ones included."""
    if _is_gz(shard.path):  # start/stop are line indices: decompress from the start, skip to them
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


def _text_lines(shard: Shard) -> Iterator[tuple[int, str | None, dict | None]]:
    """(line number, text, None) per non-blank line of a text shard, or (number, None, its `not_utf8` row)."""
    for number, line in _shard_lines(shard):
        if not line.strip():
            continue  # a blank line holds no row (manifests often end with one)
        try:
            yield number, line.decode("utf-8").rstrip("\r"), None
        except UnicodeDecodeError as err:
            yield number, None, _row(shard, number, line.decode("utf-8", "backslashreplace"), error="not_utf8",
                                     error_detail=f"line is not UTF-8 ({err.reason} at byte {err.start})")


def _json_object(shard: Shard, number: int, text: str) -> tuple[dict | None, dict | None]:
    """A JSONL line as (object, None), or (None, its `malformed_json` row)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, _row(shard, number, text, error="malformed_json", error_detail=f"not JSON ({err.msg})")
    if not isinstance(record, dict):
        return None, _row(shard, number, text, error="malformed_json",
                          error_detail=f"a JSON {type(record).__name__}, not an object")
    return record, None


def _json_lines(shard: Shard) -> Iterator[tuple[int, dict | None, dict | None]]:
    """(line number, object, None) per non-blank JSONL line, or (number, None, the row for a line that is not one)."""
    for number, text, bad in _text_lines(shard):
        if bad is not None:
            yield number, None, bad
        else:
            yield number, *_json_object(shard, number, text)


def _read_text_shard(shard: Shard) -> list[dict]:
    folder = Path(shard.path).parent
    audio_root = folder / "clips" if shard.kind == "tsv" else folder
    rows = []
    for number, text, bad in _text_lines(shard):
        if bad is not None:
            rows.append(bad)
            continue
        if shard.kind == "tsv":
            values = next(csv.reader([text], delimiter="\t", quoting=csv.QUOTE_NONE), [])
            if len(values) < len(shard.header):
                rows.append(_row(shard, number, text, error="missing_keys",
                                 error_detail=f"{len(values)} columns, header has {len(shard.header)}"))
                continue
            record = dict(zip(shard.header, values))
        else:
            record, bad = _json_object(shard, number, text)
            if bad is not None:
                rows.append(bad)
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
    return [_from_record(shard, shard.start + offset, _table_raw(record), record, audio_root)
            for offset, record in enumerate(table.to_pylist())]


def _table_raw(record: dict) -> str:
    """A table row as quarantine text: embedded audio shows as its path only (never the bytes)."""
    shown = {k: ({"path": v.get("path")} if isinstance(v, dict) else v) for k, v in record.items()}
    return json.dumps(shown, ensure_ascii=False, default=str)


def _resolve(path: str, folder: Path, cwd: str) -> str:
    """An audio path from an index file (Kaldi wav.scp, lhotse recording) made absolute.

    Absolute paths stay. A relative one is taken beside the index file when the file is there (a
    self-contained data dir), else relative to the working directory `plan` ran in: Kaldi recipes write
    paths relative to the recipe dir they run from, and lhotse relative to where it was run.
    """
    if Path(path).is_absolute():
        return path
    if (folder / path).exists():
        return str(folder / path)
    return str(Path(cwd or os.getcwd()) / path)


def _read_csv_shard(shard: Shard) -> list[dict]:
    """An audiofolder `metadata.csv` shard: one row per CSV record (quoted newlines included)."""
    rows, record, quoted = [], [], False
    for number, line in _shard_lines(shard):
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
        return [_row(shard, number, data.decode("utf-8", "backslashreplace"), error="not_utf8",
                     error_detail=f"record is not UTF-8 ({err.reason} at byte {err.start})")]
    values = next(csv.reader(io.StringIO(text)), [])
    if len(values) < len(shard.header):
        return [_row(shard, number, text, error="missing_keys",
                     error_detail=f"{len(values)} columns, header has {len(shard.header)}")]
    return [_from_record(shard, number, text, dict(zip(shard.header, values)), Path(shard.path).parent)]


_ARCHIVE_OFFSET = re.compile(r"\.ark:\d+$")  # a Kaldi extended filename: an offset into a Kaldi archive


def _index(path: Path, keys: set[str]) -> dict[str, str]:
    """The entries of a Kaldi index file (`key rest-of-line`) whose key is in `keys`; the first of duplicates wins."""
    found: dict[str, str] = {}
    for line in _open_lines(path):
        # "replace": a path that is not UTF-8 cannot travel in a string column; it is then reported missing_file
        parts = line.decode("utf-8", "replace").strip().split(maxsplit=1)
        if parts and parts[0] in keys and parts[0] not in found:
            found[parts[0]] = parts[1] if len(parts) > 1 else ""
    return found


def _read_kaldi_shard(shard: Shard) -> list[dict]:
    """A shard of a Kaldi data dir's `text`, joined with the wav.scp (and segments) entries it names."""
    folder = Path(shard.path).parent
    items: list[dict | tuple[int, str, str]] = []  # a finished (error) row, or (line number, utterance, transcript)
    for number, text, bad in _text_lines(shard):
        parts = text.strip().split(maxsplit=1) if bad is None else []
        items.append(bad if bad is not None else (number, parts[0], parts[1] if len(parts) > 1 else ""))
    utterances = {item[1] for item in items if isinstance(item, tuple)}
    segments = _index(folder / "segments", utterances) if (folder / "segments").is_file() else None
    recordings = utterances if segments is None else {v.split()[0] for v in segments.values() if v.split()}
    wavs = _index(folder / "wav.scp", recordings)
    return [item if isinstance(item, dict) else _kaldi_row(shard, *item, segments, wavs) for item in items]


def _kaldi_row(shard: Shard, number: int, utterance: str, transcript: str, segments: dict | None,
               wavs: dict) -> dict:
    """One utterance's row: its wav.scp entry (through its segments line, if the dir has segments)."""
    raw = {"utt_id": utterance, "text": transcript}

    def failed(reason: str, detail: str) -> dict:
        return _row(shard, number, json.dumps(raw, ensure_ascii=False), error=reason, error_detail=detail)

    recording, offset, duration = utterance, None, None
    if segments is not None:
        raw["segments"] = line = segments.get(utterance)
        if line is None:
            return failed("missing_keys", f"utterance {utterance} has no line in segments")
        fields = line.split()
        try:
            recording, start, end = fields[0], float(fields[1]), float(fields[2])
        except (IndexError, ValueError):
            return failed("missing_keys", f"segments line of {utterance} is not 'rec_id start end' ({line})")
        offset, duration = start, (end - start if end >= 0 else None)  # Kaldi: an end of -1 is the recording's end
    raw["wav.scp"] = entry = wavs.get(recording)
    if entry is None:
        return failed("missing_keys", f"recording {recording} has no audio: no line in wav.scp")
    if entry.endswith("|"):
        return failed("unsupported_codec", f"wav.scp entry of {recording} is a piped command ({entry}); a piped "
                                           "wav.scp entry needs to be written out to a file first (and listed by its path)")
    if _ARCHIVE_OFFSET.search(entry):
        return failed("unsupported_codec", f"wav.scp entry of {recording} is an offset into a Kaldi archive ({entry}); "
                                           "write it out to a file first")
    return _row(shard, number, json.dumps(raw, ensure_ascii=False), audio_path=_resolve(entry, Path(shard.path).parent,
                shard.cwd), text=transcript, offset=offset, duration=duration)


def _lhotse_audio(recording: dict, folder: Path, cwd: str) -> tuple[str | None, tuple[str, str] | None]:
    """A lhotse recording's audio file as (absolute path, None), or (None, (reason, detail)) when it cannot be read.

    Only `file` sources are read; a recording with several (one file per channel) is read from its first.
    """
    name = recording.get("id")
    sources = recording.get("sources") or []
    source = sources[0] if isinstance(sources, list) and sources and isinstance(sources[0], dict) else None
    if source is None or not isinstance(source.get("source"), str):
        return None, ("missing_keys", f"recording {name} has no audio source")
    if source.get("type") != "file":
        kind = source.get("type")
        return None, ("unsupported_codec",
                      f"recording {name} is a lhotse {kind!r} source; only 'file' sources are read (write it out first)")
    if recording.get("transforms"):  # speed perturbation, resampling...: times would not match the file's
        return None, ("unsupported_codec", f"recording {name} has lhotse transforms, which are not applied here")
    return _resolve(source["source"], folder, cwd), None


def _lhotse_row(shard: Shard, number: int, raw: dict, supervision, audio: tuple, cut_start: float = 0.0,
                **fields) -> dict:
    """A supervision's row: its text and its segment (`start`, `duration`) of the recording's audio file."""
    text_raw = json.dumps(raw, ensure_ascii=False, default=str)
    path, problem = audio
    if problem is not None:
        return _row(shard, number, text_raw, error=problem[0], error_detail=problem[1], **fields)
    if not isinstance(supervision, dict):
        return _row(shard, number, text_raw, error="missing_keys", error_detail="supervision is not an object", **fields)
    text = supervision.get("text")
    if text is not None and not isinstance(text, str):
        return _row(shard, number, text_raw, error="empty_transcript",
                    error_detail=f"text is {type(text).__name__}, not a string", **fields)
    try:
        start, duration = _seconds(supervision.get("start"), "start"), _seconds(supervision.get("duration"), "duration")
        if start is None or duration is None:
            raise ValueError("supervision has no start or duration")
    except ValueError as err:
        return _row(shard, number, text_raw, error="missing_keys", error_detail=str(err), **fields)
    return _row(shard, number, text_raw, audio_path=path, text=text, offset=cut_start + start, duration=duration,
                **fields)


def _read_cuts_shard(shard: Shard) -> list[dict]:
    """A shard of a lhotse cut set: one row per supervision, its `start` relative to its cut's.

    Ids are `<file>:<line>`, and `<file>:<line>.<k>` for the k-th supervision of a cut with several.
    """
    folder, name, rows = Path(shard.path).parent, Path(shard.path).name, []
    for number, cut, bad in _json_lines(shard):
        if bad is not None:
            rows.append(bad)
            continue
        supervisions, recording = cut.get("supervisions"), cut.get("recording")
        if not isinstance(recording, dict):
            rows.append(_row(shard, number, json.dumps({"cut": cut.get("id"), "type": cut.get("type")}),
                             error="missing_keys", error_detail=f"cut {cut.get('id')} has no recording (a "
                             f"{cut.get('type', 'cut')}; only MonoCuts with a recording are read)"))
            continue
        if not isinstance(supervisions, list) or not supervisions:
            rows.append(_row(shard, number, json.dumps({"cut": cut.get("id"), "recording": recording.get("id")}),
                             error="missing_keys", error_detail=f"cut {cut.get('id')} has no supervision (no transcript)"))
            continue
        audio = _lhotse_audio(recording, folder, shard.cwd)
        try:
            cut_start = _seconds(cut.get("start"), "cut start") or 0.0
        except ValueError as err:
            audio = (None, ("missing_keys", str(err)))
            cut_start = 0.0
        for k, supervision in enumerate(supervisions, start=1):
            raw = {"cut": cut.get("id"), "recording": recording.get("id"), "supervision": supervision}
            row_id = f"{name}:{number}" + (f".{k}" if len(supervisions) > 1 else "")
            rows.append(_lhotse_row(shard, number, raw, supervision, audio, cut_start, id=row_id))
    return rows


def _read_pair_shard(shard: Shard) -> list[dict]:
    """A shard of lhotse supervisions, joined with the recordings (`shard.index`) it names."""
    items = list(_json_lines(shard))
    wanted = {str(record.get("recording_id")) for _, record, _ in items if record is not None}
    recordings: dict[str, dict] = {}
    for line in _open_lines(shard.index):  # the whole recordings file, keeping only this shard's
        try:
            recording = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # an unreadable recording: its supervisions report it missing
        if isinstance(recording, dict) and str(recording.get("id")) in wanted:
            recordings.setdefault(str(recording["id"]), recording)
    folder, rows = Path(shard.index).parent, []
    for number, supervision, bad in items:
        if bad is not None:
            rows.append(bad)
            continue
        recording = recordings.get(str(supervision.get("recording_id")))
        audio = (_lhotse_audio(recording, folder, shard.cwd) if recording is not None else
                 (None, ("missing_keys", f"recording {supervision.get('recording_id')} is not in {Path(shard.index).name}")))
        rows.append(_lhotse_row(shard, number, supervision, supervision, audio))
    return rows


def _read_hf_stream_shard(shard: Shard) -> list[dict]:
    """One data file of an `hf://` stream, as arrow (audio undecoded: the Audio feature's bytes and path).

    Ids are `<name>:<split>:<data file>.<row in it>`: a stream cannot tell a row's global number.
    """
    name, split, config = _parse_hf(shard.path)
    ds = _open_hf_stream(shard.path)
    if shard.stop > 1:
        ds = ds.shard(num_shards=shard.stop, index=shard.start)
    local = Path(name).is_dir()
    label = f"{Path(name).name if local else name}{'/' + config if config else ''}:{split}:{shard.start}"
    rows, number = [], 0
    for batch in ds.with_format("arrow").iter(batch_size=ROWS_PER_SHARD):
        for record in batch.to_pylist():
            row = _from_record(shard, number, _table_raw(record), record, Path(name) if local else Path())
            rows.append({**row, "id": f"{label}.{number}"})
            number += 1
    return rows


_READERS = {"jsonl": _read_text_shard, "tsv": _read_text_shard, "csv": _read_csv_shard, "parquet": _read_table_shard,
            "hf": _read_table_shard, "kaldi": _read_kaldi_shard, "lhotse_cuts": _read_cuts_shard,
            "lhotse_pair": _read_pair_shard, "hf_stream": _read_hf_stream_shard}


def read_shard(shard: Shard) -> pa.Table:
    """Reads one shard into a table of raw rows (`RAW_SCHEMA`)."""
    return pa.Table.from_pylist(_READERS[shard.kind](shard), schema=RAW_SCHEMA)


def read_all(source: str | Path) -> list[dict]:
    """Every raw row of a source, in order, without Ray (small sources, tests, evaluation)."""
    shards, _ = plan(source)
    return [row for shard in shards for row in read_shard(shard).to_pylist()]
