"""Whisper's log-mel spectrogram in torch, computed on the trainer's device (GPU when it has one)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ray_asr.constants import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE


@lru_cache(maxsize=8)
def _mel_filters(n_mels: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney",
    )
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
