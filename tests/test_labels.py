"""Decoder labels: prompt tokens, end-of-text last, no start token, the 448-token bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ray_asr import labels


def test_labels_carry_prompt_and_end_with_end_of_text(tokenizer, tiny_model):
    from transformers import WhisperTokenizer

    hf = WhisperTokenizer.from_pretrained(tiny_model)
    ids = labels.encode(tokenizer, "The patient was started on metoprolol.")
    assert hf.convert_ids_to_tokens(ids[:3]) == ["<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    assert ids[-1] == tokenizer.eos_token_id == hf.eos_token_id
    assert hf.convert_tokens_to_ids("<|startoftranscript|>") not in ids
    assert tokenizer.decode(ids) == "The patient was started on metoprolol."


def test_ids_equal_transformers_whisper_tokenizer(tiny_model):
    from transformers import WhisperTokenizer

    hf = WhisperTokenizer.from_pretrained(tiny_model, language="de", task="translate")
    ours = labels.load_tokenizer(str(tiny_model), "de", "translate")
    for text in ("hallo Welt", " leading space", "Ünïcödé & <b>tags</b>"):
        assert [hf.convert_tokens_to_ids("<|startoftranscript|>"), *labels.encode(ours, text)] == hf(text).input_ids


def test_a_language_name_or_token_means_its_code(tiny_model):
    # transformers writes `generation_config.language = "english"` when it saves a fine-tuned model
    by_code = labels.load_tokenizer(str(tiny_model), "en", "transcribe")
    for spelled in ("english", "English", "<|en|>"):
        assert labels.load_tokenizer(str(tiny_model), spelled, "transcribe").prefix == by_code.prefix


def test_unknown_language_names_the_token(tiny_model):
    import pytest

    with pytest.raises(ValueError, match="<|xx|>"):
        labels.load_tokenizer(str(tiny_model), "xx", "transcribe")


def test_fits_counts_the_start_token():
    assert labels.fits([0] * 447) and not labels.fits([0] * 448)


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=200).filter(lambda t: t.strip()))
def test_any_text_ends_in_end_of_text_once(tokenizer, text):
    ids = labels.encode(tokenizer, text)
    assert ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.eos_token_id) == 1 + text.count("<|endoftext|>")
    assert ids[:3] == list(tokenizer.prefix)


def test_each_rows_language_is_read_back_from_its_labels(tokenizer):
    english, german = labels.encode(tokenizer, "a"), labels.encode(tokenizer, "a", "de")
    assert labels.languages_of(tokenizer, [english, english], "en") == "en"
    assert labels.languages_of(tokenizer, [english, german], "en") == ["en", "de"]
    assert labels.languages_of(tokenizer, [[tokenizer.eos_token_id], german], "fr") == ["fr", "de"]  # a filler row
