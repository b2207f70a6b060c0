"""Log-mel equality with WhisperFeatureExtractor (public torch path and its independent numpy path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from ray_asr.constants import N_FRAMES, N_SAMPLES
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


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_transformers_filter_bank(n_mels):
    from transformers.audio_utils import mel_filter_bank

    from ray_asr.features import _mel_filters

    reference = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
                                sampling_rate=16_000, norm="slaney", mel_scale="slaney")
    ours = _mel_filters(n_mels).numpy()
    assert ours.shape == (n_mels, 201) and (ours > 0).any(axis=1).all()  # every filter covers some bins
    assert np.abs(ours - reference.T).max() < 1e-7 * np.abs(reference).max() + 1e-9


def test_log_mel_pads_short_batches_and_clamps_per_clip():
    loud = torch.zeros(2, 16_000)
    loud[0] = torch.sin(torch.arange(16_000) * 0.3)
    features = log_mel(loud)
    assert features.shape == (2, 80, 3000)
    # each clip's floor is 8 (log10 units) below its own peak, scaled by 1/4 → range ≤ 2
    assert (features[0].max() - features[0].min()).item() <= 2.0 + 1e-6
    assert torch.isfinite(features).all()


def test_spec_augment_masks_bands_reproducibly():
    from ray_asr.features import spec_augment

    features = torch.rand(3, 80, 3000) + 1.0  # no zeros before masking
    a = spec_augment(features, torch.Generator().manual_seed(0), time_masks=2, time_width=40, freq_masks=2,
                     freq_width=10)
    b = spec_augment(features, torch.Generator().manual_seed(0), time_masks=2, time_width=40, freq_masks=2,
                     freq_width=10)
    c = spec_augment(features, torch.Generator().manual_seed(1), time_masks=2, time_width=40, freq_masks=2,
                     freq_width=10)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.all(features > 0)  # the input is untouched
    zero = a == 0
    masked_rows = zero.all(dim=2).sum(dim=1)  # whole mel bins masked, per clip
    masked_cols = zero.all(dim=1).sum(dim=1)  # whole frames masked, per clip
    assert torch.all(masked_rows <= 20) and torch.all(masked_cols <= 80)
    assert (masked_rows + masked_cols).sum() > 0
    # every zero lies in a fully masked bin or frame: masks are bands, not scattered values
    assert torch.equal(zero, zero.all(dim=2, keepdim=True) | zero.all(dim=1, keepdim=True))
