"""Log-mel equality with WhisperFeatureExtractor (public torch path and its independent numpy path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from ray_asr.audio import N_FRAMES, N_SAMPLES
from ray_asr.features import log_mel


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_whisper_feature_extractor(n_mels):
    rng = np.random.default_rng(n_mels)
    clips = [rng.standard_normal(int(16_000 * s)).astype(np.float32) * a for s, a in ((0.7, 0.05), (3.2, 0.3), (29.5, 0.1))]
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    reference = extractor(clips, sampling_rate=16_000, return_tensors="np").input_features
    padded = np.zeros((len(clips), N_SAMPLES), np.float32)
    for i, clip in enumerate(clips):
        padded[i, : len(clip)] = clip
    numpy_reference = extractor._np_extract_fbank_features(padded.astype(np.float64), "cpu")  # independent path
    ours = log_mel(torch.stack([torch.from_numpy(c) for c in padded]), n_mels).numpy()
    assert ours.shape == (len(clips), n_mels, N_FRAMES)
    assert np.abs(ours - reference).max() < 1e-4
    assert np.abs(ours - numpy_reference).max() < 1e-4


def test_log_mel_pads_short_batches_and_clamps_per_clip():
    loud = torch.zeros(2, 16_000)
    loud[0] = torch.sin(torch.arange(16_000) * 0.3)
    features = log_mel(loud)
    assert features.shape == (2, 80, 3000)
    # each clip's floor is 8 (log10 units) below its own peak, scaled by 1/4 → range ≤ 2
    assert (features[0].max() - features[0].min()).item() <= 2.0 + 1e-6
    assert torch.isfinite(features).all()
