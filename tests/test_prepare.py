"""Every entry of the bad-input catalogue, one by one, through the single judging function."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
import soundfile as sf
import soxr
from audio_fixtures import build_catalogue
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_asr import audio, config, labels, sources
from ray_asr.audio import Rejected
from ray_asr.prepare import REASONS, SEGMENT_TOLERANCE_S, prepare, quarantine_record


@pytest.fixture(scope="module")
def rows(catalogue):
    return {row["id"]: row for row in sources.read_all(catalogue.manifest)}


def _case_names():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        return list(build_catalogue(Path(folder)).expected)


@pytest.mark.parametrize("case", _case_names())
def test_catalogue_entry(case, catalogue, rows, tokenizer):
    row = rows[catalogue.ids[case]]
    expected = catalogue.expected[case]
    if expected is None:
        wave, ids = prepare(row, tokenizer, max_duration_s=30.0)
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert np.isfinite(wave).all() and 0.5 * audio.SAMPLE_RATE < len(wave) <= 2.1 * audio.SAMPLE_RATE
        assert ids[-1] == tokenizer.eos_token_id
    else:
        with pytest.raises(Rejected) as err:
            prepare(row, tokenizer, max_duration_s=30.0)
        assert err.value.reason == expected
        assert expected in REASONS
        assert err.value.detail  # a human sentence accompanies every code


def test_every_catalogue_reason_is_exercised(catalogue):
    exercised = {r for r in catalogue.expected.values() if r}
    assert exercised == set(REASONS) - {"internal_error"}


def test_resampled_and_stereo_rows_become_16k_mono(catalogue, rows, tokenizer):
    wave, _ = prepare(rows[catalogue.ids["good_resampled"]], tokenizer, 30.0)
    assert len(wave) == audio.SAMPLE_RATE  # 1 s at 48 kHz → 16 000 samples
    stereo, _ = prepare(rows[catalogue.ids["good_stereo"]], tokenizer, 30.0)
    assert len(stereo) == audio.SAMPLE_RATE
    # channels are 0.5x and 1.0x one signal (peak ~0.27); the mean downmix is 0.75x of it
    assert 0.15 < np.abs(stereo).max() < 0.3


def test_a_rows_language_reaches_its_labels_prompt(catalogue, rows, tokenizer):
    """`language` per row (a manifest key) sets the row's language token; the others keep the model's."""
    _, german = prepare(rows[catalogue.ids["good_german"]], tokenizer, 30.0)
    _, english = prepare(rows[catalogue.ids["good_16k"]], tokenizer, 30.0)
    de = tokenizer.backend.token_to_id("<|de|>")
    assert german[0] == de and german[1:3] == list(tokenizer.prefix[1:]) and english[:3] == list(tokenizer.prefix)
    assert labels.encode(tokenizer, "x", "German")[0] == labels.encode(tokenizer, "x", "<|de|>")[0] == de


def test_max_duration_is_the_configured_bound(catalogue, rows, tokenizer):
    row = rows[catalogue.ids["good_16k"]]
    with pytest.raises(Rejected) as err:
        prepare(row, tokenizer, max_duration_s=0.5)
    assert err.value.reason == "too_long"


def test_quarantine_record_keeps_the_original_row(catalogue, rows):
    row = rows[catalogue.ids["missing_file"]]
    record = quarantine_record(row, "missing_file", "gone")
    assert record["row"] == {"audio": "clips/nowhere.wav", "text": "gone"}
    assert record["source"].endswith("manifest.jsonl") and record["id"] == catalogue.ids["missing_file"]
    bad = quarantine_record(rows[catalogue.ids["malformed_json"]], "malformed_json", "x")
    assert bad["row"].startswith('{"audio"')  # unparseable rows are kept as their text


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash_decoding(data):
    try:
        wave = audio.to_mono_16k(*audio.decode(data))
    except Rejected as err:
        assert err.reason in REASONS
    else:
        assert wave.dtype == np.float32 and np.isfinite(wave).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(8_000, 96_000), st.integers(1, 4), st.floats(0.05, 2.0))
def test_any_rate_and_channel_count_becomes_16k_mono(rate, channels, seconds):
    frames = max(1, int(rate * seconds))
    signal = np.random.default_rng(rate).uniform(-0.5, 0.5, (frames, channels)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, signal, rate, format="WAV", subtype="FLOAT")
    wave = audio.to_mono_16k(*audio.decode(buf.getvalue()))
    assert wave.ndim == 1 and wave.dtype == np.float32
    assert abs(len(wave) - frames * audio.SAMPLE_RATE / rate) <= 2
    mono = signal.mean(axis=1, dtype=np.float32)  # the downmix, whatever the channel count (one: the channel itself)
    expected = mono if rate == audio.SAMPLE_RATE else soxr.resample(mono, rate, audio.SAMPLE_RATE, quality="HQ")
    assert np.allclose(wave, expected, atol=1e-6)


def _ramp_rows(tmp_path, segments):
    """A 1 s 16 kHz clip whose sample i is i / 16000 (float WAV: exact), and one NeMo row per (offset, duration)."""
    ramp = (np.arange(audio.SAMPLE_RATE) / audio.SAMPLE_RATE).astype(np.float32)
    sf.write(tmp_path / "ramp.wav", ramp, audio.SAMPLE_RATE, subtype="FLOAT")
    lines = [{"audio_filepath": "ramp.wav", "text": "a ramp", "offset": offset, "duration": duration}
             for offset, duration in segments]
    (tmp_path / "nemo.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return ramp, sources.read_all(tmp_path / "nemo.jsonl")


def test_a_segment_row_yields_exactly_its_samples(tmp_path, tokenizer):
    ramp, rows = _ramp_rows(tmp_path, [(0.25, 0.5), (None, 0.1), (0.9, None), (0.7, 0.3 + SEGMENT_TOLERANCE_S / 2)])
    waves = [prepare(row, tokenizer, 30.0)[0] for row in rows]
    np.testing.assert_array_equal(waves[0], ramp[4000:12000])
    np.testing.assert_array_equal(waves[1], ramp[:1600])
    np.testing.assert_array_equal(waves[2], ramp[14400:])
    np.testing.assert_array_equal(waves[3], ramp[11200:])  # a little past the end: read to the end
    hand_built = {k: v for k, v in rows[0].items() if k not in ("offset", "duration")}  # rows from before segments
    assert len(prepare(hand_built, tokenizer, 30.0)[0]) == audio.SAMPLE_RATE


@pytest.mark.parametrize("offset,duration", [(0.9, 0.5), (1.5, 0.2), (0.5, 0.0), (-0.1, 0.5), (1.0, None)])
def test_a_segment_outside_the_audio_is_rejected(tmp_path, tokenizer, offset, duration):
    _, (row,) = _ramp_rows(tmp_path, [(offset, duration)])
    with pytest.raises(Rejected) as err:
        prepare(row, tokenizer, 30.0)
    assert err.value.reason == "empty_file"
    assert "segment" in err.value.detail and "1.000 s long" in err.value.detail


def test_max_duration_applies_to_the_segment(tmp_path, tokenizer):
    _, (row,) = _ramp_rows(tmp_path, [(0.0, 0.6)])
    assert len(prepare(row, tokenizer, max_duration_s=0.7)[0]) == 9600  # the file is 1 s, over the limit; the row is not


def test_mixed_sets_are_read_interleaved_with_the_training_set(tmp_path):
    from ray_asr import data

    for name, rows in (("train", 300), ("de", 10)):
        (tmp_path / f"{name}.jsonl").write_text("".join(f'{{"audio": "a.wav", "text": "{i}"}}\n' for i in range(rows)))
    source = data.ManifestDatasource(tmp_path / "train.jsonl", [{"manifest": str(tmp_path / "de.jsonl"), "weight": 0.1}])
    kinds = [shard.path.endswith("de.jsonl") for shard, _, _ in source.parts]
    assert sum(kinds) == 3 and source.num_rows == 330  # 30 German rows wanted from 10: three passes over them
    german = [i for i, k in enumerate(kinds) if k]
    assert german[0] < len(kinds) / 3 and german[-1] >= 2 * len(kinds) / 3  # spread through the epoch
    assert [repeat for shard, repeat, _ in source.parts if shard.path.endswith("de.jsonl")] == [0, 1, 2]


def _read_ids(source, blocks: int = 1) -> list[str]:
    """The ids a decode actor reads, piece by piece, from the pieces the read tasks hand out."""
    from ray_asr import data

    pieces = [p for task in source.get_read_tasks(blocks) for block in task() for p in block.to_pylist()]
    assert all(set(p) == set(data.PIECE_SCHEMA.names) for p in pieces)  # read tasks carry no row of the source
    return [i for p in pieces for i in source.rows(p["part"], p["piece"], p["pieces"]).column("id").to_pylist()]


def test_pieces_read_every_row_once_in_plan_order_however_many(tmp_path, monkeypatch):
    from ray_asr import data, sources

    monkeypatch.setattr(sources, "LINES_PER_SHARD", 16)
    for name, rows in (("train", 100), ("de", 10)):
        (tmp_path / f"{name}.jsonl").write_text("".join(f'{{"audio": "a.wav", "text": "{i}"}}\n' for i in range(rows)))
    with gzip.open(tmp_path / "de.jsonl.gz", "wt") as f:
        f.write((tmp_path / "de.jsonl").read_text())
    source = data.ManifestDatasource(tmp_path / "train.jsonl", [{"manifest": str(tmp_path / "de.jsonl.gz"), "weight": 0.2}])
    whole = _read_ids(source)
    assert len(whole) == len(set(whole)) and sum(i.startswith("train.jsonl:") for i in whole) == 100
    assert all(_read_ids(source, blocks) == whole for blocks in (7, 50, 300))
    assert len(source.pieces(50)) == 7 * 7 + 2  # the gzip's 2 repeats read whole; 7 train shards in 7 pieces each


def test_train_rows_picks_a_seeded_subset_nested_across_sizes(tmp_path):
    from ray_asr import data

    for name, rows in (("train", 300), ("everyday", 40)):
        (tmp_path / f"{name}.jsonl").write_text("".join(f'{{"audio": "a.wav", "text": "{i}"}}\n' for i in range(rows)))
    picks = {k: set(_read_ids(data.ManifestDatasource(tmp_path / "train.jsonl", seed=3, rows=k))) for k in (8, 32)}
    assert len(picks[8]) == 8 and len(picks[32]) == 32 and picks[8] < picks[32]  # a curve adds rows, never swaps
    assert picks[8] == set(_read_ids(data.ManifestDatasource(tmp_path / "train.jsonl", seed=3, rows=8)))
    assert picks[8] != set(_read_ids(data.ManifestDatasource(tmp_path / "train.jsonl", seed=4, rows=8)))
    assert data.ManifestDatasource(tmp_path / "train.jsonl", rows=500).num_rows == 300  # more than there is: all

    # Rehearsal beside the pick: its share is of the picked rows, not of the whole set.
    cfg = config.from_dict({"data": {"train": str(tmp_path / "train.jsonl"), "train_rows": 32,
                                     "rehearsal": {"manifest": str(tmp_path / "everyday.jsonl"), "fraction": 0.2}}})
    assert cfg.data.mixes() == [{"manifest": str(tmp_path / "everyday.jsonl"), "weight": pytest.approx(0.25)}]
    source = data.ManifestDatasource(cfg.data.train, cfg.data.mixes(), seed=3, rows=cfg.data.train_rows)
    ids = _read_ids(source)
    assert source.num_rows == 40 and sum(i.startswith("train.jsonl") for i in ids) == 32
    assert 0 < sum(i.startswith("everyday.jsonl") for i in ids) < 20  # a seeded share near 8 of the 40
