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
def generate(model, limits: list[int], eos_token_id: int, synced_gpus: bool = False, max_new_tokens: int | None = None,
             language: str | None = None, task: str | None = None, **inputs):
    """Greedy transcripts' token ids (prompt removed, cut at end-of-text) and whether each ran away.

    `inputs`: `input_features` (log-mel), or `encoder_outputs` already computed (evaluation during
    training runs the encoder once for the loss and the decoding). The batch decodes up to
    `max_new_tokens` (default: the largest limit), and each clip is then judged against its own
    limit, so results do not depend on which clips share a batch. `synced_gpus` keeps every rank
    stepping the decoder until all ranks finish (ZeRO-3 gathers parameters collectively on each
    forward, so a rank that stopped early would hang the rest).
    """
    prompt = {key: value for key, value in (("language", language), ("task", task)) if value}
    out = model.generate(**inputs, **prompt, max_new_tokens=max_new_tokens or max(limits), synced_gpus=synced_gpus,
                         return_dict_in_generate=True)
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


def evaluate_source(model_dir: str, source: str, batch_size: int = 8, language: str | None = None) -> dict:
    """`ray-asr evaluate`: WER/CER and hallucination counts of a model on a manifest, in this process.

    Rows go through the training pipeline's own checks (`prepare`); rejected ones are counted by
    reason, not scored. Returns the metrics plus `rejected` and `per_utterance`.
    """
    from transformers.utils import logging as hf_logging

    from ray_asr import labels, metrics, sources
    from ray_asr.audio import Rejected
    from ray_asr.collate import pad_labels, stack_waves
    from ray_asr.features import log_mel
    from ray_asr.model import load
    from ray_asr.prepare import prepare

    hf_logging.set_verbosity_error()  # one warning per batch about max_length otherwise
    model = load(model_dir).eval()
    # The code, not the name transformers saves ("english"): it picks the tokenizer's prompt and the normaliser.
    language = labels.language_code(language or model.generation_config.language or "en")
    tokenizer = labels.load_tokenizer(model_dir, language, model.generation_config.task or "transcribe")
    accepted, rejected = [], {}
    for row in sources.read_all(source):
        try:
            wave, ids = prepare(row, tokenizer, 30.0)
        except Rejected as err:
            rejected[err.reason] = rejected.get(err.reason, 0) + 1
            continue
        accepted.append((row["id"], row["text"].strip(), wave, ids))
    per_utterance = []
    for start in range(0, len(accepted), batch_size):
        chunk = accepted[start : start + batch_size]
        features = log_mel(stack_waves([wave for _, _, wave, _ in chunk]), model.config.num_mel_bins)
        limits = token_limits(pad_labels([ids for *_, ids in chunk]))
        ids, runaway = generate(model, limits, tokenizer.eos_token_id, input_features=features)
        per_utterance += rows(tokenizer, ids, runaway, [text for _, text, _, _ in chunk], [i for i, *_ in chunk])
    report = metrics.report(per_utterance, language)
    return {**report, "rejected": dict(sorted(rejected.items())), "per_utterance": per_utterance}
