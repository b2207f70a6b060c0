"""Small numeric helpers shared by the transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def power(x: np.ndarray) -> float:
    """Mean power of a signal (0 for an empty one)."""
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


def draw(rng: np.random.Generator, value):
    """A fixed value, or a uniform draw from a `[lo, hi]` range."""
    if isinstance(value, (list, tuple)):
        lo, hi = value
        return float(rng.uniform(lo, hi))
    return value


def fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Loops a short signal or crops a random window of a long one to exactly `n` samples."""
    if x.size == 0:
        return np.zeros(n, np.float32)
    if len(x) < n:
        x = np.tile(x, -(-n // len(x)))
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start : start + n]


def read_mono(path, sample_rate: int) -> np.ndarray:
    """A recording (noise, impulse response) as float32 mono at `sample_rate`.

    WAV needs nothing beyond scipy; other formats (FLAC, OGG, MP3) use soundfile when installed.
    """
    import soxr

    if str(path).lower().endswith(".wav"):
        from scipy.io import wavfile

        rate, data = wavfile.read(path)
        if np.issubdtype(data.dtype, np.integer):
            data = data / float(np.iinfo(data.dtype).max + 1)
        data = data.reshape(len(data), -1).astype(np.float32)
    else:
        import soundfile as sf

        data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1).astype(np.float32)
    return soxr.resample(mono, rate, sample_rate) if rate != sample_rate else mono


class Recordings:
    """Audio files named directly or found in folders; each is read once per sample rate and kept."""

    def __init__(self, items: list[str], suffixes: tuple[str, ...] = AUDIO_SUFFIXES):
        self.paths: list[Path] = []
        for item in items:
            path = Path(item)
            self.paths += sorted(q for q in path.rglob("*") if q.suffix.lower() in suffixes) if path.is_dir() else [path]
        self._cache: dict[tuple[Path, int], np.ndarray] = {}

    def __bool__(self) -> bool:
        return bool(self.paths)

    def pick(self, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        """One recording, drawn uniformly, as float32 mono at `sample_rate`."""
        key = (self.paths[int(rng.integers(len(self.paths)))], sample_rate)
        if key not in self._cache:
            self._cache[key] = read_mono(*key)
        return self._cache[key]
