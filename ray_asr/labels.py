"""Whisper decoder labels: `<|lang|><|task|><|notimestamps|> text <|endoftext|>`.

The start-of-transcript token is not part of the labels: Whisper shifts labels right and puts
`decoder_start_token_id` (`<|startoftranscript|>`) in front itself. End-of-text is always last,
or a fine-tuned model never learns to stop.
"""

from __future__ import annotations

from functools import lru_cache

MAX_TARGET_TOKENS = 448  # Whisper's decoder positions (max_target_positions), start token included


@lru_cache(maxsize=4)
def load_tokenizer(model_dir: str, language: str, task: str):
    """The model's tokenizer with the decoder prompt set for `language` and `task` (cached per process)."""
    from transformers import WhisperTokenizer

    tokenizer = WhisperTokenizer.from_pretrained(model_dir)
    tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    return tokenizer


def encode(tokenizer, text: str) -> list[int]:
    """Label ids for one transcript, ending in end-of-text, without the start token."""
    ids = tokenizer(text).input_ids
    if ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    return ids[1:] if ids[0] == start else ids


def fits(labels: list[int]) -> bool:
    """Whether labels plus the start token fit Whisper's 448 decoder positions."""
    return len(labels) + 1 <= MAX_TARGET_TOKENS
