"""Timed segments of a recording, and long recordings packed into Whisper's 30 s training windows.

A manifest row may carry `segments: [{"start", "end", "text"}, ...]` (seconds into the row's audio), or
`start`/`end` for the one stretch of speech in a clip. Short rows use them for their timestamp labels;
rows longer than a window are cut into windows whose labels hold each segment between timestamp tokens,
as Whisper's own long-form training data was, instead of being rejected as too long.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

WINDOW_S = 30.0  # Whisper's input: 3000 mel frames of 10 ms


@dataclass(frozen=True)
class Segment:
    """Text spoken between two times, in seconds."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Window:
    """A stretch of a recording and the segments in it, their times relative to the window's start."""

    start: float
    end: float
    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)


def _time(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} is {value!r}, not a number of seconds >= 0")
    return float(value)


def parse(record: dict) -> list[Segment] | None:
    """A manifest row's segments: its `segments` list, or one segment from `start`/`end` and its text; None when
    it has neither. ValueError names the first thing wrong."""
    if "segments" in record:
        value = record["segments"]
        if not isinstance(value, list) or not value:
            raise ValueError(f"segments is {type(value).__name__}, not a non-empty list of {{start, end, text}}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise ValueError(f"segments[{i}] is not an object with start, end and a text string")  # noqa: TRY004 (a bad row, one message)
            out.append(Segment(_time(item.get("start"), f"segments[{i}].start"), _time(item.get("end"), f"segments[{i}].end"),
                               item["text"].strip()))
        segments = out
    elif "start" in record and "end" in record and isinstance(record.get("text"), str):
        segments = [Segment(_time(record["start"], "start"), _time(record["end"], "end"), record["text"].strip())]
    else:
        return None
    for i, s in enumerate(segments):
        if s.end <= s.start:
            raise ValueError(f"segment {i} ends ({s.end:g} s) at or before it starts ({s.start:g} s)")
        if i and s.start < segments[i - 1].end - 1e-6:
            raise ValueError(f"segment {i} starts ({s.start:g} s) before segment {i - 1} ends ({segments[i - 1].end:g} s)")
    return segments


def dumps(segments: list[Segment] | None) -> str | None:
    """Segments as the raw row's JSON text (None stays None)."""
    return None if segments is None else json.dumps([[s.start, s.end, s.text] for s in segments], ensure_ascii=False)


def loads(text: str | None) -> list[Segment] | None:
    """`dumps`'s inverse."""
    return None if not text else [Segment(*item) for item in json.loads(text)]


def pack(segments: list[Segment], duration_s: float, window_s: float = WINDOW_S) -> list[Window]:
    """Cuts a recording into windows of at most `window_s` that hold its segments in order.

    A segment that crosses a window's edge goes, text and all, with the side that holds most of it (words
    taken as spread evenly over its time): kept, it ends at the edge and the next window starts where it
    ends; left out, the window stops where it starts and the next window starts there. So every segment's
    text lands in exactly one window, in order, and the windows' texts join back to the recording's.
    A window starts early enough to hold its first segment whole, skipping silence before it. ValueError for a segment longer than a window.
    """
    for s in segments:
        if s.end - s.start > window_s:
            raise ValueError(f"a segment is {s.end - s.start:.1f} s long ({s.start:g}-{s.end:g} s), over the "
                             f"{window_s:g} s window: split it")
    windows, i, start = [], 0, 0.0
    while i < len(segments):
        if segments[i].end > start + window_s:  # after a long silence, or cut off: start at the next segment
            start = segments[i].start
        edge = min(start + window_s, duration_s)
        held, next_start = [], edge
        while i < len(segments) and segments[i].start < edge:
            s = segments[i]
            if s.end <= edge:
                held.append(s)
                i += 1
                continue
            inside = (edge - s.start) / (s.end - s.start)
            if inside >= 0.5 or not held:  # a window must hold something, or packing would not move on
                held.append(Segment(s.start, edge, s.text))
                i, next_start = i + 1, s.end
            else:
                edge = next_start = s.start
            break
        windows.append(Window(start, edge, tuple(Segment(max(0.0, s.start - start), s.end - start, s.text)
                                                 for s in held)))
        start = next_start
    return windows
