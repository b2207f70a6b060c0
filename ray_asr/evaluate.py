"""Generation for evaluation: one batch of log-mels → transcripts with hallucination flags.

Each clip's token limit comes from its reference (twice its label plus a margin), not Whisper's 448:
a fine-tuned model that never stops shows up as a `runaway` output within a few dozen tokens
instead of spending 448 decoder steps per clip.
"""

from __future__ import annotations

import torch

from ray_asr.collate import IGNORE_INDEX
from ray_asr.labels import MAX_TARGET_TOKENS
from ray_asr.metrics import has_loop

PROMPT_TOKENS = 4  # <|startoftranscript|><|lang|><|task|><|notimestamps|>
LABEL_PREFIX = PROMPT_TOKENS - 1  # labels carry the prompt without the start token


def token_limits(labels: torch.Tensor) -> list[int]:
    """New tokens allowed per clip: twice its reference (text + end-of-text) plus 8, within Whisper's positions."""
    lengths = (labels != IGNORE_INDEX).sum(dim=1) - LABEL_PREFIX
    return [max(1, min(MAX_TARGET_TOKENS - PROMPT_TOKENS, 2 * int(n) + 8)) for n in lengths]


@torch.no_grad()
def generate(model, features: torch.Tensor, limits: list[int], eos_token_id: int, synced_gpus: bool = False,
             max_new_tokens: int | None = None):
    """Greedy transcripts' token ids (prompt removed, cut at end-of-text) and whether each ran away.

    The batch decodes up to `max_new_tokens` (default: the largest limit), and each clip is then
    judged against its own limit, so results do not depend on which clips share a batch.
    `synced_gpus` keeps every rank stepping the decoder until all ranks finish (ZeRO-3 gathers
    parameters collectively on each forward, so a rank that stopped early would hang the rest).
    """
    out = model.generate(input_features=features, max_new_tokens=max_new_tokens or max(limits),
                         synced_gpus=synced_gpus, return_dict_in_generate=True)
    ids, runaway = [], []
    for row, limit in zip(out.sequences[:, PROMPT_TOKENS:].tolist(), limits, strict=True):
        row = row[:limit]
        stop = row.index(eos_token_id) if eos_token_id in row else None
        ids.append(row[:stop])
        runaway.append(stop is None)
    return ids, runaway


def rows(tokenizer, ids: list[list[int]], runaway: list[bool], references: list[str], row_ids: list[str]) -> list[dict]:
    """Per-utterance report rows."""
    return [{"id": i, "reference": ref, "hypothesis": tokenizer.decode(tokens).strip(), "runaway": bool(run),
             "looping": has_loop(tokens)}
            for i, ref, tokens, run in zip(row_ids, references, ids, runaway, strict=True)]
