"""Reward-based fine-tuning: minimum word error rate (MWER) over the model's own N-best, penalties for loops
and runaways, and learning from people's corrections and ratings of transcripts.

MWER (Prabhavalkar et al., 2018): each clip's N-best is decoded without gradient; each hypothesis gets a cost;
the loss is the expected cost under the model's sequence probabilities renormalised over the N-best, with the
N-best's mean cost as the baseline: sum_n p(n) (cost_n - mean cost). Its gradient moves probability towards the
hypotheses that cost less than their siblings. Costs are in units of the utterance's WER, so a loop penalty of
1.0 makes a looping hypothesis as bad as one that gets every word wrong.

Ratings (`data.feedback` rows with `rating` in [-1, 1]) weight the log-probability of the rated hypothesis,
REINFORCE-style: `-(rating - baseline) * mean token log-prob`, the baseline a running mean of the ratings seen
(starting at 0, the neutral rating), so a steady stream of good ratings stops pushing once it is the norm.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from ray_asr import evaluate, metrics
from ray_asr.collate import IGNORE_INDEX
from ray_asr.labels import languages_of, prefix

RATING_BASELINE_DECAY = 0.9  # the ratings' running mean forgets with a half-life of ~7 rated rows


@dataclass
class NBest:
    """Hypotheses of a batch, clip-major: `owner[i]` is the clip of hypothesis i."""

    sequences: list[list[int]]  # decoder inputs as generated: start token, prompt, text, end-of-text if it stopped
    text_ids: list[list[int]]  # the text's tokens alone (prompt removed, cut at end-of-text)
    stopped: list[bool]
    owner: list[int]


@contextlib.contextmanager
def shared_cross_attention(model, owner: torch.Tensor) -> Iterator[None]:
    """While open, every decoder layer projects each clip's encoder output to cross-attention keys and values once,
    however many of the decoder's rows (`owner[i]`: the clip of row i, whose encoder output rows are copies) use it.

    Otherwise the N-best's first decoding step projects the same 1,500 positions once per hypothesis: for
    whisper-base 2 x 1500 x 512 x 512 x 2 FLOPs a layer, ~9.4 GFLOP a row over six layers. So does the scoring
    forward where it projects (LoRA, ZeRO-3, hypotheses of 64+ tokens); elsewhere the training's reassociated
    cross-attention (`ray_asr.cross_attention`) calls no projection and is left as it is (measured, it stays
    faster than shared projections whose backward must sum each clip's rows: `bench/mwer_step.py`). Projections
    on other batch sizes (a cache already filled, a plain batch) pass through untouched."""
    from ray_asr.encoder import whisper_of

    owner = owner.tolist() if torch.is_tensor(owner) else list(owner)
    clips = sorted(set(owner))
    if len(clips) == len(owner):  # nothing shared
        yield
        return
    firsts = torch.tensor([owner.index(clip) for clip in clips])
    expand = torch.tensor([clips.index(clip) for clip in owner])
    squeezed: set[int] = set()

    def before(module, args):
        if args[0].shape[0] != len(owner):
            return None
        squeezed.add(id(module))
        return (args[0][firsts.to(args[0].device)], *args[1:])

    def after(module, args, out):
        if id(module) not in squeezed:
            return None
        squeezed.discard(id(module))
        return out[expand.to(out.device)]

    handles = []
    for layer in whisper_of(model).model.decoder.layers:
        for projection in (layer.encoder_attn.k_proj, layer.encoder_attn.v_proj):
            handles += [projection.register_forward_pre_hook(before), projection.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class SharedCrossCache(EncoderDecoderCache):
    """A decoder cache for beam search over encoder outputs the beams share: beams never leave their clip, so
    reordering them leaves the cross-attention keys and values as they are. Transformers' own cache copies all of
    them every step (`index_select` of 12 x rows x 1500 x 512 floats for whisper-base: half of a 4-best decode)."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)


def _beam_cache() -> SharedCrossCache:
    return SharedCrossCache(DynamicCache(), DynamicCache())


@torch.no_grad()
def nbest(model, tokenizer, labels: torch.Tensor, language: str, n: int, sampling: str, temperature: float,
          limits: list[int], synced: bool, seed: int, hidden: torch.Tensor, max_new_tokens: int | None = None) -> NBest:
    """Each clip's `n` hypotheses (beam search, or sampling at `temperature` seeded by `seed`), duplicates dropped,
    without gradient, decoded from the encoder output `hidden`; each clip starts from its labels' language
    (`language` where they name none) and the tokenizer's task. A hypothesis past its clip's token limit ran away.

    Transformers' generic `generate`, not Whisper's: Whisper's expands the batch for `num_return_sequences`
    and then returns one sequence per copy, so a beam search's N-best would be the same hypothesis N times.
    """
    from transformers import GenerationMixin

    from ray_asr.encoder import whisper_of

    codes = languages_of(tokenizer, labels, language)
    codes = [codes] * len(labels) if isinstance(codes, str) else codes
    whisper = whisper_of(model)
    start = whisper.config.decoder_start_token_id
    prompt = torch.tensor([[start, *prefix(tokenizer, code)] for code in codes], device=hidden.device)
    options = ({"do_sample": True, "temperature": temperature, "top_k": 0, "num_beams": 1} if sampling == "sample"
               else {"do_sample": False, "num_beams": n})
    device = hidden.device
    copies = torch.arange(len(codes)).repeat_interleave(n)  # generate's own expansion: each clip n times in a row
    with (torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),  # seeded, leaving torch's own as it was
          shared_cross_attention(whisper, copies)):
        torch.manual_seed(seed)
        out = GenerationMixin.generate(whisper, encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                                       decoder_input_ids=prompt, num_return_sequences=n, cache=_beam_cache(),
                                       max_new_tokens=max_new_tokens or max(limits), synced_gpus=synced,
                                       return_dict_in_generate=True, **options)
    eos, width = tokenizer.eos_token_id, prompt.shape[1]
    found = NBest([], [], [], [])
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for i, row in enumerate(out.sequences.tolist()):
        clip = i // n
        text, ran = evaluate.cut(row[width:], limits[clip], eos)
        if (clip, tuple(text)) in seen:
            continue
        seen.add((clip, tuple(text)))
        found.sequences.append(row[:width] + text + ([] if ran else [eos]))
        found.text_ids.append(text)
        found.stopped.append(not ran)
        found.owner.append(clip)
    return found


def cost(tokenizer, ids: list[int], stopped: bool, reference: str, weights: dict, language: str) -> tuple[float, int, int]:
    """One hypothesis' cost (`wer` x its utterance WER + `loop` if it loops + `runaway` if it never stopped), its
    word errors and the reference's word count."""
    errors, words = metrics.word_errors(reference, tokenizer.decode(ids, skip_special_tokens=True), language)
    value = weights["wer"] * errors / max(words, 1) + weights["loop"] * metrics.has_loop(ids) + weights["runaway"] * (not stopped)
    return value, errors, words


def costs(tokenizer, hyps: NBest, references: list[str], weights: dict, language: str) -> torch.Tensor:
    """Each hypothesis' `cost`."""
    return torch.tensor([cost(tokenizer, ids, stopped, references[clip], weights, language)[0]
                         for ids, stopped, clip in zip(hyps.text_ids, hyps.stopped, hyps.owner, strict=True)],
                        dtype=torch.float32)


@dataclass
class Tally:
    """An evaluation's reward figures: the mean reward (negative cost) of the transcripts the model gives (greedy),
    and the N-best's oracle WER (each clip's fewest word errors among its hypotheses, the greedy one included):
    how much better the model's own N-best could do, which is what MWER learns from."""

    reward: float = 0.0
    clips: int = 0
    oracle_errors: int = 0
    words: int = 0

    def add(self, tokenizer, weights: dict, language: str, references: list[str], greedy: list[list[int]],
            runaway: list[bool], hyps: NBest) -> None:
        for clip, (reference, ids, ran) in enumerate(zip(references, greedy, runaway, strict=True)):
            value, errors, words = cost(tokenizer, ids, not ran, reference, weights, language)
            others = [metrics.word_errors(reference, tokenizer.decode(h, skip_special_tokens=True), language)[0]
                      for h, owner in zip(hyps.text_ids, hyps.owner, strict=True) if owner == clip]
            self.reward -= value
            self.clips += 1
            self.oracle_errors += min([errors, *others])
            self.words += words

    @staticmethod
    def merged(tallies: list[Tally]) -> dict:
        """Metric keys `reward` and `oracle_wer` over every rank's tally."""
        clips, words = sum(t.clips for t in tallies), sum(t.words for t in tallies)
        return {"reward": sum(t.reward for t in tallies) / max(clips, 1),
                "oracle_wer": sum(t.oracle_errors for t in tallies) / max(words, 1)}


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of the targets' log-probabilities and their count (targets `IGNORE_INDEX` count not)."""
    mask = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=1), mask.sum(dim=1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy over the targets that count (not `IGNORE_INDEX`), log-softmax in fp32."""
    logp, count = token_log_probs(logits, targets)
    return -logp.sum() / count.sum().clamp(min=1)


def decoder_inputs(batch: dict, model_config) -> torch.Tensor:
    """The batch's teacher-forced decoder inputs: its prompted `decoder_input_ids` where it has them, else its labels
    shifted right behind the start token. The id written where a label is padding never reaches the loss: the
    padding ends a label, and a causal decoder's inputs there only predict padding positions."""
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    given = batch.get("decoder_input_ids")
    if given is not None:
        return given
    pad = model_config.pad_token_id if model_config.pad_token_id is not None else model_config.eos_token_id
    return shift_tokens_right(batch["labels"], pad, model_config.decoder_start_token_id)


def length_normalised(logits: torch.Tensor, targets: torch.Tensor, length_penalty: float) -> torch.Tensor:
    """Each sequence's log-probability divided by its scored length ** `length_penalty` (1: the token mean)."""
    logp, count = token_log_probs(logits, targets)
    return logp / count.clamp(min=1).float() ** length_penalty


def teacher_forced(sequences: list[list[int]], prompt_tokens: int, pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs and targets for scoring whole sequences: the prompt's own positions are not scored."""
    width = max(len(s) for s in sequences) - 1
    inputs = torch.full((len(sequences), width), pad, dtype=torch.long)
    targets = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for i, seq in enumerate(sequences):
        inputs[i, : len(seq) - 1] = torch.tensor(seq[:-1])
        targets[i, prompt_tokens - 1 : len(seq) - 1] = torch.tensor(seq[prompt_tokens:])
    return inputs.to(device), targets.to(device)


def sequence_scores(forward, encoder_hidden: torch.Tensor, hyps: NBest, prompt_tokens: int, pad: int,
                    length_penalty: float) -> torch.Tensor:
    """Each hypothesis' log-probability under the model (with gradient), divided by its length ** `length_penalty`.

    `forward(encoder_hidden, decoder_input_ids)` returns logits: the engine's forward in training."""
    inputs, targets = teacher_forced(hyps.sequences, prompt_tokens, pad, encoder_hidden.device)
    owner = torch.tensor(hyps.owner, device=encoder_hidden.device)
    return length_normalised(forward(encoder_hidden[owner], inputs), targets, length_penalty)


def mwer_loss(scores: torch.Tensor, cost: torch.Tensor, owner: list[int]) -> torch.Tensor:
    """Mean over clips of the expected cost minus the N-best's mean cost, under the scores renormalised over each
    clip's N-best. A clip with a single hypothesis contributes zero (nothing to prefer it over)."""
    owner_t = torch.tensor(owner, device=scores.device)
    cost = cost.to(scores.device)
    total = scores.new_zeros(())
    clips = sorted(set(owner))
    for clip in clips:
        mine = owner_t == clip
        p = torch.softmax(scores[mine], dim=0)
        total = total + (p * (cost[mine] - cost[mine].mean())).sum()
    return total / max(len(clips), 1)


@dataclass
class RatingBaseline:
    """The running mean of the ratings seen, subtracted from each rating (REINFORCE's baseline)."""

    value: float = 0.0

    def advantages(self, ratings: list[float]) -> list[float]:
        out = []
        for rating in ratings:
            out.append(rating - self.value)
            self.value = RATING_BASELINE_DECAY * self.value + (1 - RATING_BASELINE_DECAY) * rating
        return out


def reinforce_loss(mean_logp: torch.Tensor, advantages: list[float]) -> torch.Tensor:
    """Rated hypotheses: raising a well-rated one's log-probability (and lowering a badly rated one's) lowers it."""
    weights = torch.tensor(advantages, dtype=mean_logp.dtype, device=mean_logp.device)
    return -(weights * mean_logp).mean()


def rated(batch: dict) -> list[int]:
    """Rows of a batch that carry a rating (their text is a hypothesis, not a reference)."""
    values = batch.get("rating")
    if values is None:
        return []
    return [i for i, v in enumerate(values) if v is not None and not (isinstance(v, float) and math.isnan(v))]


class Objective:
    """A training batch's loss when it is more than cross-entropy (`train.objective: mwer`, or rows carrying a
    rating): one decoder forward scores the batch's labels and every N-best hypothesis together.

    - reference rows: cross-entropy (weighted `mwer.ce_weight` under MWER) plus MWER over their N-best;
    - rated rows (`data.feedback` with `rating`): the REINFORCE term on their hypothesis, never cross-entropy
      (a badly rated transcript must not be imitated).
    """

    def __init__(self, train_cfg, tokenizer, language: str, seed: int):
        self.cfg, self.tokenizer, self.language, self.seed = train_cfg, tokenizer, language, seed
        self.mwer = train_cfg.objective == "mwer"
        self.weights = dataclasses.asdict(train_cfg.reward)
        self.baseline = RatingBaseline()

    def applies(self, batch: dict) -> bool:
        return self.mwer or bool(rated(batch))

    def loss(self, engine, hidden: torch.Tensor, batch: dict, real: bool, synced: bool, agree_max,
             step: int) -> torch.Tensor:
        """`engine`: DeepSpeed's (its `module` decodes the N-best) or the model itself; `hidden`: the encoder's
        output for the batch (with gradient where the encoder trains); `agree_max` makes every rank decode as
        long (ZeRO-3 steps in lock-step)."""
        generator_model = getattr(engine, "module", engine)
        labels, pad = batch["labels"], self.tokenizer.eos_token_id
        decoder_input_ids = decoder_inputs(batch, generator_model.config)
        rows = rated(batch) if real else []
        hyps = None
        if self.mwer:
            limits = evaluate.token_limits(labels)
            longest = agree_max(max(limits))
            generator_model.eval()
            hyps = nbest(generator_model, self.tokenizer, labels, self.language, self.cfg.mwer.n_best,
                         self.cfg.mwer.sampling, self.cfg.mwer.temperature, limits, synced,
                         seed=self.seed * 1_000_003 + step, hidden=hidden.detach(), max_new_tokens=longest)
            engine.train()
        width = decoder_input_ids.shape[1]
        inputs, owner = [decoder_input_ids], list(range(len(labels)))
        if hyps is not None:
            nbest_inputs, nbest_targets = teacher_forced(hyps.sequences, evaluate.PROMPT_TOKENS, pad, hidden.device)
            width = max(width, nbest_inputs.shape[1])
            inputs.append(nbest_inputs)
            owner += hyps.owner
        stacked = torch.cat([F.pad(x, (0, width - x.shape[1]), value=pad) for x in inputs])
        with shared_cross_attention(generator_model, owner):
            logits = engine(encoder_outputs=BaseModelOutput(last_hidden_state=hidden[torch.tensor(owner, device=hidden.device)]),
                            decoder_input_ids=stacked, use_cache=False).logits
        batch_logits = logits[: len(labels), : labels.shape[1]]
        ce_targets = labels.clone()
        ce_targets[rows] = IGNORE_INDEX
        loss = cross_entropy(batch_logits, ce_targets) * (self.cfg.mwer.ce_weight if self.mwer else 1.0)
        if rows:
            hypothesis = labels[rows].clone()
            starts = (hypothesis != IGNORE_INDEX).int().argmax(dim=1).tolist()  # after any masked previous-text prompt
            for i, start in enumerate(starts):  # the language and task tokens are not the rated transcript
                hypothesis[i, start : start + evaluate.LABEL_PREFIX] = IGNORE_INDEX
            advantages = self.baseline.advantages([float(batch["rating"][i]) for i in rows])
            loss = loss + reinforce_loss(length_normalised(batch_logits[rows], hypothesis, 1.0), advantages)
        if hyps is not None:
            scores = length_normalised(logits[len(labels):, : nbest_targets.shape[1]], nbest_targets,
                                       self.cfg.mwer.length_penalty)
            cost = costs(self.tokenizer, hyps, batch["text"], self.weights, self.language)
            keep = [i for i, clip in enumerate(hyps.owner) if clip not in rows]
            if keep:
                loss = loss + mwer_loss(scores[keep], cost[keep], [hyps.owner[i] for i in keep])
        return loss
