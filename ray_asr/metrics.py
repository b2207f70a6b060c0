"""Word and character error rates after Whisper's text normalisers.

English uses Whisper's English normaliser (numbers, contractions, punctuation, spelling);
other languages the basic normaliser (case, punctuation, diacritics kept).
"""

from __future__ import annotations

from functools import lru_cache

import jiwer


@lru_cache(maxsize=4)
def _normalizer(language: str):
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    return EnglishTextNormalizer({}) if language == "en" else BasicTextNormalizer()


def normalize(text: str, language: str = "en") -> str:
    """The text as scored: normalised, single-spaced."""
    return " ".join(_normalizer(language)(text).split())


def error_rates(references: list[str], hypotheses: list[str], language: str = "en") -> dict:
    """Corpus WER/CER and edit counts over normalised texts; empty references are skipped."""
    pairs = [(normalize(r, language), normalize(h, language)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return {"wer": 0.0, "cer": 0.0, "substitutions": 0, "deletions": 0, "insertions": 0, "num_utterances": 0}
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    words = jiwer.process_words(refs, hyps)
    return {
        "wer": words.wer,
        "cer": jiwer.cer(refs, hyps),
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "num_utterances": len(pairs),
    }
