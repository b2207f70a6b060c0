"""Kaldi/ESPnet data dirs: `text` (one row per utterance) joined with `wav.scp` and, if present, `segments`.

The dir's `text` is sharded; each read task joins its share with the index files itself, so memory follows
the shard, not the corpus. Audio the dir can only name through a command or an archive offset becomes an
error row rather than being run or unpacked here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

from ray_asr.formats.lines import coarsen, open_lines, text_lines, text_shards
from ray_asr.formats.rows import Shard, SourceError, raw_row, resolve

FILES = ("wav.scp", "text", "segments")
_ARCHIVE_OFFSET = re.compile(r"\.ark:\d+$")  # a Kaldi extended filename: an offset into a Kaldi archive


def shards(folder: Path, lines_per_shard: int, max_shards: int) -> tuple[list[Shard], int]:
    """A Kaldi/ESPnet data dir: shards of `text` (one row per utterance), joined per task with wav.scp/segments.

    Each read task scans `segments` and `wav.scp` once, keeping only the entries its utterances name:
    memory follows the shard, not the corpus, and Kaldi's sorted-file convention is not relied on.
    Shards are capped at `max_shards` (`sources.JOIN_MAX_SHARDS`) so those scans stay a few dozen passes in all.
    """
    folder = folder.absolute()
    missing = [name for name in ("wav.scp", "text") if not (folder / name).is_file()]
    if missing:
        raise SourceError(f"{folder}: a Kaldi data dir needs wav.scp and text; {' and '.join(missing)} missing")
    found, total, _ = text_shards(folder / "text", "kaldi", lines_per_shard)
    cwd = os.getcwd()
    return [replace(s, cwd=cwd) for s in coarsen(found, max_shards)], total


def _index(path: Path, keys: set[str]) -> dict[str, str]:
    """The entries of a Kaldi index file (`key rest-of-line`) whose key is in `keys`; the first of duplicates wins."""
    found: dict[str, str] = {}
    for line in open_lines(path):
        # "replace": a path that is not UTF-8 cannot travel in a string column; it is then reported missing_file
        parts = line.decode("utf-8", "replace").strip().split(maxsplit=1)
        if parts and parts[0] in keys and parts[0] not in found:
            found[parts[0]] = parts[1] if len(parts) > 1 else ""
    return found


def read(shard: Shard) -> list[dict]:
    """A shard of a Kaldi data dir's `text`, joined with the wav.scp (and segments) entries it names."""
    folder = Path(shard.path).parent
    items: list[dict | tuple[int, str, str]] = []  # a finished (error) row, or (line number, utterance, transcript)
    for number, text, bad in text_lines(shard):
        parts = text.strip().split(maxsplit=1) if bad is None else []
        items.append(bad if bad is not None else (number, parts[0], parts[1] if len(parts) > 1 else ""))
    utterances = {item[1] for item in items if isinstance(item, tuple)}
    segments = _index(folder / "segments", utterances) if (folder / "segments").is_file() else None
    recordings = utterances if segments is None else {v.split()[0] for v in segments.values() if v.split()}
    wavs = _index(folder / "wav.scp", recordings)
    return [item if isinstance(item, dict) else _row(shard, *item, segments, wavs) for item in items]


def _row(shard: Shard, number: int, utterance: str, transcript: str, segments: dict | None, wavs: dict) -> dict:
    """One utterance's row: its wav.scp entry (through its segments line, if the dir has segments)."""
    raw = {"utt_id": utterance, "text": transcript}
    folder = Path(shard.path).parent

    def failed(reason: str, detail: str) -> dict:
        return raw_row(shard, number, json.dumps(raw, ensure_ascii=False), error=reason, error_detail=detail)

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
    return raw_row(shard, number, json.dumps(raw, ensure_ascii=False), audio_path=resolve(entry, folder, shard.cwd),
                   text=transcript, offset=offset, duration=duration)
