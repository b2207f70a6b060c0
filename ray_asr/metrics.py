"""Word and character error rates after Whisper's text normalisers.

English uses Whisper's English normaliser (numbers, contractions, punctuation, spelling);
other languages the basic normaliser (case, punctuation, diacritics kept).
"""

from __future__ import annotations

import math
from functools import lru_cache

import jiwer

# The one place split names and metric keys are spelled. A history row (one per evaluation) holds each
# evaluation split's metrics under its prefix: `wer`, `eval_loss` for `eval`; `general_wer`,
# `general_eval_loss` for `general_eval`. Unprefixed in-domain keys are what Tune and checkpoints rank on.
EVAL_SPLITS = {"eval": "", "general_eval": "general_"}  # split → key prefix in history rows
SPLITS = ("train", *EVAL_SPLITS)
METRIC_KEYS = ("wer", "cer", "substitutions", "deletions", "insertions", "num_utterances", "runaway_outputs",
               "repetition_rate", "eval_loss")
RATE_KEYS = ("wer", "cer", "repetition_rate")  # shown as percentages


def key(split: str, metric: str) -> str:
    """A split's metric as named in history rows: `key("general_eval", "wer") == "general_wer"`."""
    return EVAL_SPLITS[split] + metric


def split_row(split: str, metrics: dict) -> dict:
    """One split's evaluation (`report` plus `eval_loss`) as history-row keys."""
    return {key(split, name): value for name, value in metrics.items()}


def of_split(row: dict, split: str) -> dict:
    """A split's metrics out of a history row, unprefixed (`METRIC_KEYS` only); empty if it was not evaluated."""
    return {name: row[key(split, name)] for name in METRIC_KEYS if key(split, name) in row}


def best_index(history: list[dict], metric: str, max_general_wer_increase: float | None = None) -> int | None:
    """The history row with the lowest `metric` (the earliest of equals), or None where no row has it. With
    `max_general_wer_increase`, only rows whose general WER is at most that much above the starting model's
    (the history's step-0 row) count: a better in-domain score bought by forgetting is no candidate."""
    base = history[0].get("general_wer") if history and history[0].get("step") == 0 else None

    def kept(row: dict) -> bool:
        if max_general_wer_increase is None or base is None:
            return True
        general = row.get("general_wer")
        return general is not None and not math.isnan(general) and general - base <= max_general_wer_increase + 1e-12

    scored = [(row[metric], i) for i, row in enumerate(history) if row.get(metric) is not None
              and row[metric] == row[metric] and kept(row)]  # NaN (a split too raw to score) never wins
    return min(scored)[1] if scored else None


def stale_evaluations(history: list[dict], metric: str) -> int:
    """Evaluations since the best one by `metric` (all of them when none has it)."""
    best = best_index(history, metric)
    return len(history) - 1 - best if best is not None else len(history)


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


def word_errors(reference: str, hypothesis: str, language: str = "en") -> tuple[int, int]:
    """One utterance's word edits (substitutions + deletions + insertions) and its reference's word count,
    after normalisation: an empty reference makes every hypothesis word an insertion."""
    ref, hyp = normalize(reference, language), normalize(hypothesis, language)
    if not ref or not hyp:
        return len(ref.split()) + len(hyp.split()), len(ref.split())
    words = jiwer.process_words(ref, hyp)
    return words.substitutions + words.deletions + words.insertions, len(ref.split())


# A phrase said four times running is a decoding loop, not speech ("the the" is speech; "....",
# "and and and and" are not). Eight tokens covers a short looping phrase in Whisper's BPE.
LOOP_REPEATS = 4
LOOP_MAX_NGRAM = 8


def has_loop(ids: list[int], max_n: int = LOOP_MAX_NGRAM, repeats: int = LOOP_REPEATS) -> bool:
    """Whether some n-gram (n <= max_n) of `ids` occurs `repeats` times back to back."""
    for n in range(1, max_n + 1):
        span = n * repeats
        for start in range(len(ids) - span + 1):
            gram = ids[start : start + n]
            if all(ids[start + k * n : start + (k + 1) * n] == gram for k in range(1, repeats)):
                return True
    return False


def report(rows: list[dict], language: str = "en") -> dict:
    """Metrics of generated rows `{"reference", "hypothesis", "runaway", "looping"}`: the metric keys of docs/design.md."""
    out = error_rates([r["reference"] for r in rows], [r["hypothesis"] for r in rows], language)
    out["runaway_outputs"] = sum(bool(r["runaway"]) for r in rows)
    out["repetition_rate"] = sum(bool(r["looping"]) for r in rows) / max(len(rows), 1)
    return out
