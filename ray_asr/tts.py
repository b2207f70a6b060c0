"""Offline speech synthesis with eSpeak NG, from the libespeak-ng that `espeakng-loader` ships on PyPI.

Used only to build the embedded demo corpus and test clips; no system package is needed.
The library keeps one global synthesiser per process, so `EspeakVoice` is meant for one
process at a time (the corpus builder), not for Ray tasks.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

# espeak_ng's C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_PARAM_RATE = 1  # words per minute
_PARAM_PITCH = 3  # 0..100, 50 is the voice's normal pitch
_PARAM_RANGE = 4  # 0..100, pitch variation (intonation)

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True)
class Voice:
    """One speaker: an eSpeak voice name with variant, and a speaking style."""

    name: str
    """eSpeak voice with optional variant, e.g. `en-us+f3`."""
    rate_wpm: int = 160
    """Speaking rate in words per minute."""
    pitch: int = 50
    """Base pitch, 0..100."""


class EspeakSynth:
    """Synthesises text to a mono int16 waveform at the library's native rate (22.05 kHz)."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, _events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0  # 0 = continue synthesis

        # Keep a reference: ctypes callbacks must outlive their registration.
        self._callback = _SYNTH_CALLBACK(collect)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]

    def say(self, text: str, voice: Voice) -> np.ndarray:
        """Returns `(samples,)` int16 speech for `text` spoken by `voice`."""
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"unknown espeak voice {voice.name!r}")
        self._lib.espeak_SetParameter(_PARAM_RATE, voice.rate_wpm, 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
        self._lib.espeak_SetParameter(_PARAM_RANGE, 50, 0)
        self._chunks = []
        raw = text.encode() + b"\0"
        status = self._lib.espeak_Synth(raw, len(raw), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak-ng synthesis failed with status {status}")
        self._lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
