"""Log-mel equality with WhisperFeatureExtractor, wire packing, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import WhisperFeatureExtractor

from ray_asr import audio


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_whisper_feature_extractor(n_mels):
    rng = np.random.default_rng(n_mels)
    clips = [rng.standard_normal(int(16_000 * s)).astype(np.float32) * a for s, a in ((0.7, 0.05), (3.2, 0.3), (29.5, 0.1))]
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    reference = extractor(clips, sampling_rate=16_000, return_tensors="np").input_features
    padded = np.zeros((len(clips), audio.N_SAMPLES), np.float32)
    for i, clip in enumerate(clips):
        padded[i, : len(clip)] = clip
    numpy_reference = extractor._np_extract_fbank_features(padded.astype(np.float64), "cpu")  # independent path
    ours = audio.log_mel(torch.stack([torch.from_numpy(c) for c in padded]), n_mels).numpy()
    assert ours.shape == (len(clips), n_mels, audio.N_FRAMES)
    assert np.abs(ours - reference).max() < 1e-4
    assert np.abs(ours - numpy_reference).max() < 1e-4


def test_log_mel_pads_short_batches_and_clamps_per_clip():
    loud = torch.zeros(2, 16_000)
    loud[0] = torch.sin(torch.arange(16_000) * 0.3)
    features = audio.log_mel(loud)
    assert features.shape == (2, 80, 3000)
    # each clip's floor is 8 (log10 units) below its own peak, scaled by 1/4 → range ≤ 2
    assert (features[0].max() - features[0].min()).item() <= 2.0 + 1e-6
    assert torch.isfinite(features).all()


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 48_000), st.floats(0.01, 3.0), st.sampled_from(["int16", "float32"]))
def test_wire_round_trip(n, peak, dtype):
    wave = np.random.default_rng(n).uniform(-peak, peak, n).astype(np.float32)
    back = audio.from_wire(audio.to_wire(wave, dtype), dtype)
    assert back.dtype == np.float32 and back.shape == wave.shape
    if dtype == "float32":
        assert np.array_equal(back, wave)
    else:
        scale = min(1.0, (audio.INT16_SCALE - 1) / audio.INT16_SCALE / max(np.abs(wave).max(), 1e-9))
        expected = wave * scale if np.abs(wave).max() > 1.0 else wave
        assert np.abs(back - expected).max() <= 2 / audio.INT16_SCALE + 1e-6
        assert np.abs(back).max() <= 1.0


def test_int16_wire_is_half_the_bytes():
    wave = np.zeros(5 * audio.SAMPLE_RATE, np.float32)
    assert len(audio.to_wire(wave, "int16")) == 160_000 and len(audio.to_wire(wave, "float32")) == 320_000


def test_load_reports_missing_and_folder_paths(tmp_path):
    with pytest.raises(audio.Rejected) as err:
        audio.load(tmp_path / "no.wav")
    assert err.value.reason == "missing_file"
    with pytest.raises(audio.Rejected) as err:
        audio.load(tmp_path)
    assert err.value.reason == "missing_file"
