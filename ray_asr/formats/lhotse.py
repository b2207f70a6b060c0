"""lhotse manifests: a cut set, or recordings + supervisions, as `.jsonl[.gz]`; one row per supervision.

A JSONL file is told to be lhotse's by its first line (`kind`); a plain manifest never is. A cut set is
read line by line; supervisions are joined per read task with the recordings they name. Only `file`
audio sources without transforms are read; anything else becomes an error row.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from ray_asr.formats.lines import GZIP_ERRORS, coarsen, first_record, json_lines, line_shards, open_lines
from ray_asr.formats.rows import AUDIO_KEYS, Shard, SourceError, raw_row, resolve, seconds

SUFFIXES = (".jsonl", ".jsonl.gz")


def kind(record: dict | None) -> str | None:
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


def shards(path: Path, manifest: str, lines_per_shard: int, max_shards: int) -> tuple[list[Shard], int]:
    """Shards of a lhotse manifest of kind `manifest` (see `kind`): a cut set, or either half of a pair."""
    path = path.absolute()  # lhotse audio paths may be relative to the manifest's folder, on any node
    if manifest == "cuts":
        found, _ = line_shards(path, "lhotse_cuts", lines_per_shard, max_shards)
        return [replace(s, cwd=os.getcwd()) for s in found], _count_cut_rows(path)
    if manifest == "supervisions":
        return _pair_shards(path, _partner(path, "recordings"), lines_per_shard, max_shards)
    return _pair_shards(_partner(path, "supervisions"), path, lines_per_shard, max_shards)


def _partner(path: Path, want: str) -> Path:
    """The other half of a lhotse pair: the same name with "supervisions" ⇄ "recordings", else the only one beside it."""
    have = "supervisions" if want == "recordings" else "recordings"
    if have in path.name:
        at = path.name.rfind(have)
        partner = path.with_name(path.name[:at] + want + path.name[at + len(have):])
        if partner.is_file():
            return partner
    candidates = sorted(p for p in path.parent.glob(f"*{want}*") if p.name.endswith(SUFFIXES))
    if len(candidates) == 1:
        return candidates[0]
    found = f"found {', '.join(p.name for p in candidates)}" if candidates else "found none"
    raise SourceError(f"{path}: lhotse {have} need their {want} manifest (*{want}*.jsonl[.gz]) beside them; {found}")


def _pair_shards(supervisions: Path, recordings: Path, lines_per_shard: int,
                 max_shards: int) -> tuple[list[Shard], int]:
    """Shards of the supervisions; each read task joins its share with the recordings it names.

    The recordings file is scanned by each task, keeping only the recordings its supervisions name, so a
    task's memory follows its shard, not the corpus; shards are capped at `max_shards`
    (`sources.JOIN_MAX_SHARDS`) for that scan.
    """
    if kind(first_record(recordings)) != "recordings":
        raise SourceError(f"{recordings}: not a lhotse recordings manifest (its first line has no sources/sampling_rate)")
    found, total = line_shards(supervisions, "lhotse_pair", lines_per_shard, max_shards)
    cwd = os.getcwd()
    return [replace(s, index=str(recordings.absolute()), cwd=cwd) for s in coarsen(found, max_shards)], total


def _count_cut_rows(path: Path) -> int:
    """Rows of a cut set: one per supervision (a cut may hold several), one per unparseable or empty cut.

    Parses every line on the driver: lines would undercount a long recording's cut many times over,
    and the count sets the learning-rate schedule.
    """
    rows = 0
    try:
        for line in open_lines(path):
            if line.strip():
                try:
                    cut = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    cut = None
                supervisions = cut.get("supervisions") if isinstance(cut, dict) else None
                rows += max(1, len(supervisions) if isinstance(supervisions, list) else 0)
    except GZIP_ERRORS as err:
        raise SourceError(f"{path}: cannot be read ({err})") from None
    return rows


def _audio(recording: dict, folder: Path, cwd: str) -> tuple[str | None, tuple[str, str] | None]:
    """A lhotse recording's audio file as (absolute path, None), or (None, (reason, detail)) when it cannot be read.

    Only `file` sources are read; a recording with several (one file per channel) is read from its first.
    """
    name = recording.get("id")
    sources = recording.get("sources") or []
    source = sources[0] if isinstance(sources, list) and sources and isinstance(sources[0], dict) else None
    if source is None or not isinstance(source.get("source"), str):
        return None, ("missing_keys", f"recording {name} has no audio source")
    if source.get("type") != "file":
        source_type = source.get("type")
        return None, ("unsupported_codec",
                      f"recording {name} is a lhotse {source_type!r} source; only 'file' sources are read (write it out first)")
    if recording.get("transforms"):  # speed perturbation, resampling...: times would not match the file's
        return None, ("unsupported_codec", f"recording {name} has lhotse transforms, which are not applied here")
    return resolve(source["source"], folder, cwd), None


def _row(shard: Shard, number: int, raw: dict, supervision, audio: tuple, cut_start: float = 0.0, **fields) -> dict:
    """A supervision's row: its text and its segment (`start`, `duration`) of the recording's audio file."""
    text_raw = json.dumps(raw, ensure_ascii=False, default=str)
    path, problem = audio
    if problem is not None:
        return raw_row(shard, number, text_raw, error=problem[0], error_detail=problem[1], **fields)
    if not isinstance(supervision, dict):
        return raw_row(shard, number, text_raw, error="missing_keys", error_detail="supervision is not an object",
                       **fields)
    text = supervision.get("text")
    if text is not None and not isinstance(text, str):
        return raw_row(shard, number, text_raw, error="empty_transcript",
                       error_detail=f"text is {type(text).__name__}, not a string", **fields)
    try:
        start, duration = seconds(supervision.get("start"), "start"), seconds(supervision.get("duration"), "duration")
        if start is None or duration is None:
            raise ValueError("supervision has no start or duration")
    except ValueError as err:
        return raw_row(shard, number, text_raw, error="missing_keys", error_detail=str(err), **fields)
    return raw_row(shard, number, text_raw, audio_path=path, text=text, offset=cut_start + start, duration=duration,
                   **fields)


def read_cuts(shard: Shard) -> list[dict]:
    """A shard of a lhotse cut set: one row per supervision, its `start` relative to its cut's.

    Ids are `<file>:<line>`, and `<file>:<line>.<k>` for the k-th supervision of a cut with several.
    """
    folder, name, rows = Path(shard.path).parent, Path(shard.path).name, []
    for number, cut, bad in json_lines(shard):
        if bad is not None:
            rows.append(bad)
            continue
        supervisions, recording = cut.get("supervisions"), cut.get("recording")
        if not isinstance(recording, dict):
            rows.append(raw_row(shard, number, json.dumps({"cut": cut.get("id"), "type": cut.get("type")}),
                                error="missing_keys", error_detail=f"cut {cut.get('id')} has no recording (a "
                                f"{cut.get('type', 'cut')}; only MonoCuts with a recording are read)"))
            continue
        if not isinstance(supervisions, list) or not supervisions:
            rows.append(raw_row(shard, number, json.dumps({"cut": cut.get("id"), "recording": recording.get("id")}),
                                error="missing_keys",
                                error_detail=f"cut {cut.get('id')} has no supervision (no transcript)"))
            continue
        audio = _audio(recording, folder, shard.cwd)
        try:
            cut_start = seconds(cut.get("start"), "cut start") or 0.0
        except ValueError as err:
            audio = (None, ("missing_keys", str(err)))
            cut_start = 0.0
        for k, supervision in enumerate(supervisions, start=1):
            raw = {"cut": cut.get("id"), "recording": recording.get("id"), "supervision": supervision}
            row_id = f"{name}:{number}" + (f".{k}" if len(supervisions) > 1 else "")
            rows.append(_row(shard, number, raw, supervision, audio, cut_start, id=row_id))
    return rows


def read_pair(shard: Shard) -> list[dict]:
    """A shard of lhotse supervisions, joined with the recordings (`shard.index`) it names."""
    items = list(json_lines(shard))
    wanted = {str(record.get("recording_id")) for _, record, _ in items if record is not None}
    recordings: dict[str, dict] = {}
    for line in open_lines(shard.index):  # the whole recordings file, keeping only this shard's
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
        audio = (_audio(recording, folder, shard.cwd) if recording is not None else
                 (None, ("missing_keys", f"recording {supervision.get('recording_id')} is not in {Path(shard.index).name}")))
        rows.append(_row(shard, number, supervision, supervision, audio))
    return rows
