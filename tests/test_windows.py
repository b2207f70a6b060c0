"""Long recordings with timed segments: packed into 30 s windows with timestamped labels, not rejected; short rows
with `segments` or `start`/`end` get their timestamps from them."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_asr import audio, labels, sources, windows
from ray_asr.audio import Rejected
from ray_asr.prepare import examples

RATE = audio.SAMPLE_RATE
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike"]


@pytest.fixture(scope="module")
def tokenizer(timed_tokenizer):  # this module's clips are labelled with timestamps
    return timed_tokenizer


def _segments(duration: float, rng: np.random.Generator) -> list[dict]:
    """Utterances of 1-9 s with 0.1-2 s pauses filling `duration`, each a few made-up words."""
    out, at = [], rng.uniform(0, 1)
    while True:
        length = rng.uniform(1, 9)
        if at + length > duration:
            return out
        words = rng.choice(WORDS, size=int(rng.integers(2, 7)))
        out.append({"start": round(at, 2), "end": round(at + length, 2), "text": " ".join(words)})
        at += length + rng.uniform(0.1, 2)


def _long_row(folder, seconds: float = 95.0, seed: int = 0, **extra) -> dict:
    rng = np.random.default_rng(seed)
    segments = _segments(seconds, rng)
    wave = (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
    sf.write(folder / "long.flac", wave, RATE)
    record = {"audio": "long.flac", "text": " ".join(s["text"] for s in segments), "segments": segments, **extra}
    (folder / "long.jsonl").write_text(json.dumps(record) + "\n")
    return sources.read_all(folder / "long.jsonl")[0]


def test_a_95_s_row_with_segments_packs_into_windows_whose_texts_join_back(tmp_path, tokenizer):
    row = _long_row(tmp_path)
    made = examples(row, tokenizer, max_duration_s=30.0)
    assert len(made) >= 3  # ~90 s of speech in windows of at most 30 s
    assert " ".join(e.text for e in made) == row["text"]
    assert [e.id for e in made] == [f"{row['id']}#{k}" for k in range(len(made))]
    for e in made:
        assert 0 < len(e.wave) <= 30 * RATE
        assert e.labels[:2] == list(tokenizer.prefix[:2]) and e.labels[-1] == tokenizer.eos_token_id
        assert tokenizer.prefix[2] not in e.labels  # no <|notimestamps|>: the window is timed
        stamps = [t - tokenizer.timestamp_begin for t in e.labels if t >= tokenizer.timestamp_begin]
        assert len(stamps) == 2 * len(e.segments) and stamps == sorted(stamps)
        assert stamps == [round(x / 0.02) for s in e.segments for x in (s.start, s.end)]
        assert stamps[-1] * 0.02 <= len(e.wave) / RATE + 0.02  # every time is inside the window's audio
        assert tokenizer.decode(e.labels).strip() == " ".join(s.text for s in e.segments)


def test_a_long_row_without_segments_is_still_too_long(tmp_path, tokenizer):
    row = _long_row(tmp_path)
    del row["segments"]
    with pytest.raises(Rejected) as err:
        examples(row, tokenizer, max_duration_s=30.0)
    assert err.value.reason == "too_long" and "segments" in err.value.detail


def test_a_packed_rows_language_reaches_every_window(tmp_path, tokenizer):
    row = _long_row(tmp_path, language="de")
    for e in examples(row, tokenizer, 30.0):
        assert e.labels[0] == labels.language_token(tokenizer, "de")


def test_a_short_row_keeps_its_segments_for_its_timestamps(tmp_path, tokenizer):
    from ray_asr import data

    sf.write(tmp_path / "short.flac", np.zeros(4 * RATE, np.float32), RATE)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "short.flac", "text": "alpha bravo", "start": 0.5,
                                                  "end": 2.26}) + "\n")
    [example] = examples(sources.read_all(tmp_path / "m.jsonl")[0], tokenizer, 30.0)
    assert example.id.endswith(":1") and example.labels[2] == tokenizer.prefix[2]  # plain until the builder times it
    timed = data.timed_or_plain(tokenizer, example.labels, example.wave, example.segments)
    assert timed[2] - tokenizer.timestamp_begin == 25 and timed[-2] - tokenizer.timestamp_begin == 113


@pytest.mark.parametrize("record, message", [
    ({"segments": []}, "non-empty list"),
    ({"segments": [{"start": 1, "end": 2}]}, "text string"),
    ({"segments": [{"start": 2, "end": 1, "text": "a"}]}, "ends"),
    ({"segments": [{"start": 0, "end": 2, "text": "a"}, {"start": 1, "end": 3, "text": "b"}]}, "before segment 0 ends"),
    ({"segments": [{"start": "0", "end": 2, "text": "a"}]}, r"segments\[0\]\.start"),
])
def test_bad_segments_are_named(record, message):
    with pytest.raises(ValueError, match=message):
        windows.parse(record)


def test_a_bad_segments_key_quarantines_the_row_with_its_reason(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.flac", "text": "x", "segments": "soon"}) + "\n")
    row = sources.read_all(tmp_path / "m.jsonl")[0]
    assert row["error"] == "missing_keys" and "segments" in row["error_detail"]


def test_a_crossing_segment_goes_with_the_window_that_holds_most_of_it():
    kept = windows.pack([windows.Segment(1, 10, "a"), windows.Segment(20, 34, "b"), windows.Segment(40, 45, "c")], 50)
    assert [w.text for w in kept] == ["a b", "c"]  # 10 of b's 14 s lie before the 31 s edge
    assert kept[0].segments[-1].end == 30.0 and kept[1].start == 34
    moved = windows.pack([windows.Segment(1, 10, "a"), windows.Segment(25, 39, "b")], 50)
    assert [w.text for w in moved] == ["a", "b"] and moved[0].end == 25 and moved[1].start == 25


def test_a_segment_longer_than_a_window_is_refused():
    with pytest.raises(ValueError, match="over the 30 s window"):
        windows.pack([windows.Segment(0, 31, "a")], 40)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10_000), st.floats(31, 400))
def test_packing_keeps_every_segment_once_in_order_within_windows(seed, duration):
    segments = [windows.Segment(**s) for s in _segments(duration, np.random.default_rng(seed))]
    packed = windows.pack(segments, duration)
    assert [s.text for w in packed for s in w.segments] == [s.text for s in segments]
    for before, after in itertools.pairwise(packed):
        assert before.end <= after.start + 1e-9
    for w in packed:
        assert 0 < w.end - w.start <= 30 + 1e-9 and w.segments
        assert all(0 <= s.start <= s.end <= w.end - w.start + 1e-9 for s in w.segments)


def test_evaluate_scores_a_long_recordings_windows(tmp_path, timed_model):
    from ray_asr import evaluate

    row = _long_row(tmp_path, seconds=70.0)
    report = evaluate.evaluate_source(str(timed_model), str(tmp_path / "long.jsonl"), batch_size=4)
    windows_ = examples(row, labels.load_tokenizer(str(timed_model), "en", "transcribe"), 30.0)
    assert report["rejected"] == {} and report["num_utterances"] == len(windows_) >= 3
    assert [r["reference"] for r in report["per_utterance"]] == [w.text for w in windows_]
