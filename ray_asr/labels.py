"""Whisper decoder labels: `<|lang|><|task|><|notimestamps|> text <|endoftext|>`, or with timestamps
`<|lang|><|task|><|0.48|> text <|2.10|><|endoftext|>` (`timed`).

The start-of-transcript token is not part of the labels: Whisper shifts labels right and puts
`decoder_start_token_id` (`<|startoftranscript|>`) in front itself. End-of-text is always last,
or a fine-tuned model never learns to stop.

The data tier reads the model's `tokenizer.json` with the `tokenizers` library alone, so decode
actors start without importing transformers or torch; the ids equal `WhisperTokenizer`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MAX_TARGET_TOKENS = 448  # Whisper's decoder positions (max_target_positions), start token included
TIME_PRECISION_S = 0.02  # Whisper's timestamp tokens <|0.00|> .. <|30.00|>: 1501 of them, 20 ms apart
LAST_TIMESTAMP_S = 30.0


@dataclass(frozen=True)
class LabelTokenizer:
    """Text → label ids for one language and task."""

    backend: object
    """A `tokenizers.Tokenizer` (Whisper's byte-level BPE)."""
    prefix: tuple[int, ...]
    """`<|lang|>`, `<|task|>`, `<|notimestamps|>` ids."""
    eos_token_id: int
    """`<|endoftext|>`."""
    timestamp_begin: int | None = None
    """`<|0.00|>`, the first of the timestamp tokens; None where the vocabulary has none."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)


def language_code(language: str) -> str:
    """Whisper's code for a language given as a code (`en`), a token (`<|en|>`) or a name (`english`, as
    transformers writes it into a generation config)."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    language = language.strip("<|>").lower()
    return TO_LANGUAGE_CODE.get(language, language)


@lru_cache(maxsize=4)
def load_tokenizer(model_dir: str, language: str, task: str) -> LabelTokenizer:
    """The label tokenizer of a Whisper folder (its tokenizer.json), cached per process."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{model_dir}: no tokenizer.json (save the tokenizer with transformers first)")
    backend = Tokenizer.from_file(str(path))

    def token_id(token: str) -> int:
        found = backend.token_to_id(token)
        if found is None:
            raise ValueError(f"{model_dir}: tokenizer has no {token} token (language or task not supported)")
        return found

    language_id = _language_id(backend, language)
    if language_id is None:
        raise ValueError(f"{model_dir}: tokenizer has no <|{language_code(language)}|> token (language or task not "
                         "supported)")
    prefix = (language_id, token_id(f"<|{task}|>"), token_id("<|notimestamps|>"))
    return LabelTokenizer(backend, prefix, token_id("<|endoftext|>"), backend.token_to_id("<|0.00|>"))


def _language_id(backend, language: str) -> int | None:
    """The `<|xx|>` id of a language given as a code, token or name, or None. A code (`en`) is a token of the
    vocabulary; only a name (`english`) needs transformers' table, whose import the decode actors of the data
    tier should not pay."""
    found = backend.token_to_id(f"<|{language.strip('<|>').lower()}|>")
    return found if found is not None else backend.token_to_id(f"<|{language_code(language)}|>")


def language_token(tokenizer: LabelTokenizer, language: str) -> int:
    """The `<|xx|>` id of a language given as a code, token or name; ValueError when Whisper has none."""
    found = _language_id(tokenizer.backend, language)
    if found is None:
        raise ValueError(f"language {language!r} is not one of Whisper's (a code such as en, de, sw, or its name)")
    return found


def is_language_code(code: str) -> bool:
    """Whether `code` has the form of a language token's code: 2-3 lowercase letters (`en`, `haw`, or a language
    `model.new_language` added); Whisper's other special tokens (`transcribe`, `nospeech`, ...) are longer."""
    return 2 <= len(code) <= 3 and code.isascii() and code.isalpha() and code.islower()


def generation_language(code: str) -> str:
    """A language as `generate(language=...)` takes it: Whisper's own by code, an added one by its token
    (transformers looks codes up in its fixed table, tokens in the model's `lang_to_id`)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return code if code in LANGUAGES or not is_language_code(code) else f"<|{code}|>"


def languages_of(tokenizer: LabelTokenizer, label_rows, default: str) -> str | list[str]:
    """The language code each row of labels starts with (`<|de|>` → `de`; `default` for a row that starts with
    something else), as generation takes it: one code when every row shares it, else one per row."""
    codes = []
    for row in label_rows:
        code = (tokenizer.backend.id_to_token(int(row[0])) or "").strip("<|>") if len(row) else ""
        codes.append(code if is_language_code(code) else default)
    return codes[0] if len(set(codes)) == 1 else codes


def prefix(tokenizer: LabelTokenizer, language: str | None = None) -> tuple[int, ...]:
    """The language, task and no-timestamps tokens that start a transcript's labels; `language` (a row's own)
    replaces the tokenizer's language token."""
    return tokenizer.prefix if not language else (language_token(tokenizer, language), *tokenizer.prefix[1:])


def encode(tokenizer: LabelTokenizer, text: str, language: str | None = None) -> list[int]:
    """Label ids for one transcript, ending in end-of-text, without the start token (`prefix` first)."""
    return [*prefix(tokenizer, language), *tokenizer.backend.encode(text, add_special_tokens=False).ids,
            tokenizer.eos_token_id]


def timestamp_token(tokenizer: LabelTokenizer, seconds: float) -> int:
    """The timestamp token nearest `seconds` on Whisper's 20 ms grid (clipped to the 30 s window)."""
    if tokenizer.timestamp_begin is None:
        raise ValueError("the tokenizer has no timestamp tokens (<|0.00|> .. <|30.00|>)")
    return tokenizer.timestamp_begin + round(min(max(seconds, 0.0), LAST_TIMESTAMP_S) / TIME_PRECISION_S)


def timed(tokenizer: LabelTokenizer, labels: list[int], start_s: float, end_s: float) -> list[int]:
    """`encode`'s labels with the text between timestamp tokens instead of after `<|notimestamps|>`: how Whisper
    was trained to mark a segment, and what its long-form decoding seeks by."""
    language_and_task, text = labels[: len(tokenizer.prefix) - 1], labels[len(tokenizer.prefix) : -1]
    start = timestamp_token(tokenizer, start_s)
    return [*language_and_task, start, *text, max(start, timestamp_token(tokenizer, end_s)), tokenizer.eos_token_id]


def timed_segments(tokenizer: LabelTokenizer, segments, language: str | None = None) -> list[int]:
    """Labels for a window of timed segments (`windows.Segment`, seconds from the window's start): each
    segment's text between its start and end timestamp tokens, as Whisper marks consecutive segments."""
    head = encode(tokenizer, "", language)[: len(tokenizer.prefix) - 1]
    body = []
    for s in segments:
        start = timestamp_token(tokenizer, s.start)
        text = tokenizer.backend.encode(" " + s.text, add_special_tokens=False).ids
        body += [start, *text, max(start, timestamp_token(tokenizer, s.end))]
    return [*head, *body, tokenizer.eos_token_id]


def fits(labels: list[int]) -> bool:
    """Whether labels plus the start token fit Whisper's 448 decoder positions."""
    return len(labels) + 1 <= MAX_TARGET_TOKENS
