"""augment/: property tests for every transform and measured behaviour of noise, echo, telephone, denoise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import augment
from augment._util import power
from augment.echo import synthetic_rir
from augment.noise import Noise
from augment.telephone import Telephone

RATE = 16_000
LENGTH_CHANGING = {"speed"}


def speech_like(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding 120-220 Hz pitch, amplitude-modulated at a syllable rate."""
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = 120 + 100 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 15))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + seed)
    return (0.1 * voice * envelope).astype(np.float32)


@pytest.mark.parametrize("name", sorted(augment.REGISTRY))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), seconds=st.floats(0.2, 3.0))
def test_transform_properties(name, seed, seconds):
    chain = augment.build([{"name": name, "p": 1.0}])
    audio = speech_like(seconds)
    out = chain(audio, RATE, np.random.default_rng(seed))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    if name not in LENGTH_CHANGING:
        assert out.shape == audio.shape
    assert np.array_equal(out, chain(audio, RATE, np.random.default_rng(seed)))  # same seed, same audio
    other = chain(audio, RATE, np.random.default_rng(seed + 1))
    assert other.shape != out.shape or not np.array_equal(other, out)  # another seed, other audio
    assert np.array_equal(audio, speech_like(seconds))  # input untouched


def test_chain_applies_in_order_with_probability():
    chain = augment.build([{"name": "gain", "p": 0.5, "gain_db": 6.0}])
    audio = speech_like(0.5)
    rng = np.random.default_rng(0)
    applied = sum(not np.array_equal(chain(audio, RATE, rng), audio) for _ in range(400))
    assert 160 < applied < 240
    never = augment.build([{"name": "noise", "p": 0.0}])
    assert np.array_equal(never(audio, RATE, rng), audio)


def test_unknown_transform_and_parameter_name_the_spec():
    with pytest.raises(ValueError, match=r"augment\[1\].name: unknown transform 'reverb'"):
        augment.build([{"name": "gain"}, {"name": "reverb"}])
    with pytest.raises(ValueError, match=r"augment\[0\] \(noise\)"):
        augment.build([{"name": "noise", "snr": 3}])


def test_noise_hits_the_target_snr():
    audio = speech_like(3.0)
    rng = np.random.default_rng(1)
    for _ in range(40):
        for colour in ("white", "pink", "brown"):
            target = float(rng.uniform(0, 30))
            noisy = Noise(snr_db=target, colours=(colour,))(audio, RATE, rng)
            achieved = 10 * np.log10(power(audio) / power(noisy - audio))
            assert abs(achieved - target) < 0.5


def test_noise_from_a_folder_of_recordings(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "hum.wav", 0.2 * np.sin(np.arange(4000) * 0.2).astype(np.float32), 8_000)
    audio = speech_like(2.0)
    noisy = augment.build([{"name": "noise", "snr_db": 10, "files": [str(tmp_path)]}])(audio, RATE,
                                                                                      np.random.default_rng(0))
    assert abs(10 * np.log10(power(audio) / power(noisy - audio)) - 10) < 0.5


def _rt60(rir: np.ndarray) -> float:
    """RT60 from Schroeder's backward integral, T20 (-5 to -25 dB) extrapolated to 60 dB."""
    energy = np.cumsum(rir[::-1] ** 2)[::-1]
    decay_db = 10 * np.log10(energy / energy[0])
    t = np.arange(len(rir)) / RATE
    fit = (decay_db <= -5) & (decay_db >= -25)
    slope = np.polyfit(t[fit], decay_db[fit], 1)[0]
    return -60 / slope


@pytest.mark.parametrize("rt60", [0.3, 0.6, 1.0])
def test_echo_rir_has_the_requested_rt60(rt60):
    rir = synthetic_rir(rt60, drr_db=-5.0, sample_rate=RATE, rng=np.random.default_rng(0))
    assert abs(_rt60(rir) - rt60) / rt60 < 0.2


def test_echo_keeps_length_and_energy():
    audio = speech_like(2.0)
    out = augment.build([{"name": "echo", "rt60_s": 0.8, "drr_db": 0.0}])(audio, RATE, np.random.default_rng(0))
    assert out.shape == audio.shape and abs(power(out) / power(audio) - 1) < 1e-3
    assert not np.allclose(out, audio, atol=1e-3)


def test_telephone_removes_energy_above_3400_hz():
    white = np.random.default_rng(0).standard_normal(RATE * 2).astype(np.float32) * 0.1
    out = Telephone()(white, RATE, np.random.default_rng(0))
    spectrum = np.abs(np.fft.rfft(out)) ** 2
    freqs = np.fft.rfftfreq(len(out), 1 / RATE)
    above, inside = spectrum[freqs > 3600].sum(), spectrum[(freqs > 500) & (freqs < 3000)].sum()
    assert above / inside < 1e-3


def test_denoise_raises_the_snr_of_noisy_speech():
    t = np.arange(3 * RATE) / RATE
    talking = np.sin(2 * np.pi * 1.0 * t) > 0.2  # speech with pauses between phrases
    clean = speech_like(3.0) * talking
    noise = np.random.default_rng(0).standard_normal(len(clean)).astype(np.float32)
    noise *= np.sqrt(power(clean[talking]) / power(noise) / 10 ** (5 / 10))  # 5 dB SNR while talking
    noisy = (clean + noise).astype(np.float32)
    out = augment.build([{"name": "denoise", "strength": 1.0}])(noisy, RATE, np.random.default_rng(0))

    def snr(x):  # as a VAD-based meter reads it: level while talking over level in the pauses
        return 10 * np.log10(power(x[talking]) / power(x[~talking]))

    assert snr(out) > snr(noisy) + 6


def test_augment_stands_alone():
    import subprocess
    import sys

    code = "import sys, augment; print(sorted(m for m in ('ray', 'ray_asr', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_time_shift_moves_the_signal_and_fills_silence():
    from augment.simple import TimeShift

    class FixedDraw:  # a generator whose uniform draw is a 2-sample shift
        def uniform(self, lo, hi):
            return 2.0

    out = TimeShift(max_s=1.0)(np.arange(1, 11, dtype=np.float32), 10, FixedDraw())
    assert out.tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    # seeds that once drew the same integer shift now give different audio
    audio = speech_like(1.0)
    shift = augment.build([{"name": "time_shift"}])
    assert not np.array_equal(shift(audio, RATE, np.random.default_rng(36640)),
                              shift(audio, RATE, np.random.default_rng(36641)))
