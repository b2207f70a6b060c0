"""Wire packing and decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_asr import audio


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
