"""`ray-asr transcribe`: audio files of any length, rate, channel count and soundfile format → text with timestamps.

Recordings longer than Whisper's 30 s window go through Whisper's own sequential long-form decoding
(transformers' `generate` on the whole log-mel): each window is decoded with timestamps and the next
window starts at the last complete segment's end, so a word cut by a window edge is decoded again
whole in the next window rather than split or repeated. Files are sorted by length and batched, so a
folder of short clips decodes in batches and long ones together.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ray_asr.constants import CHUNK_LENGTH_S, SAMPLE_RATE

SUFFIX = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt"}


@dataclass
class Segment:
    start: float
    """Seconds from the start of the file."""
    end: float
    text: str


@dataclass
class Transcript:
    text: str
    segments: list[Segment] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"text": self.text, "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in self.segments]}


class Transcriber:
    """One Whisper model ready to decode (GPU when present, fp16 there), with its prompt ids."""

    def __init__(self, model_dir: str, language: str | None = None, prompt: str | None = None, beam_size: int = 1,
                 model=None):
        """`model`: one already loaded (training's own, decoded in place, as it is); `model_dir` then gives its
        tokenizer and feature extractor."""
        import torch
        from transformers import WhisperProcessor
        from transformers.utils import logging as hf_logging

        from ray_asr import labels, vocabulary
        from ray_asr import model as model_lib

        hf_logging.set_verbosity_error()  # generate's notes on its own defaults, once per call otherwise
        if model is not None:
            self.model, self.device = model, next(model.parameters()).device.type
        else:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model = model_lib.load(model_dir).eval().to(self.device)
            if self.device == "cuda":
                self.model = self.model.half()
        self.processor = WhisperProcessor.from_pretrained(model_dir)
        config = self.model.generation_config
        self.language = labels.language_code(language or config.language or "en")
        self.task = config.task or "transcribe"
        self.beam_size = beam_size
        self.prompt_ids = None
        if prompt:
            tokenizer = labels.load_tokenizer(model_dir, self.language, self.task)
            self.prompt_ids = torch.tensor(vocabulary.prompt_ids(tokenizer.backend, prompt))

    def features(self, waves: list[np.ndarray]) -> dict:
        """Log-mels: padded to 30 s when every clip fits one window, else to the longest (long-form decoding)."""
        long = max(len(w) for w in waves) > CHUNK_LENGTH_S * SAMPLE_RATE
        options = {"truncation": False, "padding": "longest", "return_attention_mask": True} if long else {}
        inputs = self.processor.feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", **options)
        return {key: value.to(self.device, self.model.dtype if value.is_floating_point() else value.dtype)
                for key, value in inputs.items()}

    def __call__(self, waves: list[np.ndarray]) -> list[Transcript]:
        import torch

        from ray_asr.labels import generation_language

        prompt = {"prompt_ids": self.prompt_ids.to(self.device)} if self.prompt_ids is not None else {}
        features = self.features(waves)

        def decode(beams: int) -> dict:
            with torch.no_grad():
                return self.model.generate(**features, language=generation_language(self.language), task=self.task,
                                           return_timestamps=True, return_segments=True, num_beams=beams, **prompt)

        try:
            out = decode(self.beam_size)
        except IndexError:
            # transformers' long-form loop reads the last token of each window's output, and beam search can
            # return an empty one (seen with a random test model): that batch is decoded greedily instead.
            if self.beam_size == 1:
                raise
            print(f"ray-asr transcribe: beam search failed inside transformers on a batch of {len(waves)} file(s); "
                  "decoded greedily", file=sys.stderr)
            out = decode(1)
        return [self._transcript(segments, len(wave) / SAMPLE_RATE) for segments, wave in zip(out["segments"], waves,
                                                                                            strict=True)]

    def _transcript(self, raw: list[dict], duration: float) -> Transcript:
        decode = self.processor.tokenizer.decode
        segments = []
        for seg in raw:
            text = decode(seg["tokens"], skip_special_tokens=True).strip()
            if not text:
                continue
            start = min(float(seg["start"]), duration)
            end = min(max(float(seg["end"]), start), duration)
            segments.append(Segment(round(start, 3), round(end, 3), text))
        return Transcript(" ".join(s.text for s in segments), segments)


def _clock(seconds: float, decimal: str) -> str:
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def to_srt(transcript: Transcript) -> str:
    return "".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n\n"
                   for i, s in enumerate(transcript.segments, 1))


def to_vtt(transcript: Transcript) -> str:
    return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n\n"
                                  for s in transcript.segments)


def render(transcript: Transcript, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(transcript.as_json(), ensure_ascii=False, indent=1) + "\n"
    return {"text": lambda t: t.text + "\n", "srt": to_srt, "vtt": to_vtt}[fmt](transcript)


def _out_names(paths: list[str]) -> list[str]:
    """One output stem per input: its file stem, with a number added where two inputs share one."""
    names, seen = [], {}
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def run(model_dir: str, paths: list[str], fmt: str = "text", out: str | None = None, prompt: str | None = None,
        language: str | None = None, batch_size: int = 8, beam_size: int = 1) -> int:
    """Transcribes `paths`; writes one file per input under `out`, or prints to stdout. Returns how many failed.

    A file that cannot be read costs one line on stderr; the others are still transcribed.
    """
    from ray_asr.audio import Rejected, load
    from ray_asr.model import require_folder
    from ray_asr.progress import bar

    require_folder(model_dir)
    if batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    waves: dict[int, np.ndarray] = {}
    failed = 0
    for i, path in enumerate(paths):
        try:
            waves[i] = load(path)
        except Rejected as err:
            print(f"ray-asr transcribe: {err.detail}", file=sys.stderr)
            failed += 1
    transcriber = Transcriber(model_dir, language, prompt, beam_size)
    order = sorted(waves, key=lambda i: len(waves[i]))  # similar lengths share a batch: less padding
    results: dict[int, Transcript] = {}
    seconds = sum(len(w) for w in waves.values()) / SAMPLE_RATE
    with bar(total=round(seconds), desc="transcribe", unit="s audio") as progress:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, transcript in zip(chunk, transcriber([waves[i] for i in chunk]), strict=True):
                results[i] = transcript
            progress.update(round(sum(len(waves[i]) for i in chunk) / SAMPLE_RATE))
    names = _out_names(paths)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    for i in sorted(results):
        text = render(results[i], fmt)
        if out is not None:
            Path(out, names[i] + SUFFIX[fmt]).write_text(text, encoding="utf-8")
        elif len(paths) > 1 and fmt == "text":
            print(f"{paths[i]}\t{text}", end="")
        else:
            print(text, end="")
    return failed
