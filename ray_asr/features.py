"""Whisper's log-mel spectrogram in torch, computed on the trainer's device (GPU when it has one)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ray_asr.constants import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE

# Slaney's mel scale (librosa's and Whisper's): linear below 1 kHz, logarithmic above.
MEL_BREAK_HZ, MEL_AT_BREAK = 1000.0, 15.0  # 1 kHz is mel 15: 3 mel per 200 Hz below it
MEL_LOG_STEP = np.log(6.4) / 27.0  # above it, 27 mel per factor 6.4 in frequency


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return np.where(hz < MEL_BREAK_HZ, 3.0 * hz / 200.0,
                    MEL_AT_BREAK + np.log(np.maximum(hz, MEL_BREAK_HZ) / MEL_BREAK_HZ) / MEL_LOG_STEP)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel < MEL_AT_BREAK, 200.0 * mel / 3.0, MEL_BREAK_HZ * np.exp(MEL_LOG_STEP * (mel - MEL_AT_BREAK)))


@lru_cache(maxsize=8)
def _mel_filters(n_mels: int) -> torch.Tensor:
    """Whisper's mel filter bank `(n_mels, n_freq)`: triangles evenly spaced in Slaney mel from 0 Hz to Nyquist,
    each scaled to unit area (Slaney norm); equals `transformers.audio_utils.mel_filter_bank` with those settings.
    Built here, in numpy: importing transformers for it cost a process that has not (a bench's consumer, an
    evaluation actor) about a second before its first batch."""
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.array(SAMPLE_RATE / 2)), n_mels + 2))  # (n_mels + 2,)
    fft_hz = np.linspace(0.0, SAMPLE_RATE // 2, 1 + N_FFT // 2)  # (n_freq,)
    widths = np.diff(edges)
    distance = edges[None, :] - fft_hz[:, None]  # (n_freq, n_mels + 2)
    rising, falling = -distance[:, :-2] / widths[:-1], distance[:, 2:] / widths[1:]
    bank = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[None, :]
    return torch.from_numpy(bank.T.astype(np.float32))  # (n_mels, n_freq)


def log_mel(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel: `(batch, samples)` float32 (≤ 30 s, zero-padded to 30 s) → `(batch, n_mels, 3000)`.

    Runs on `audio`'s device and equals `WhisperFeatureExtractor` (~1e-6). Whisper pads every clip
    to 30 s, but STFT frames of that zero padding have exactly zero power, so the STFT runs only
    over the batch's longest clip plus one window and the remaining frames are filled with zeros:
    a 5 s batch costs a sixth of the full 30 s transform.
    """
    audio = audio[..., :N_SAMPLES]
    # Frames past `covered // HOP` see only zeros (their windows start N_FFT/2 past the audio).
    covered = min(N_SAMPLES, -(-(audio.shape[-1] + N_FFT) // HOP_LENGTH) * HOP_LENGTH)
    audio = torch.nn.functional.pad(audio, (0, covered - audio.shape[-1]))
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., : covered // HOP_LENGTH].abs() ** 2  # (batch, n_freq, frames)
    mel = _mel_filters(n_mels).to(audio.device) @ power  # (batch, n_mels, frames)
    mel = torch.nn.functional.pad(mel, (0, N_FRAMES - mel.shape[-1]))  # (batch, n_mels, 3000)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    # Whisper's dynamic range: 80 dB (8 in log10) below each clip's own peak.
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0


SPEC_AUGMENT_KEYS = ("time_masks", "time_width", "freq_masks", "freq_width", "p")


def spec_augment(features: torch.Tensor, generator: torch.Generator, time_masks: int = 2, time_width: int = 40,
                 freq_masks: int = 2, freq_width: int = 10, p: float = 1.0) -> torch.Tensor:
    """SpecAugment on log-mel features `(batch, n_mels, frames)`: random time and frequency bands set to 0.

    Feature-level, so it runs on the trainer after log-mel, apart from the waveform transforms of
    `augment/`. Zero is the value Whisper's own `apply_spec_augment` writes into masked features.
    Each clip is masked with probability `p`. Returns a new tensor; randomness comes only from `generator`
    (a CPU `torch.Generator`).
    """
    out = features.clone()
    batch, n_mels, frames = out.shape
    chosen = (torch.rand(batch, generator=generator) < p).to(out.device)  # (batch,)

    def bands(count: int, width: int, size: int) -> torch.Tensor:
        widths = torch.randint(0, width + 1, (batch, count), generator=generator)
        starts = (torch.rand((batch, count), generator=generator) * (size - widths + 1)).long()
        grid = torch.arange(size)
        inside = (grid >= starts[..., None]) & (grid < (starts + widths)[..., None])  # (batch, count, size)
        return inside.any(dim=1).to(out.device) & chosen[:, None]  # (batch, size)

    out.masked_fill_(bands(freq_masks, freq_width, n_mels)[:, :, None], 0.0)
    out.masked_fill_(bands(time_masks, time_width, frames)[:, None, :], 0.0)
    return out
