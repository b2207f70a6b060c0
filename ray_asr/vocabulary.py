"""Custom vocabulary: domain terms given to Whisper as its previous-text prompt (`<|startofprev|> terms`).

At inference the prompt biases decoding toward the terms' spellings without training. At training
(`train.prompt_vocabulary`) a fraction of clips get a prompt of terms before their labels, masked
from the loss, so a fine-tuned model learns to use a prompt rather than ignore it; the prompt mixes
terms the clip says with terms it does not, or the model would learn to copy the prompt into the
transcript.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

SEPARATOR = ", "  # how terms are joined: Whisper saw comma-separated lists in its previous-text training data
# Whisper's previous-text context is at most half its 448 decoder positions; a prompt is cut to stay well
# inside it (the label's own tokens need the rest).
MAX_PROMPT_TOKENS = 223


def read_terms(path: str | Path) -> list[str]:
    """Terms of a vocabulary file: one a line; blank lines and `#` comments skipped, order kept, duplicates dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} does not exist")
    terms = []
    for line in path.read_text(encoding="utf-8").splitlines():
        term = line.split("#", 1)[0].strip()
        if term and term not in terms:
            terms.append(term)
    if not terms:
        raise ValueError(f"vocabulary file {path} holds no terms (one a line)")
    return terms


def prompt_text(prompt: str | None, vocabulary: str | Path | None) -> str | None:
    """The prompt of `--prompt TEXT` or `--vocabulary FILE` (at most one is given); None for neither."""
    if prompt is not None and vocabulary is not None:
        raise ValueError("give --prompt or --vocabulary, not both")
    if vocabulary is not None:
        return SEPARATOR.join(read_terms(vocabulary))
    if prompt is None or not prompt.strip():
        return None
    return prompt.strip()


def prompt_ids(backend, text: str) -> list[int]:
    """`<|startofprev|>` and the prompt's tokens (a leading space, as Whisper's own prompts), newest kept if long.

    `backend`: a Whisper `tokenizers.Tokenizer` (a `LabelTokenizer`'s)."""
    ids = backend.encode(" " + text.strip(), add_special_tokens=False).ids
    return [backend.token_to_id("<|startofprev|>"), *ids[-MAX_PROMPT_TOKENS:]]


def _said(term: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(term.lower())}(?!\w)", text.lower()) is not None


def training_prompt(terms: list[str], text: str, rng: np.random.Generator, distractors: int = 3) -> str:
    """A prompt for one training clip: the terms its transcript says plus up to `distractors` it does not, shuffled."""
    said = [term for term in terms if _said(term, text)]
    others = [term for term in terms if term not in said]
    if others and distractors:
        picked = rng.choice(len(others), size=min(distractors, len(others)), replace=False)
        said += [others[i] for i in picked]
    order = rng.permutation(len(said))
    return SEPARATOR.join(said[i] for i in order)


def term_recall(terms: list[str], rows: list[dict]) -> float | None:
    """Share of term occurrences in the references that the hypotheses also contain (None if no reference says one).

    The figure a vocabulary is for: WER counts every word alike, while a domain cares most about its terms.
    """
    said = heard = 0
    for row in rows:
        for term in terms:
            if _said(term, row["reference"]):
                said += 1
                heard += _said(term, row["hypothesis"])
    return heard / said if said else None


def markdown(table: list[dict]) -> str:
    """The four-way table of `evaluate --compare-vocabulary` as markdown."""
    lines = ["| model | WER | CER | term recall |", "|---|---|---|---|"]
    for row in table:
        recall = "n/a" if row["term_recall"] is None else f"{100 * row['term_recall']:.1f}%"
        lines.append(f"| {row['model']} | {100 * row['wer']:.1f}% | {100 * row['cer']:.1f}% | {recall} |")
    return "\n".join(lines) + "\n"
