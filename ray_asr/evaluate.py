"""Generation for evaluation: one batch of log-mels → transcripts with hallucination flags.

Each clip's token limit comes from its reference (twice its label plus a margin), not Whisper's 448:
a fine-tuned model that never stops shows up as a `runaway` output within a few dozen tokens
instead of spending 448 decoder steps per clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ray_asr import labels
from ray_asr.collate import IGNORE_INDEX
from ray_asr.labels import MAX_TARGET_TOKENS, languages_of
from ray_asr.metrics import has_loop

PROMPT_TOKENS = 4  # <|startoftranscript|><|lang|><|task|><|notimestamps|>
LABEL_PREFIX = PROMPT_TOKENS - 1  # labels carry the prompt without the start token


def token_limits(labels: torch.Tensor) -> list[int]:
    """New tokens allowed per clip: twice its reference (text + end-of-text) plus 8, within Whisper's positions."""
    lengths = (labels != IGNORE_INDEX).sum(dim=1) - LABEL_PREFIX
    return [max(1, min(MAX_TARGET_TOKENS - PROMPT_TOKENS, 2 * int(n) + 8)) for n in lengths]


@torch.no_grad()
def generate(model, limits: list[int], eos_token_id: int, synced_gpus: bool = False, max_new_tokens: int | None = None,
             language: str | None = None, task: str | None = None, prompt_ids: torch.Tensor | None = None,
             beam_size: int = 1, **inputs):
    """Transcripts' token ids (prompt removed, cut at end-of-text) and whether each ran away.

    `inputs`: `input_features` (log-mel), or `encoder_outputs` already computed (evaluation during
    training runs the encoder once for the loss and the decoding). The batch decodes up to
    `max_new_tokens` (default: the largest limit), and each clip is then judged against its own
    limit, so results do not depend on which clips share a batch. `synced_gpus` keeps every rank
    stepping the decoder until all ranks finish (ZeRO-3 gathers parameters collectively on each
    forward, so a rank that stopped early would hang the rest). `prompt_ids` (`<|startofprev|>` and
    the terms' tokens) is Whisper's previous-text prompt: custom vocabulary. `beam_size` 1 is greedy
    (what evaluation during training uses); 5 is what faster-whisper deploys with by default.
    """
    if language:  # a language `model.new_language` added goes by its token
        language = (labels.generation_language(language) if isinstance(language, str)
                    else [labels.generation_language(code) for code in language])
    prompt = {key: value for key, value in (("language", language), ("task", task)) if value}
    if prompt_ids is not None:
        prompt["prompt_ids"] = prompt_ids
    out = model.generate(**inputs, **prompt, max_new_tokens=max_new_tokens or max(limits), synced_gpus=synced_gpus,
                         num_beams=beam_size, return_dict_in_generate=True)
    # The returned sequences start with the previous-text prompt, then the 4 start tokens.
    skip = PROMPT_TOKENS + (len(prompt_ids) if prompt_ids is not None else 0)
    ids, runaway = [], []
    for row, limit in zip(out.sequences[:, skip:].tolist(), limits, strict=True):
        text, ran = cut(row, limit, eos_token_id)
        ids.append(text)
        runaway.append(ran)
    return ids, runaway


def cut(generated: list[int], limit: int, eos_token_id: int) -> tuple[list[int], bool]:
    """A clip's generated tokens (after its prompt) within its token limit, cut at end-of-text, and whether it
    ran away (no end-of-text within the limit)."""
    row = generated[:limit]
    if eos_token_id in row:
        return row[: row.index(eos_token_id)], False
    return row, True


def rows(tokenizer, ids: list[list[int]], runaway: list[bool], references: list[str], row_ids: list[str]) -> list[dict]:
    """Per-utterance report rows."""
    return [{"id": i, "reference": ref, "hypothesis": tokenizer.decode(tokens).strip(), "runaway": bool(run),
             "looping": has_loop(tokens)}
            for i, ref, tokens, run in zip(row_ids, references, ids, runaway, strict=True)]


@dataclass
class Clip:
    """One accepted evaluation row, decoded and tokenised by the training pipeline's own `prepare`."""

    id: str
    text: str
    wave: np.ndarray
    labels: list[int]


def read_clips(source: str, tokenizer, max_duration_s: float = 30.0) -> tuple[list[Clip], dict[str, int]]:
    """The accepted clips of a manifest (or any source `sources` reads; a long recording with `segments` as its 30 s
    windows, as training sees it) and the rejected rows' count by reason."""
    from ray_asr import sources
    from ray_asr.audio import Rejected
    from ray_asr.prepare import examples

    accepted, rejected = [], {}
    for row in sources.read_all(source):
        try:
            made = examples(row, tokenizer, max_duration_s)  # a long recording with segments: its windows
        except Rejected as err:
            rejected[err.reason] = rejected.get(err.reason, 0) + 1
            continue
        accepted += [Clip(e.id, e.text, e.wave, e.labels) for e in made]
    return accepted, dict(sorted(rejected.items()))


class Scorer:
    """A model loaded once for scoring many clip sets (conditions, prompts) in this process."""

    def __init__(self, model_dir: str, language: str | None = None, batch_size: int = 8, device: str | None = None,
                 beam_size: int = 1, model=None):
        """`model`: one already loaded (training's own, evaluated in place); `model_dir` then gives its tokenizer."""
        from transformers.utils import logging as hf_logging

        from ray_asr import labels
        from ray_asr.model import load

        hf_logging.set_verbosity_error()  # one warning per batch about max_length otherwise
        self.model_dir, self.batch_size, self.beam_size = model_dir, batch_size, beam_size
        if model is None:
            self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.model = load(model_dir).eval().to(self.device)
        else:
            self.model, self.device = model, next(model.parameters()).device
        config = self.model.generation_config
        # The code, not the name transformers saves ("english"): it picks the tokenizer's prompt and the normaliser.
        self.language = labels.language_code(language or config.language or "en")
        self.tokenizer = labels.load_tokenizer(model_dir, self.language, config.task or "transcribe")

    def features(self, waves: list[np.ndarray]) -> torch.Tensor:
        """Log-mel of a batch of waves on the model's device, in its dtype (a model training in bf16 takes bf16)."""
        from ray_asr.collate import stack_waves
        from ray_asr.features import log_mel

        features = log_mel(stack_waves(waves).to(self.device), self.model.config.num_mel_bins)
        return features.to(self.model.dtype)

    def prompt_ids(self, prompt: str | None) -> torch.Tensor | None:
        from ray_asr import vocabulary

        if not prompt:
            return None
        return torch.tensor(vocabulary.prompt_ids(self.tokenizer.backend, prompt), device=self.device)

    def rows(self, clips: list[Clip], prompt: str | None = None, transform=None, language: str | None = None) -> list[dict]:
        """Per-utterance rows for `clips`, each wave first passed through `transform(wave, clip)` if given;
        `language` forces the decoding's language token (default: each clip's own, from its row's `language` or
        the model's)."""
        from ray_asr.collate import pad_labels

        prompt_ids = self.prompt_ids(prompt)
        out = []
        for start in range(0, len(clips), self.batch_size):
            chunk = clips[start : start + self.batch_size]
            waves = [transform(c.wave, c) if transform else c.wave for c in chunk]
            features = self.features(waves)
            limits = token_limits(pad_labels([c.labels for c in chunk]))
            if prompt_ids is not None:  # the prompt takes decoder positions from the transcript
                limits = [max(1, min(limit, MAX_TARGET_TOKENS - PROMPT_TOKENS - len(prompt_ids))) for limit in limits]
            ids, runaway = generate(self.model, limits, self.tokenizer.eos_token_id, prompt_ids=prompt_ids,
                                    beam_size=self.beam_size, input_features=features,
                                    language=language or languages_of(self.tokenizer, [c.labels for c in chunk], self.language))
            out += rows(self.tokenizer, ids, runaway, [c.text for c in chunk], [c.id for c in chunk])
        return out

    def report(self, clips: list[Clip], prompt: str | None = None, transform=None) -> dict:
        from ray_asr import metrics

        per_utterance = self.rows(clips, prompt, transform)
        return {**metrics.report(per_utterance, self.language), "per_utterance": per_utterance}


def evaluate_source(model_dir: str, source: str, batch_size: int = 8, language: str | None = None,
                    prompt: str | None = None, beam_size: int = 1) -> dict:
    """`ray-asr evaluate`: WER/CER and hallucination counts of a model on a manifest, in this process.

    Rows go through the training pipeline's own checks (`prepare`); rejected ones are counted by
    reason, not scored. Returns the metrics plus `rejected` and `per_utterance`.
    """
    scorer = Scorer(model_dir, language, batch_size, beam_size=beam_size)
    clips, rejected = read_clips(source, scorer.tokenizer)
    report = scorer.report(clips, prompt)
    per_utterance = report.pop("per_utterance")
    return {**report, "rejected": rejected, "per_utterance": per_utterance}


def compare_vocabulary(model_dir: str, base_dir: str, source: str, terms: list[str], batch_size: int = 8,
                       language: str | None = None, beam_size: int = 1) -> list[dict]:
    """Custom vocabulary against fine-tuning, measured: WER/CER of base and fine-tuned, each without and with the
    terms as a prompt, plus how many of the terms said in the references each recognises (`term_recall`)."""
    from ray_asr import vocabulary

    prompt = vocabulary.SEPARATOR.join(terms)
    table = []
    clips = None
    for name, folder in (("base", base_dir), ("fine-tuned", model_dir)):
        scorer = Scorer(folder, language, batch_size, beam_size=beam_size)
        if clips is None:
            clips, _ = read_clips(source, scorer.tokenizer)
        for with_prompt in (False, True):
            report = scorer.report(clips, prompt if with_prompt else None)
            table.append({"model": name + (" + vocabulary" if with_prompt else ""),
                          **{k: report[k] for k in ("wer", "cer", "num_utterances")},
                          "term_recall": vocabulary.term_recall(terms, report["per_utterance"])})
    return table
