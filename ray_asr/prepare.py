"""One raw row → one training example, or a `Rejected` with its catalogue reason.

This is the single place where a row is judged; `ray-asr validate`, the training pipeline and
evaluation all call it, so they accept and reject exactly the same rows.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np

from ray_asr import audio, labels, windows
from ray_asr.audio import Rejected

# The bad-input catalogue (docs/design.md): every reason a row can be quarantined for.
REASONS = (
    "not_utf8", "malformed_json", "missing_keys", "empty_transcript", "transcript_too_long",
    "missing_file", "empty_file", "corrupt_file", "unsupported_codec", "non_finite_samples", "too_long",
    "unknown_language", "internal_error",
)


def prepare(row: dict, tokenizer, max_duration_s: float) -> tuple[np.ndarray, list[int]]:
    """Checks a raw row (`sources.RAW_SCHEMA`) → `((samples,) float32 16 kHz mono, label ids)`.

    Cheap checks (parse errors, transcript) run before the audio is decoded.
    """
    if row["error"]:
        raise Rejected(row["error"], row["error_detail"])
    text = (row["text"] or "").strip()
    if not text:
        raise Rejected("empty_transcript", "transcript is empty")
    try:
        ids = labels.encode(tokenizer, text, row.get("language"))  # rows built before `language` existed lack it
    except ValueError as err:
        raise Rejected("unknown_language", str(err)) from None
    if not labels.fits(ids):
        raise Rejected("transcript_too_long",
                       f"transcript is {len(ids) + 1} tokens with its prompt, over Whisper's {labels.MAX_TARGET_TOKENS}")
    wave = row_audio(row)
    seconds = len(wave) / audio.SAMPLE_RATE
    if seconds > max_duration_s:
        raise Rejected("too_long", f"clip is {seconds:.1f} s, over data.max_duration_s={max_duration_s:g} "
                                   f"(a row with `segments` is packed into windows instead)")
    return wave, ids


def row_audio(row: dict) -> np.ndarray:
    """A raw row's audio (file or embedded bytes), decoded to 16 kHz mono, cut to the row's segment."""
    wave = audio.load(row["audio_bytes"] if row["audio_bytes"] is not None else row["audio_path"])
    return segment(wave, row.get("offset"), row.get("duration"))  # rows built before segments existed lack them


class Example(NamedTuple):
    """One training example made from a row: a whole clip, or one window of a long recording."""

    id: str
    """The row's id; a window's is `<row id>#<window>`."""
    wave: np.ndarray
    labels: list[int]
    text: str
    segments: list | None
    """The example's timed segments (`windows.Segment`, seconds into `wave`), when the row gave them."""


def examples(row: dict, tokenizer, max_duration_s: float) -> list[Example]:
    """`prepare` for a row, except that a row longer than `max_duration_s` (and 30 s) with timed `segments` is
    packed into windows (`windows.pack`) with timestamped labels instead of being rejected."""
    segments = windows.loads(row.get("segments"))
    if segments is None:
        return [Example(row["id"], *prepare(row, tokenizer, max_duration_s), row["text"].strip(), None)]
    limit = min(max_duration_s, windows.WINDOW_S)
    try:
        wave, ids = prepare(row, tokenizer, max_duration_s=float("inf"))
    except Rejected as err:
        if err.reason != "transcript_too_long":  # a long recording's whole text may not fit; its windows' will
            raise
        wave, ids = row_audio(row), None
    seconds = len(wave) / audio.SAMPLE_RATE
    if seconds <= limit and ids is not None:
        return [Example(row["id"], wave, ids, row["text"].strip(), segments)]
    if tokenizer.timestamp_begin is None:
        raise Rejected("too_long", f"clip is {seconds:.1f} s, and the tokenizer has no timestamp tokens to pack it "
                                   f"into {limit:g} s windows")
    try:
        packed = windows.pack(segments, seconds, limit)
    except ValueError as err:
        raise Rejected("too_long", str(err)) from None
    out = []
    for k, window in enumerate(packed):
        ids = labels.timed_segments(tokenizer, window.segments, row.get("language"))
        if not labels.fits(ids):
            raise Rejected("transcript_too_long", f"window {k} ({window.start:.1f}-{window.end:.1f} s) is "
                                                  f"{len(ids) + 1} tokens, over Whisper's {labels.MAX_TARGET_TOKENS}")
        piece = wave[round(window.start * audio.SAMPLE_RATE) : round(window.end * audio.SAMPLE_RATE)]
        out.append(Example(f"{row['id']}#{k}", piece, ids, window.text, list(window.segments)))
    return out


# How far a segment may end past the decoded audio and still be read (to the audio's end): lhotse allows
# 25 ms, and MP3 decoders disagree by about a frame (26 ms at 44.1 kHz) on a file's length.
SEGMENT_TOLERANCE_S = 0.05


def segment(wave: np.ndarray, offset: float | None, duration: float | None) -> np.ndarray:
    """The part of a decoded 16 kHz file that a row names: `offset` s in, `duration` s long (None: 0, to the end).

    A segment that is empty or lies outside the audio is `empty_file`: the row's audio holds nothing to
    pair with its transcript.
    """
    if offset is None and duration is None:
        return wave
    length = len(wave) / audio.SAMPLE_RATE
    start = offset or 0.0
    end = length if duration is None else start + duration
    if start < 0 or end <= start or start >= length or end > length + SEGMENT_TOLERANCE_S:
        raise Rejected("empty_file", f"segment {start:.3f}-{end:.3f} s is not within the audio, which is {length:.3f} s long")
    return wave[round(start * audio.SAMPLE_RATE) : round(end * audio.SAMPLE_RATE)]


def quarantine_record(row: dict, reason: str, detail: str) -> dict:
    """The quarantine.jsonl line for a rejected row: source, reason and the original row."""
    try:
        original = json.loads(row["raw"])
    except (json.JSONDecodeError, TypeError):
        original = row["raw"]
    return {"id": row["id"], "source": row["source"], "reason": reason, "detail": detail, "row": original}
