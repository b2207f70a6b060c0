"""`ray-asr feedback`: a model's transcripts of some audio, written as feedback rows for a person to judge.

    {"audio": PATH, "hypothesis": "what the model heard"}

The person adds to each row either `correction` (the right transcript: it trains as the reference) or
`rating` (-1 .. 1: it weights the model's own hypothesis, up or down), e.g. in a spreadsheet, and
fine-tunes with `data.feedback: FILE` (`train.objective: ce` or `mwer`). A row given neither is rejected
as `missing_keys` ("judge it or delete it") and quarantined like any bad row, never trained on: delete the
rows left unjudged, or they count against `data.max_rejected_fraction`. `with_reference` writes the
manifest's own transcript as the correction: a stand-in for the person, to check the loop end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ray_asr.sources import SourceError


def inputs(paths: list[str]) -> tuple[list[tuple[str, np.ndarray, str | None]], int]:
    """`(audio path, waveform, reference or None)` of each usable input, and how many could not be read (one line
    each on stderr): one manifest (any source `ray-asr` reads), or audio files."""
    from ray_asr import sources
    from ray_asr.audio import Rejected, load
    from ray_asr.prepare import row_audio

    found, failed = [], 0
    if len(paths) == 1:
        try:
            rows = sources.read_all(paths[0])
        except SourceError:  # an audio file is no source format
            if Path(paths[0]).is_dir() or not Path(paths[0]).exists():
                raise
        else:
            for row in rows:
                try:
                    if row["error"]:
                        raise Rejected(row["error"], row["error_detail"])
                    found.append((row["audio_path"] or row["id"], row_audio(row), row["text"]))
                except Rejected as err:
                    print(f"ray-asr feedback: {row['id']}: {err.reason}: {err.detail}", file=sys.stderr)
                    failed += 1
            return found, failed
    for path in paths:
        try:
            found.append((str(Path(path).resolve()), load(path), None))
        except Rejected as err:
            print(f"ray-asr feedback: {err.detail}", file=sys.stderr)
            failed += 1
    return found, failed


def run(model_dir: str, paths: list[str], out: str, language: str | None = None, batch_size: int = 8,
        with_reference: bool = False) -> int:
    """Writes `out` (JSONL, one row per input, in the inputs' order); returns how many inputs failed."""
    from ray_asr.model import require_folder
    from ray_asr.progress import bar
    from ray_asr.transcribe import Transcriber

    require_folder(model_dir)
    clips, failed = inputs(paths)
    if with_reference and any(reference is None for _, _, reference in clips):
        raise ValueError("--with-reference needs a manifest whose rows have transcripts, not audio files")
    transcriber = Transcriber(model_dir, language)
    rows = []
    with bar(total=len(clips), desc="feedback", unit="clip") as progress:
        for start in range(0, len(clips), batch_size):
            chunk = clips[start : start + batch_size]
            for (path, _, reference), transcript in zip(chunk, transcriber([wave for _, wave, _ in chunk]), strict=True):
                row = {"audio": path, "hypothesis": transcript.text}
                if with_reference:
                    row["correction"] = reference
                rows.append(row)
            progress.update(len(chunk))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {out}: give each a `correction` or a `rating` (-1 .. 1), or delete it, then "
          f"fine-tune with data.feedback={out}")
    return failed
