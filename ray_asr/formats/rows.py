"""The raw row every format reads into, and the types and helpers all format readers share.

A raw row (`RAW_SCHEMA`) has a stable id and either an audio reference and a transcript or an `error`
code saying why the input row could not be parsed. `Shard` and `SourceError` live here, not in
`ray_asr.sources`, so that format modules can use them without importing it; `sources` re-exports them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ray_asr import windows

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
    ("language", pa.string()),  # the row's `language` (a code such as de, or a name); null = model.language
    ("segments", pa.string()),  # timed segments (`windows.dumps`) from `segments` or `start`/`end`; null = none
    ("speaker", pa.string()),  # the row's `speaker`, for the previous-text prompt; null = unknown
    ("rating", pa.float64()),  # a feedback row's rating of its `hypothesis` (the row's text), in [-1, 1]; null = none
])
AUDIO_KEYS = ("audio", "path", "audio_filepath", "file", "file_name")  # file_name: HF audiofolder metadata
TEXT_KEYS = ("text", "sentence", "transcription", "transcript", "normalized_text",
             "correction")  # correction: a feedback row's (`ray-asr feedback`) corrected transcript


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


def raw_row(shard: Shard, number: int, raw: str, **fields) -> dict:
    """A raw row with id `<file>:<number>`; `fields` set its other columns (the rest are null)."""
    result = {"id": f"{Path(shard.path).name}:{number}", "source": shard.path, "raw": raw, "audio_path": None,
              "audio_bytes": None, "text": None, "error": None, "error_detail": None, "offset": None,
              "duration": None, "language": None, "segments": None, "speaker": None, "rating": None}
    result.update(fields)
    return result


def pick(record: dict, keys: tuple[str, ...]):
    """The first of `keys` the record holds and its value, or (None, None)."""
    for key in keys:
        if key in record:
            return key, record[key]
    return None, None


def from_record(shard: Shard, number: int, raw: str, record: dict, audio_root: Path) -> dict:
    """Normalises one parsed row (manifest line, TSV line or table row) to the raw schema."""
    audio_key, audio = pick(record, AUDIO_KEYS)
    text_key, text = pick(record, TEXT_KEYS)
    fields = {}
    if text_key is None and "rating" in record and "hypothesis" in record:  # rated feedback: its text is the hypothesis
        text_key, text = "hypothesis", record["hypothesis"]
        rating = record["rating"]
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not -1 <= rating <= 1:
            return raw_row(shard, number, raw, error="missing_keys", error_detail=f"rating is {rating!r}, not a number "
                                                                                   f"in [-1, 1]")
        fields["rating"] = float(rating)
    if text_key is None and "hypothesis" in record:  # written by `ray-asr feedback`, not judged yet
        return raw_row(shard, number, raw, error="missing_keys", error_detail="feedback row has neither correction nor "
                                                                              "rating: judge it or delete it")
    missing = [name for name, key in (("audio", audio_key), ("text", text_key)) if key is None]
    if missing:
        return raw_row(shard, number, raw, error="missing_keys", error_detail=f"row has no {' or '.join(missing)} key")
    fields["text"] = text if isinstance(text, str) else None
    language = record.get("language")
    if isinstance(language, str) and language.strip():
        fields["language"] = language.strip()
    speaker = record.get("speaker")
    if isinstance(speaker, (str, int)) and not isinstance(speaker, bool) and str(speaker).strip():
        fields["speaker"] = str(speaker).strip()
    if text is not None and not isinstance(text, str):
        return raw_row(shard, number, raw, error="empty_transcript", error_detail=f"text is {type(text).__name__}, not a string")
    if audio_key != "audio_filepath":  # NeMo's rows have no segments; its `offset` is not a segment start
        try:
            fields["segments"] = windows.dumps(windows.parse(record))
        except ValueError as err:
            return raw_row(shard, number, raw, error="missing_keys", error_detail=str(err))
    if isinstance(audio, dict):  # HF Audio feature: {"bytes": ..., "path": ...}
        if audio.get("bytes"):
            return raw_row(shard, number, raw, audio_bytes=audio["bytes"], **fields)
        audio = audio.get("path")
    if not isinstance(audio, str) or not audio:
        return raw_row(shard, number, raw, error="missing_keys", error_detail=f"{audio_key} is not a file path")
    if audio_key == "audio_filepath":  # NeMo: `offset` and `duration` name the part of the file that is the row
        try:
            fields.update(offset=seconds(record.get("offset"), "offset"),
                          duration=seconds(record.get("duration"), "duration"))
        except ValueError as err:
            return raw_row(shard, number, raw, error="missing_keys", error_detail=str(err))
    return raw_row(shard, number, raw, audio_path=str(audio_root / audio), **fields)


def seconds(value, name: str) -> float | None:
    """A manifest's time in seconds as a float (None stays None); ValueError names a field that is not one."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} is {value!r}, not a number of seconds")
    return float(value)


def table_raw(record: dict) -> str:
    """A table row as quarantine text: embedded audio shows as its path only (never the bytes)."""
    shown = {k: ({"path": v.get("path")} if isinstance(v, dict) else v) for k, v in record.items()}
    return json.dumps(shown, ensure_ascii=False, default=str)


def resolve(path: str, folder: Path, cwd: str) -> str:
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
