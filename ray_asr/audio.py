"""Decoding to 16 kHz mono (numpy only: the data tier never imports torch).

Decoding classifies failures into the reasons of the bad-input catalogue (`Rejected`), so the data
tier can quarantine a row instead of crashing a run.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ray_asr.constants import INT16_SCALE, N_SAMPLES, SAMPLE_RATE  # noqa: F401 (callers read them here too)

# Containers soundfile cannot open, recognised by their first bytes: these are "unsupported
# codec"; unrecognisable bytes are "corrupt".
_FOREIGN_MAGIC = {b"ftyp": "MP4/M4A/AAC", b"\x1aE\xdf\xa3": "Matroska/WebM", b"#!AM": "AMR", b"0&\xb2u": "WMA/ASF"}
# WAV codec tags libsndfile decodes: PCM, MS ADPCM, IEEE float, A-law, mu-law, IMA ADPCM, extensible.
_RIFF_DECODABLE_TAGS = {0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0xFFFE}


class Rejected(Exception):
    """A row that cannot be used; `reason` is a catalogue code, `detail` a human sentence."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _sniff(head: bytes) -> str | None:
    for magic, name in _FOREIGN_MAGIC.items():
        if magic in head[:12]:
            return name
    return None


def _check_riff(data: bytes) -> None:
    """Rejects WAV files that libsndfile would read silently wrong: truncated data or a foreign codec."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk == b"fmt " and pos + 10 <= len(data):
            tag = struct.unpack_from("<H", data, pos + 8)[0]
            if tag not in _RIFF_DECODABLE_TAGS:
                raise Rejected("unsupported_codec", f"WAV codec tag 0x{tag:04x} is not supported")
        if chunk == b"data":
            available = len(data) - pos - 8
            if size != 0xFFFFFFFF and size > available:
                raise Rejected("corrupt_file", f"truncated WAV: data chunk declares {size} bytes, file holds {available}")
            return
        pos += 8 + size + (size & 1)


def decode(data: bytes, name: str = "audio") -> tuple[np.ndarray, int]:
    """Decodes encoded audio bytes into `(frames, channels)` float32 and its sample rate."""
    if not data:
        raise Rejected("empty_file", f"{name} is empty (0 bytes)")
    foreign = _sniff(data[:16])
    if foreign:
        raise Rejected("unsupported_codec", f"{name} is {foreign}, which is not supported (use WAV, FLAC, OGG or MP3)")
    _check_riff(data)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            declared = f.frames
            audio = f.read(dtype="float32", always_2d=True)
            rate, fmt = f.samplerate, f.format
    except sf.LibsndfileError as err:
        message = str(err).rsplit(": ", 1)[-1]  # drop libsndfile's "Error opening <object>" prefix
        lower = message.lower()
        reason = "unsupported_codec" if "unsupported" in lower or "not supported" in lower else "corrupt_file"
        raise Rejected(reason, f"{name} cannot be decoded ({message})") from None
    except (RuntimeError, ValueError, EOFError) as err:
        raise Rejected("corrupt_file", f"{name} cannot be decoded ({err})") from None
    # MP3 frame counts are estimates; for other formats a short read means a truncated file.
    if fmt != "MP3" and declared and len(audio) < declared:
        raise Rejected("corrupt_file", f"truncated {fmt}: header declares {declared} frames, decoded {len(audio)}")
    if len(audio) == 0:
        raise Rejected("empty_file", f"{name} holds no samples")
    return audio, rate


def to_mono_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """`(frames, channels)` at any rate → `(samples,)` float32 mono at 16 kHz (mean downmix, soxr)."""
    if audio.ndim == 1:
        mono = audio.astype(np.float32)
    elif audio.shape[1] == 1:  # most speech: a view, where a mean over one channel costs 0.5 ms a 5 s clip
        mono = audio.reshape(-1).astype(np.float32, copy=False)
    else:
        mono = audio.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise Rejected("non_finite_samples", "audio holds NaN or Inf samples")
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return mono


def load(source: str | Path | bytes) -> np.ndarray:
    """Reads a file (path) or encoded bytes into `(samples,)` float32 mono at 16 kHz."""
    if isinstance(source, (bytes, bytearray)):
        return to_mono_16k(*decode(bytes(source)))
    path = Path(source)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Rejected("missing_file", f"{path} does not exist") from None
    except IsADirectoryError:
        raise Rejected("missing_file", f"{path} is a folder, not a file") from None
    except PermissionError:
        raise Rejected("missing_file", f"{path} is not readable") from None
    return to_mono_16k(*decode(data, str(path)))


def to_wire(audio: np.ndarray, dtype: str) -> bytes:
    """Packs a float32 waveform for shipping to trainers; int16 halves the bytes.

    A clip that peaks above full scale is scaled down rather than clipped.
    """
    if dtype == "float32":
        return audio.astype(np.float32, copy=False).tobytes()
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    scale = (INT16_SCALE - 1) / max(peak, 1.0)
    return np.round(audio * scale).astype(np.int16).tobytes()


def from_wire(buffer: bytes, dtype: str) -> np.ndarray:
    """Inverse of `to_wire`: `(samples,)` float32."""
    if dtype == "float32":
        return np.frombuffer(buffer, dtype=np.float32)
    return np.frombuffer(buffer, dtype=np.int16).astype(np.float32) / INT16_SCALE


# An energy VAD for clip-level speech bounds: frames on Whisper's 20 ms timestamp grid, speech where a frame
# is within SPEECH_FLOOR_DB of the clip's loudest (eSpeak's and read speech's pauses sit 40+ dB down; 35 dB
# keeps soft consonants at a word's edge). Below SILENCE_RMS (-80 dBFS) nothing counts as speech.
VAD_FRAME = SAMPLE_RATE // 50  # 320 samples = 20 ms
SPEECH_FLOOR_DB = 35.0
SILENCE_RMS = 1e-4


def speech_bounds(wave: np.ndarray) -> tuple[float, float]:
    """Seconds where speech starts and ends in a 16 kHz clip: the first and last 20 ms frame within
    `SPEECH_FLOOR_DB` of the loudest frame; the whole clip when it is silent."""
    duration = len(wave) / SAMPLE_RATE
    frames = len(wave) // VAD_FRAME
    if frames == 0:
        return 0.0, duration
    rms = np.sqrt(np.mean(np.square(wave[: frames * VAD_FRAME].reshape(frames, VAD_FRAME), dtype=np.float64), axis=1))
    if rms.max() < SILENCE_RMS:
        return 0.0, duration
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-SPEECH_FLOOR_DB / 20))
    return float(loud[0] * VAD_FRAME / SAMPLE_RATE), float(min(duration, (loud[-1] + 1) * VAD_FRAME / SAMPLE_RATE))
