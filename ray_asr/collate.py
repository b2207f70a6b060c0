"""Worker-side batching: waveforms → log-mel on the worker's device, labels padded with -100.

Used as `collate_fn` of `iter_torch_batches` on a `get_dataset_shard` iterator, so the heavy
feature computation happens on the trainer (GPU when it has one), not on the data tier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from ray_asr.audio import from_wire
from ray_asr.features import log_mel, spec_augment

IGNORE_INDEX = -100  # label value that cross-entropy skips


def pad_labels(label_lists, pad_to: int | None = None, fill: int = IGNORE_INDEX) -> torch.Tensor:
    """`[list of ids]` → `(batch, longest)` int64, padding with `fill` (-100; not to 448)."""
    longest = max(len(ids) for ids in label_lists)
    out = torch.full((len(label_lists), pad_to or longest), fill, dtype=torch.long)
    for i, ids in enumerate(label_lists):
        out[i, : len(ids)] = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    return out


def stack_waves(waves) -> torch.Tensor:
    """`[(samples,) float32]` → `(batch, longest)` float32, zero-padded (log-mel ignores the padding)."""
    stacked = np.zeros((len(waves), max(len(w) for w in waves)), np.float32)
    for i, wave in enumerate(waves):
        stacked[i, : len(wave)] = wave
    return torch.from_numpy(stacked)


@dataclass
class PromptMaker:
    """Prompted decoder inputs and labels: `<|startofprev|> prompt <|startoftranscript|> labels`, the prompt masked.

    The prompt is domain terms (custom vocabulary) for a share `p` of clips, else, for a share `previous_text`
    of the rest, the utterance before it (in its recording or by its speaker, where the data tier knew it; else
    the transcript of the clip before it in the batch): Whisper's previous-text context, which a
    fine-tune without it may learn to ignore. Whisper builds decoder inputs by shifting the labels right
    behind the start token; with a prompt in front the inputs are given explicitly, and every label
    position up to the start token is -100, so the loss is the transcript's alone.
    """

    terms: list[str]
    """Domain terms (`train.prompt_vocabulary.file`)."""
    p: float
    """Share of clips prompted."""
    distractors: int
    """Terms the clip does not say added to each prompt."""
    tokenizer: object
    """The run's `labels.LabelTokenizer` (its byte-level BPE encodes the prompt)."""
    start_id: int
    """`<|startoftranscript|>` (the decoder start token)."""
    previous_text: float = 0.0
    """Share of the clips without a terms prompt given another clip's transcript as context
    (`data.labels.previous_text`)."""

    def __call__(self, label_lists, texts, rng: np.random.Generator, previous=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`previous`: per clip, the utterance before it in its recording or by its speaker (None: not known)."""
        from ray_asr import labels, vocabulary

        backend, eos = self.tokenizer.backend, self.tokenizer.eos_token_id
        inputs, targets = [], []
        previous = previous if previous is not None else [None] * len(texts)
        for i, (ids, text) in enumerate(zip(label_lists, texts, strict=True)):
            ids = [int(token) for token in ids]
            prompt = []
            if self.terms and rng.random() < self.p:
                prompt = vocabulary.prompt_ids(backend,
                                               vocabulary.training_prompt(self.terms, str(text), rng, self.distractors))
            elif self.previous_text and (previous[i] or len(texts) > 1) and rng.random() < self.previous_text:
                # The utterance before it where known, else another clip's (the first clip gets the batch's last).
                prompt = vocabulary.prompt_ids(backend, str(previous[i] or texts[i - 1]))
            if prompt:
                room = labels.MAX_TARGET_TOKENS - 1 - len(ids)  # the sequence below stays within 448 positions
                prompt = [prompt[0], *prompt[1:][-(room - 1):]] if room > 1 else []
            sequence = [*prompt, self.start_id, *ids]
            inputs.append(sequence[:-1])
            targets.append([IGNORE_INDEX] * len(prompt) + ids)
        return pad_labels(inputs, fill=eos), pad_labels(targets)


# No-speech clips: 1-10 s (the length of most training clips), noise at -60 to -20 dBFS RMS (a quiet room to a
# loud fan), one in four digital silence. Their ids start with NO_SPEECH_ID, which no manifest id does: the
# activation cache never keys them.
NO_SPEECH_SECONDS = (1.0, 10.0)
NO_SPEECH_DBFS = (-60.0, -20.0)
NO_SPEECH_SILENT = 0.25
NO_SPEECH_ID = "\x00no-speech/"


@dataclass
class NoSpeechMaker:
    """Adds noise-only or silent clips to a training batch, each labelled with an empty transcript (end-of-text
    right after the prompt), so a fine-tune keeps answering silence with nothing instead of hallucinating."""

    share: float
    """Expected added clips per real clip (`data.labels.no_speech`)."""
    labels: tuple[int, ...]
    """`<|lang|><|task|><|notimestamps|><|endoftext|>`."""
    sample_rate: int = 16_000
    """Rate of the batch's waveforms (the data tier's 16 kHz)."""
    noise_files: tuple[str, ...] = ()
    """The user's noise recordings (or folders), e.g. the `noise` augmentation's `files`: half the noise clips
    are cut from them, the rest synthetic."""

    def __post_init__(self) -> None:
        from augment._util import Recordings

        self._recordings = Recordings(list(self.noise_files))

    def _noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        from augment._util import fit_length
        from augment.noise import coloured_noise

        if self._recordings and rng.random() < 0.5:
            return fit_length(self._recordings.pick(self.sample_rate, rng), n, rng).astype(np.float64)
        return coloured_noise(n, str(rng.choice(["white", "pink", "brown"])), rng)

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        count = int(rng.binomial(len(batch["id"]), self.share))
        if count == 0:
            return batch
        waves = []
        for _ in range(count):
            n = int(rng.uniform(*NO_SPEECH_SECONDS) * self.sample_rate)
            if rng.random() < NO_SPEECH_SILENT:
                waves.append(np.zeros(n, np.float32))
                continue
            noise = self._noise(n, rng)
            level = 10 ** (rng.uniform(*NO_SPEECH_DBFS) / 20) / max(float(np.sqrt(np.mean(noise**2))), 1e-12)
            waves.append((noise * level).astype(np.float32))
        start = int(rng.integers(1 << 62))
        extra = {"audio": waves, "labels": [list(self.labels)] * count, "text": [""] * count,
                 "id": [f"{NO_SPEECH_ID}{start + i}" for i in range(count)], "previous": [None] * count,
                 "rating": [float("nan")] * count, "pass": [0] * count}
        out = dict(batch)
        for name, added in extra.items():
            if name not in batch:
                continue
            out[name] = np.array([*batch[name], *added] + [None], dtype=object)[:-1]  # object arrays: ragged rows
        return out


@dataclass
class WhisperCollator(NumpyBatchCollateFn):
    """Turns a numpy batch of `ray_asr.data.PREPARED_SCHEMA` rows into model inputs."""

    n_mels: int = 80
    """Mel bins of the model (80 for most Whisper sizes, 128 for large-v3)."""
    wire_dtype: str = "int16"
    """How the data tier packed the waveforms (`data.wire_dtype`)."""
    device: str | torch.device = "cpu"
    """Where log-mel is computed and tensors are returned."""
    spec_augment: dict | None = None
    """SpecAugment settings (`time_masks`, `time_width`, `freq_masks`, `freq_width`, `p`); None = off. Give it to
    the training split's collator only: evaluation scores the clips as they are."""
    seed: int = 0
    """Seed of the SpecAugment generator (give each worker its own, e.g. seed + rank)."""
    keep: tuple = ()
    """Columns passed through as Python lists where the batch has them (e.g. `("id", "text")` for evaluation)."""
    prompts: PromptMaker | None = None
    """Puts a custom-vocabulary prompt before some clips' labels (`train.prompt_vocabulary`); training split only."""
    no_speech: NoSpeechMaker | None = None
    """Adds noise-only clips with empty transcripts (`data.labels.no_speech`); training split only."""

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        waves = [from_wire(buffer, self.wire_dtype) for buffer in batch["audio"]]
        if self.no_speech is not None:
            batch = self.no_speech({**batch, "audio": waves}, self._rng)
            waves = list(batch["audio"])
        stacked = stack_waves(waves)
        features = log_mel(stacked.to(self.device), self.n_mels)  # (batch, n_mels, 3000)
        if self.spec_augment is not None:
            features = spec_augment(features, self._generator, **self.spec_augment)
        if self.prompts is not None:
            inputs, targets = self.prompts(batch["labels"], batch["text"], self._rng, batch.get("previous"))
            out = {"input_features": features, "decoder_input_ids": inputs.to(self.device),
                   "labels": targets.to(self.device)}
        else:
            out = {"input_features": features, "labels": pad_labels(batch["labels"]).to(self.device)}
        out.update((name, batch[name].tolist()) for name in self.keep if name in batch)
        return out


def for_splits(n_mels: int, wire_dtype: str, device, spec_augment: dict | None, seed: int,
               keep: tuple = ("id", "text"), prompts: PromptMaker | None = None,
               no_speech: NoSpeechMaker | None = None) -> tuple[WhisperCollator, WhisperCollator]:
    """The training split's collator (SpecAugment, prompts, no-speech clips when configured) and the evaluation
    splits' (never: they score the clips as they are)."""
    plain = WhisperCollator(n_mels=n_mels, wire_dtype=wire_dtype, device=device, keep=keep)
    # Training rows also carry their feedback rating (`data.feedback`): it decides how a row trains.
    return WhisperCollator(n_mels=n_mels, wire_dtype=wire_dtype, device=device, keep=(*keep, "rating"),
                           spec_augment=spec_augment, seed=seed, prompts=prompts, no_speech=no_speech), plain
