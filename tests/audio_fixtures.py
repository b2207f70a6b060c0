"""Test data makers: tones, clip files, odd WAVs, and a manifest holding every bad-input case."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A 220 Hz tone plus a little noise, `(frames,)` or `(frames, channels)` float32 at ~0.3 peak."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.25 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(len(t))
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_clip(path: Path, seconds: float = 1.0, rate: int = 16_000, channels: int = 1, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate, channels), rate, **kwargs)
    return path


def wav_with_codec_tag(path: Path, tag: int) -> Path:
    """A WAV whose fmt chunk names codec `tag` (e.g. 0x0055, MPEG layer 3), with some payload."""
    payload = bytes(4000)
    fmt = struct.pack("<HHIIHH", tag, 1, 16_000, 16_000, 1, 0)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@dataclass
class Catalogue:
    """A manifest mixing good rows with one row per bad-input catalogue entry."""

    manifest: Path
    expected: dict[str, str | None]
    """Case name → expected rejection reason (None for a good row)."""
    ids: dict[str, str]
    """Case name → row id (`<manifest name>:<line>`)."""

    @property
    def good(self) -> set[str]:
        return {self.ids[c] for c, reason in self.expected.items() if reason is None}

    @property
    def bad(self) -> dict[str, str]:
        return {self.ids[c]: reason for c, reason in self.expected.items() if reason is not None}


def build_catalogue(folder: Path) -> Catalogue:
    clips = folder / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    write_clip(clips / "good_16k.wav")
    write_clip(clips / "good_48k.flac", rate=48_000)
    write_clip(clips / "good_stereo.wav", rate=44_100, channels=2)
    write_clip(clips / "good_48k.mp3", seconds=2.0, rate=48_000)
    (clips / "empty.wav").write_bytes(b"")
    (clips / "corrupt.wav").write_bytes(np.random.default_rng(1).bytes(6000))
    wav = write_clip(clips / "full.wav", seconds=2.0).read_bytes()
    (clips / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    flac = write_clip(clips / "full.flac", seconds=2.0).read_bytes()
    (clips / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    wav_with_codec_tag(clips / "mp3_in_wav.wav", 0x0055)
    (clips / "voice.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00" + bytes(2000))
    nan = tone(1.0, 16_000)
    nan[100:200] = np.nan
    sf.write(clips / "nan.wav", nan, 16_000, subtype="FLOAT")
    inf = tone(1.0, 16_000)
    inf[5] = np.inf
    sf.write(clips / "inf.wav", inf, 16_000, subtype="FLOAT")
    write_clip(clips / "long.flac", seconds=31.0)
    long_text = " ".join(["pharmacokinetics"] * 200)

    cases: list[tuple[str, bytes, str | None]] = [
        ("good_16k", json.dumps({"audio": "clips/good_16k.wav", "text": "a good clip"}).encode(), None),
        ("good_resampled", json.dumps({"audio": "clips/good_48k.flac", "text": "resampled from 48 kHz"}).encode(), None),
        ("good_stereo", json.dumps({"audio": "clips/good_stereo.wav", "text": "stereo is downmixed",
                                    "speaker": "s1"}).encode(), None),
        ("good_mp3", json.dumps({"audio": "clips/good_48k.mp3", "text": "an mp3 like common voice"}).encode(), None),
        ("good_absolute", json.dumps({"audio": str((clips / "good_16k.wav").resolve()), "text": "absolute"}).encode(),
         None),
        ("missing_file", json.dumps({"audio": "clips/nowhere.wav", "text": "gone"}).encode(), "missing_file"),
        ("empty_file", json.dumps({"audio": "clips/empty.wav", "text": "nothing"}).encode(), "empty_file"),
        ("corrupt_file", json.dumps({"audio": "clips/corrupt.wav", "text": "noise bytes"}).encode(), "corrupt_file"),
        ("truncated_wav", json.dumps({"audio": "clips/truncated.wav", "text": "cut"}).encode(), "corrupt_file"),
        ("truncated_flac", json.dumps({"audio": "clips/truncated.flac", "text": "cut"}).encode(), "corrupt_file"),
        ("unsupported_codec_wav", json.dumps({"audio": "clips/mp3_in_wav.wav", "text": "odd"}).encode(),
         "unsupported_codec"),
        ("unsupported_container", json.dumps({"audio": "clips/voice.m4a", "text": "aac"}).encode(),
         "unsupported_codec"),
        ("nan_samples", json.dumps({"audio": "clips/nan.wav", "text": "nan"}).encode(), "non_finite_samples"),
        ("inf_samples", json.dumps({"audio": "clips/inf.wav", "text": "inf"}).encode(), "non_finite_samples"),
        ("too_long", json.dumps({"audio": "clips/long.flac", "text": "thirty one seconds"}).encode(), "too_long"),
        ("empty_transcript", json.dumps({"audio": "clips/good_16k.wav", "text": "   "}).encode(), "empty_transcript"),
        ("null_transcript", json.dumps({"audio": "clips/good_16k.wav", "text": None}).encode(), "empty_transcript"),
        ("transcript_too_long", json.dumps({"audio": "clips/good_16k.wav", "text": long_text}).encode(),
         "transcript_too_long"),
        ("not_utf8", b'{"audio": "clips/good_16k.wav", "text": "caf\xe9 \xff"}', "not_utf8"),
        ("malformed_json", b'{"audio": "clips/good_16k.wav", "text": ', "malformed_json"),
        ("json_not_object", b'["clips/good_16k.wav", "a list"]', "malformed_json"),
        ("missing_text", json.dumps({"audio": "clips/good_16k.wav"}).encode(), "missing_keys"),
        ("missing_audio", json.dumps({"text": "no audio key"}).encode(), "missing_keys"),
        ("good_german", json.dumps({"audio": "clips/good_16k.wav", "text": "ein guter Satz", "language": "de"}).encode(),
         None),
        ("unknown_language", json.dumps({"audio": "clips/good_16k.wav", "text": "qapla", "language": "klingon"}).encode(),
         "unknown_language"),
    ]
    manifest = folder / "manifest.jsonl"
    manifest.write_bytes(b"\n".join(line for _, line, _ in cases) + b"\n")
    return Catalogue(manifest, {name: reason for name, _, reason in cases},
                     {name: f"manifest.jsonl:{i}" for i, (name, _, _) in enumerate(cases, start=1)})
