"""Generation for evaluation: one batch of log-mels → transcripts with hallucination flags.

The token limit comes from the references (twice the longest label plus a margin), not Whisper's
448: a fine-tuned model that never stops then shows up as a `runaway` output in a few dozen tokens
instead of spending 448 decoder steps per clip.
"""

from __future__ import annotations

import torch

from ray_asr.collate import IGNORE_INDEX
from ray_asr.labels import MAX_TARGET_TOKENS
from ray_asr.metrics import has_loop

PROMPT_TOKENS = 4  # <|startoftranscript|><|lang|><|task|><|notimestamps|>
LABEL_PREFIX = PROMPT_TOKENS - 1  # labels carry the prompt without the start token


def token_limit(labels: torch.Tensor) -> int:
    """New tokens allowed for a batch: twice the longest reference (text + end-of-text) plus 8."""
    longest = int((labels != IGNORE_INDEX).sum(dim=1).max()) - LABEL_PREFIX
    return max(1, min(MAX_TARGET_TOKENS - PROMPT_TOKENS, 2 * longest + 8))


@torch.no_grad()
def generate(model, features: torch.Tensor, max_new_tokens: int, eos_token_id: int, synced_gpus: bool = False):
    """Greedy transcripts' token ids (prompt removed, cut at end-of-text) and whether each ran away.

    `synced_gpus` keeps every rank stepping the decoder until all ranks finish (ZeRO-3 gathers
    parameters collectively on each forward, so a rank that stopped early would hang the rest).
    """
    out = model.generate(input_features=features, max_new_tokens=max_new_tokens, synced_gpus=synced_gpus,
                         return_dict_in_generate=True)
    ids, runaway = [], []
    for row in out.sequences[:, PROMPT_TOKENS:].tolist():
        stop = row.index(eos_token_id) if eos_token_id in row else None
        ids.append(row[:stop])
        runaway.append(stop is None and len(row) >= max_new_tokens)
    return ids, runaway


def rows(tokenizer, ids: list[list[int]], runaway: list[bool], references: list[str], row_ids: list[str]) -> list[dict]:
    """Per-utterance report rows."""
    return [{"id": i, "reference": ref, "hypothesis": tokenizer.decode(tokens).strip(), "runaway": bool(run),
             "looping": has_loop(tokens)}
            for i, ref, tokens, run in zip(row_ids, references, ids, runaway, strict=True)]
