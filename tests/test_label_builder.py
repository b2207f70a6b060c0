"""The label builder (`data.labels`): timestamp tokens on the 20 ms grid around the text, at the speech's bounds
found by an energy VAD, for a seeded share of training rows (refused with time-moving augmentation); another
clip's transcript as previous-text context, masked from the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_asr import audio, config, data, labels
from ray_asr.config import ConfigError

RATE = audio.SAMPLE_RATE


@pytest.fixture(scope="module")
def tokenizer(timed_tokenizer):  # this module's clips are labelled with timestamps
    return timed_tokenizer


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 29.9), st.floats(0, 0.1), st.floats(0, 30))
def test_timestamps_tokenise_on_the_20_ms_grid(tokenizer, start, length, end_extra):
    plain = labels.encode(tokenizer, "the dose")
    end = min(30.0, start + length + end_extra)
    ids = labels.timed(tokenizer, plain, start, end)
    lang, task, notimestamps = tokenizer.prefix
    assert ids[:2] == [lang, task] and notimestamps not in ids and ids[-1] == tokenizer.eos_token_id
    assert ids[3:-2] == plain[3:-1]  # the text, unchanged, between the two timestamps
    first, last = ids[2] - tokenizer.timestamp_begin, ids[-2] - tokenizer.timestamp_begin
    assert first == round(start / 0.02) and last == max(first, round(end / 0.02)) and 0 <= first <= last <= 1500
    assert tokenizer.backend.id_to_token(ids[2]) == f"<|{first * 0.02:.2f}|>"


def _burst(before_s: float, speech_s: float, after_s: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    silence = lambda s: 1e-5 * rng.standard_normal(round(s * RATE))
    t = np.arange(round(speech_s * RATE)) / RATE
    speech = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return np.concatenate([silence(before_s), speech, silence(after_s)]).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(st.floats(0, 3), st.floats(0.2, 4), st.floats(0, 3))
def test_speech_bounds_find_the_speech_within_a_frame(before, speech, after):
    start, end = audio.speech_bounds(_burst(before, speech, after))
    assert abs(start - before) <= 0.02 + 1e-9 and abs(end - (before + speech)) <= 0.02 + 1e-9


def test_a_silent_clip_is_bounded_by_itself():
    assert audio.speech_bounds(np.zeros(RATE, np.float32)) == (0.0, 1.0)
    assert audio.speech_bounds(np.zeros(10, np.float32)) == (0.0, 10 / RATE)


def test_timed_labels_fall_back_to_plain_when_they_do_not_fit(tokenizer):
    wave = _burst(0.5, 1.0, 0.5)
    short = labels.encode(tokenizer, "the dose")
    timed = data.timed_or_plain(tokenizer, short, wave)
    assert timed[2] - tokenizer.timestamp_begin == 25 and timed[-2] - tokenizer.timestamp_begin == 75
    full = labels.encode(tokenizer, "x" * (labels.MAX_TARGET_TOKENS - 5))  # fits plain, one token short with times
    assert labels.fits(full) and data.timed_or_plain(tokenizer, full, wave) == full


def test_a_seeded_share_of_rows_gets_timestamps_the_same_every_time():
    ids = [f"row-{i}" for i in range(2000)]
    chosen = [data.with_timestamps(7, i, 0.5) for i in ids]
    assert 0.45 < np.mean(chosen) < 0.55 and chosen == [data.with_timestamps(7, i, 0.5) for i in ids]
    assert chosen != [data.with_timestamps(8, i, 0.5) for i in ids]
    assert not any(data.with_timestamps(7, i, 0.0) for i in ids) and all(data.with_timestamps(7, i, 1.0) for i in ids)


def test_a_timed_batch_trains(timed_model, tokenizer):
    """Timestamp labels go through the model's loss like any others, and the loss has a gradient."""
    from transformers import WhisperForConditionalGeneration

    from ray_asr.collate import pad_labels
    from ray_asr.features import log_mel

    model = WhisperForConditionalGeneration.from_pretrained(timed_model)
    wave = _burst(0.3, 1.2, 0.4)
    rows = [labels.timed(tokenizer, labels.encode(tokenizer, "the dose"), *audio.speech_bounds(wave)),
            labels.encode(tokenizer, "no times")]
    features = log_mel(torch.from_numpy(np.stack([wave, wave])), model.config.num_mel_bins)
    loss = model(input_features=features, labels=pad_labels(rows)).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.decoder.embed_tokens.weight.grad[tokenizer.timestamp_begin + 15].abs().sum() > 0


@pytest.mark.parametrize(("values", "says"), [
    ({"data": {"labels": {"timestamps": 1.5}}}, "data.labels.timestamps: must be in [0, 1]"),
    ({"data": {"labels": {"timestamps": 0.5}}, "augment": [{"name": "speed", "p": 0.5}]},
     "data.labels.timestamps: cannot be used with augment speed"),
    ({"data": {"labels": {"timestmps": 0.5}}}, "timestmps"),
    ({"data": {"labels": {"previous_text": -0.1}}}, "data.labels.previous_text: must be in [0, 1]"),
    ({"data": {"labels": {"no_speech": 2}}}, "data.labels.no_speech: must be in [0, 1]"),
])
def test_label_config_errors_name_the_key(values, says):
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        config.from_dict(values)


def test_noise_augmentation_and_timestamps_go_together():
    cfg = config.from_dict({"data": {"labels": {"timestamps": 0.5}}, "augment": [{"name": "noise", "p": 0.5}]})
    assert cfg.data.labels.timestamps == 0.5


def test_previous_text_prompts_carry_another_clips_transcript_masked(tokenizer):
    from ray_asr import vocabulary
    from ray_asr.collate import IGNORE_INDEX, PromptMaker

    texts = ["first clip", "second one", "third"]
    plain = [labels.encode(tokenizer, t) for t in texts]
    start = tokenizer.backend.token_to_id("<|startoftranscript|>")
    maker = PromptMaker([], 0.0, 0, tokenizer, start, previous_text=1.0)
    inputs, targets = maker(plain, texts, np.random.default_rng(0))
    for i, ids in enumerate(plain):
        prompt = vocabulary.prompt_ids(tokenizer.backend, texts[i - 1])
        assert inputs[i, : len(prompt) + 1].tolist() == [*prompt, start]
        assert targets[i, : len(prompt)].tolist() == [IGNORE_INDEX] * len(prompt)
        assert targets[i, len(prompt) : len(prompt) + len(ids)].tolist() == ids
    alone_inputs, alone_targets = maker(plain[:1], texts[:1], np.random.default_rng(0))  # no other clip: no prompt
    assert alone_inputs[0, 0] == start and alone_targets[0].tolist() == plain[0]
    never = PromptMaker([], 0.0, 0, tokenizer, start, previous_text=0.0)
    assert (never(plain, texts, np.random.default_rng(0))[1] != IGNORE_INDEX).sum() == sum(map(len, plain))


def test_the_utterance_before_is_the_prompt_where_it_is_known(tokenizer):
    from ray_asr import vocabulary
    from ray_asr.collate import IGNORE_INDEX, PromptMaker

    texts = ["window two", "another speaker"]
    plain = [labels.encode(tokenizer, t) for t in texts]
    start = tokenizer.backend.token_to_id("<|startoftranscript|>")
    maker = PromptMaker([], 0.0, 0, tokenizer, start, previous_text=1.0)
    inputs, targets = maker(plain, texts, np.random.default_rng(0), previous=["window one", None])
    known = vocabulary.prompt_ids(tokenizer.backend, "window one")
    assert inputs[0, : len(known) + 1].tolist() == [*known, start]
    assert targets[0, : len(known)].tolist() == [IGNORE_INDEX] * len(known)
    fallback = vocabulary.prompt_ids(tokenizer.backend, texts[0])  # unknown: another clip's transcript
    assert inputs[1, : len(fallback) + 1].tolist() == [*fallback, start]
    alone, _ = maker(plain[:1], texts[:1], np.random.default_rng(0), previous=["window one"])
    assert alone[0, : len(known) + 1].tolist() == [*known, start]  # a clip alone still gets its own context


def test_no_speech_noise_comes_from_the_users_recordings_too(tmp_path, tokenizer):
    import soundfile as sf

    from ray_asr.collate import NoSpeechMaker

    hum = 0.5 * np.sin(2 * np.pi * 50 * np.arange(RATE) / RATE).astype(np.float32)
    sf.write(tmp_path / "fan.wav", hum, RATE)
    maker = NoSpeechMaker(1.0, (1, 2, 3, 4), noise_files=(str(tmp_path),))
    batch = maker({"audio": [np.zeros(10, np.float32)] * 60, "id": list(range(60)), "text": [""] * 60,
                   "labels": [[1]] * 60}, np.random.default_rng(0))
    spectra = [np.abs(np.fft.rfft(w[:RATE])) for w in list(batch["audio"])[60:] if np.any(w)]
    hums = [s for s in spectra if s.argmax() == 50 and s[50] > 10 * np.median(s)]  # 1 s at 16 kHz: 1 Hz bins
    assert 0.3 * len(spectra) < len(hums) < 0.7 * len(spectra)  # about half from the recording


def test_no_speech_clips_join_a_batch_with_an_empty_transcript(tokenizer):
    from ray_asr.collate import NO_SPEECH_ID, NoSpeechMaker, WhisperCollator

    empty = (*tokenizer.prefix, tokenizer.eos_token_id)
    speech = [audio.to_wire(_burst(0.1, 1.0, 0.1, seed=i), "int16") for i in range(8)]
    batch = {"audio": np.array(speech + [None], dtype=object)[:-1], "id": np.array([f"r{i}" for i in range(8)]),
             "text": np.array(["a clip"] * 8), "labels": np.array([labels.encode(tokenizer, "a clip")] * 8 + [None],
                                                                 dtype=object)[:-1]}
    collator = WhisperCollator(n_mels=80, keep=("id", "text"), seed=3, no_speech=NoSpeechMaker(1.0, empty))
    out = collator(batch)
    added = [i for i, row_id in enumerate(out["id"]) if row_id.startswith(NO_SPEECH_ID)]
    assert out["id"][:8] == [f"r{i}" for i in range(8)] and len(added) == 8  # share 1.0: one per real clip
    for i in added:
        row = out["labels"][i]
        assert row[row != -100].tolist() == list(empty) and out["text"][i] == ""
    assert out["input_features"].shape[0] == 16 and torch.isfinite(out["input_features"]).all()
    few = WhisperCollator(n_mels=80, keep=("id",), seed=3, no_speech=NoSpeechMaker(0.05, empty))
    counts = [len(few(batch)["id"]) - 8 for _ in range(200)]
    assert 0.2 < np.mean(counts) < 0.6  # 8 x 0.05 = 0.4 expected per batch


def test_no_speech_clips_are_noise_or_silence_at_a_speech_free_level(tokenizer):
    from ray_asr.collate import NO_SPEECH_DBFS, NoSpeechMaker

    maker = NoSpeechMaker(1.0, (1, 2, 3, 4))
    batch = maker({"audio": [np.zeros(10, np.float32)] * 40, "id": list(range(40)), "text": [""] * 40,
                   "labels": [[1]] * 40}, np.random.default_rng(0))
    added = list(batch["audio"])[40:]
    levels = [20 * np.log10(np.sqrt(np.mean(w.astype(np.float64) ** 2))) for w in added if np.any(w)]
    assert len(added) == 40 and 0 < len(levels) < 40  # some silent, most noise
    assert all(NO_SPEECH_DBFS[0] - 0.1 <= level <= NO_SPEECH_DBFS[1] + 0.1 for level in levels)
    assert all(1.0 <= len(w) / RATE <= 10.0 for w in added)


def test_no_speech_clips_never_enter_the_activation_cache():
    from ray_asr.collate import NO_SPEECH_ID
    from ray_asr.train import cache_keys

    assert cache_keys("train", ["a", f"{NO_SPEECH_ID}7", "b"], True) == ["train/a", None, "train/b"]
    assert cache_keys("train", ["a", "b"], False) == [None, None]


def test_timestamps_keep_a_rows_own_language(tokenizer):
    german = labels.encode(tokenizer, "guten Tag", "de")
    timed = labels.timed(tokenizer, german, 0.2, 1.0)
    assert timed[:2] == german[:2] and timed[0] == tokenizer.backend.token_to_id("<|de|>")
