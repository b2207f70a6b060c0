"""Every knob of ray-asr: typed dataclasses, YAML loading, dotted overrides, one validation pass.

A config error is a `ConfigError` whose message is one line that names the field, e.g.
`train.learning_rate: must be > 0, got -1`; the CLI prints it and exits 2.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config key or value; the message names the field."""


@dataclass
class ModelConfig:
    name_or_path: str = "models/whisper-base"
    """HF Whisper folder (see `ray-asr import-ct2`) or a hub id where a hub is reachable."""
    language: str = "en"
    """Language code written into the decoder prompt (`<|en|>`), e.g. `en`, `de`, `sw`."""
    task: str = "transcribe"
    """`transcribe` or `translate` (to English)."""
    add_tokens: list = field(default_factory=list)
    """Domain terms made whole tokens before training (`[metoprolol, apixaban]`): the tokenizer, the embedding and
    the tied output projection grow by one row per term and form (` term` inside a sentence, `term` at its start),
    each row starting as the mean of the pieces the term was split into. With `train.strategy: head` only the new
    rows train."""
    new_language: dict | None = None
    """A language token Whisper lacks, for a language or dialect: `{code: xx, name: Scots, from: en}` adds `<|xx|>`,
    its embedding row starting as `from`'s (default en). Set `model.language: xx` to label and decode with it;
    `evaluate` and `transcribe` then accept `--language xx` on the exported model."""

    def check(self) -> None:
        need(bool(self.name_or_path), "model.name_or_path", "must be set", self.name_or_path)
        need(bool(self.language), "model.language", "must be set", self.language)
        one_of(self.task, "model.task", ("transcribe", "translate"))
        need(isinstance(self.add_tokens, list) and all(isinstance(t, str) and t.strip() == t and t
                                                       for t in self.add_tokens),
             "model.add_tokens", "must be a list of terms without surrounding spaces", self.add_tokens)
        spec = self.new_language
        if spec is not None:
            need(isinstance(spec, dict) and set(spec) <= {"code", "name", "from"} and "code" in spec,
                 "model.new_language", "must be {code: xx, name: ..., from: en}", spec)
            from ray_asr.labels import is_language_code

            code = spec["code"]
            need(isinstance(code, str) and is_language_code(code), "model.new_language.code",
                 "must be 2-3 lowercase letters", code)


@dataclass
class LabelsConfig:
    timestamps: float = 0.0
    """Share of training rows (chosen per row, seeded) whose labels carry Whisper's timestamp tokens around the
    text (`<|0.48|> text <|2.10|>`: the speech's bounds, from an energy VAD, on the 20 ms grid) instead of
    `<|notimestamps|>`. A fine-tune on `<|notimestamps|>` labels alone can stop predicting timestamps, which
    long-form transcription seeks by; 0.5 keeps both. Evaluation splits keep `<|notimestamps|>`."""

    previous_text: float = 0.0
    """Share of training clips (of those without a `train.prompt_vocabulary` prompt) given the utterance before
    them as Whisper's previous-text context (`<|startofprev|> ...`), masked from the loss, so a fine-tune keeps
    using a prompt; 0.2 is a usual choice. The utterance before: a long recording's previous window, else the
    row before it by the same `speaker` (manifest key) in its read batch, else another clip's transcript."""
    no_speech: float = 0.0
    """Noise-only or silent clips added to training batches, per real clip (0.05: one in twenty), each labelled
    with an empty transcript, so a fine-tune keeps answering silence and noise with nothing. Half the noise is cut
    from the `noise` augmentation's `files` when it names some, the rest synthetic (white, pink, brown)."""

    def check(self) -> None:
        for key in ("timestamps", "previous_text", "no_speech"):
            value = getattr(self, key)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1,
                 f"data.labels.{key}", "must be in [0, 1]", value)


# Transforms that move speech in time: after them a clip's timestamp labels would point at the wrong place.
TIME_MOVING_TRANSFORMS = ("speed", "time_shift")


@dataclass
class DataConfig:
    train: str | None = None
    """Training data: JSONL manifest, HF `save_to_disk` folder, parquet file, or Common Voice `.tsv`."""
    eval: str | None = None
    """In-domain evaluation data, same formats as `train`."""
    general_eval: str | None = None
    """Optional out-of-domain evaluation set: the forgetting guard."""
    max_duration_s: float = 30.0
    """Clips longer than this are rejected for training (Whisper's window is 30 s)."""
    max_rejected_fraction: float = 0.01
    """The run fails once more than this share of a split's rows has been quarantined."""
    wire_dtype: str = "int16"
    """Waveform dtype shipped from the data tier to trainers: `int16` (half the bytes) or `float32`."""
    prepare_batch_size: int = 64
    """Rows per batch in the decode/resample/validate stage, and per block streamed to the trainers (a split of
    fewer than 16 x this many rows is cut in up to 16 smaller blocks of 8 rows at least, to spread over workers)."""
    prepare_concurrency: int = 0
    """Upper bound on decode/validate actors; 0 sizes the pool from the cluster's CPUs."""
    prepare_num_cpus: float | str = "auto"
    """CPUs each decode/validate actor reserves; `auto`: 0.2 where the data tier shares a CPU-only machine with
    the trainers (decoding a clip costs ~1/50 of training on it), 1 elsewhere."""
    eval_cache_mb: float = 512.0
    """Memory (MiB) each training worker may keep its share of `eval` and `general_eval` in after their first
    pass, so later evaluations skip the data tier (int16 audio: ~110 MiB an hour); a split that does not fit on
    every worker streams each time. 0 streams every evaluation."""
    train_cache_mb: float = 512.0
    """Memory (MiB) each training worker may keep its share of the training split in after the first epoch, where
    no waveform augmentation makes epochs differ: later epochs reshuffle it in memory and leave the data tier idle
    (on a small machine its processes would share the trainers' cores). A split that does not fit on every worker
    streams each epoch. 0 streams every epoch."""
    preprocess: list = field(default_factory=list)
    """Transforms applied to every split, every epoch, before augmentation (e.g. `[{name: denoise}]` for noisy inputs)."""
    augment_num_cpus: float | str = "auto"
    """CPUs each augmentation actor reserves; `auto` as for `prepare_num_cpus`."""
    augment_concurrency: int = 0
    """Upper bound on augmentation actors; 0 sizes the pool from the cluster's CPUs."""
    augment_resources: dict = field(default_factory=dict)
    """Extra Ray resources every data stage (read, decode/validate, augment) requests, e.g. `{augment_cpu: 1}`,
    so that on a heterogeneous cluster the audio work runs on the CPU tier and never on the trainers' nodes."""
    quarantine: str | None = None
    """Where rejected rows are written; default `<output_dir>/quarantine.jsonl`."""
    activation_cache_mb: float = 2048.0
    """Memory (MiB) each training worker may keep frozen-boundary activations in (whisper-base's encoder output:
    3 MB a clip in fp32), past which they spill to `activation_cache_dir`. Used when the bottom encoder layers are
    frozen and nothing perturbs a clip (no waveform augmentation, no SpecAugment): later epochs and evaluations
    run only the layers above the boundary. 0 turns the cache off."""
    activation_cache_dir: str | None = None
    """Local folder for activations past `activation_cache_mb` (and, with several workers on a node, for sharing
    them); default a folder in the system's temp dir, removed when the run ends."""
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    """Label forms that keep Whisper's own abilities through a fine-tune (timestamps, prompts, silence)."""
    train_rows: int | None = None
    """Train on this many rows of `train` only, chosen by `train.seed` (the same rows for the same seed and set):
    few-shot recipes and learning curves (`ray-asr fewshot-curve`). None = every row."""
    rehearsal: dict | None = None
    """General speech rehearsed against forgetting, `{manifest: PATH, fraction: 0.2}`: that share of each epoch's
    training rows comes from the manifest (the same as a `data.mix` entry of weight fraction / (1 - fraction))."""
    feedback: str | None = None
    """People's feedback on transcripts (`ray-asr feedback` writes it): JSONL rows `{audio, hypothesis, correction}`
    (the correction is the reference) and/or `{audio, hypothesis, rating}` (rating in [-1, 1] weights the
    hypothesis, never imitated as a reference). Trained as the training split when `train` is unset, else mixed
    into it like a `mix` entry of weight 1."""
    mix: list = field(default_factory=list)
    """Other sets mixed into training, each `{manifest: PATH, weight: W}`: W of its rows per `train` row each epoch
    (0.2: one in five; a set too small for its share repeats), e.g. speech in other languages or general speech
    rehearsed against forgetting. Rows keep their own `language`. The same rows every epoch, chosen by `train.seed`."""

    def __post_init__(self) -> None:
        if self.feedback and not self.train:  # a feedback-only fine-tune: the feedback is the training split
            self.train = self.feedback

    def mixes(self) -> list[dict]:
        """`mix` with `rehearsal` as one more entry."""
        out = list(self.mix)
        if self.feedback and self.train != self.feedback:
            out.append({"manifest": self.feedback, "weight": 1.0})
        if self.rehearsal:
            fraction = self.rehearsal["fraction"]
            out.append({"manifest": self.rehearsal["manifest"], "weight": fraction / (1 - fraction)})
        return out

    def check(self) -> None:
        one_of(self.wire_dtype, "data.wire_dtype", ("int16", "float32"))
        need(0 < self.max_duration_s <= 30.0, "data.max_duration_s", "must be in (0, 30]", self.max_duration_s)
        need(0 <= self.max_rejected_fraction <= 1, "data.max_rejected_fraction", "must be in [0, 1]",
             self.max_rejected_fraction)
        need(self.prepare_batch_size >= 1, "data.prepare_batch_size", "must be >= 1", self.prepare_batch_size)
        need(self.eval_cache_mb >= 0, "data.eval_cache_mb", "must be >= 0", self.eval_cache_mb)
        need(self.train_cache_mb >= 0, "data.train_cache_mb", "must be >= 0", self.train_cache_mb)
        for key in ("prepare_num_cpus", "augment_num_cpus"):
            value = getattr(self, key)
            auto_or(f"data.{key}", value, not isinstance(value, str) and value > 0, "must be > 0")
        need(self.activation_cache_mb >= 0, "data.activation_cache_mb", "must be >= 0", self.activation_cache_mb)
        need(self.augment_concurrency >= 0, "data.augment_concurrency", "must be >= 0", self.augment_concurrency)
        need(self.prepare_concurrency >= 0, "data.prepare_concurrency", "must be >= 0", self.prepare_concurrency)
        _check_transforms("data.preprocess", self.preprocess)
        _check_resources("data.augment_resources", self.augment_resources)
        self.labels.check()
        need(isinstance(self.mix, list), "data.mix", "must be a list of {manifest, weight}", self.mix)
        for i, item in enumerate(self.mix):
            need(isinstance(item, dict) and set(item) == {"manifest", "weight"}, f"data.mix[{i}]",
                 "must be {manifest: PATH, weight: W}", item)
            need(isinstance(item["manifest"], str) and item["manifest"], f"data.mix[{i}].manifest", "must be a path",
                 item["manifest"])
            weight = item["weight"]
            need(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0,
                 f"data.mix[{i}].weight", "must be a number > 0", weight)
        need(self.train_rows is None or self.train_rows >= 1, "data.train_rows", "must be >= 1", self.train_rows)
        if self.rehearsal is not None:
            spec = self.rehearsal
            need(isinstance(spec, dict) and set(spec) == {"manifest", "fraction"}, "data.rehearsal",
                 "must be {manifest: PATH, fraction: F}", spec)
            need(isinstance(spec["manifest"], str) and spec["manifest"], "data.rehearsal.manifest", "must be a path",
                 spec["manifest"])
            fraction = spec["fraction"]
            need(isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 1,
                 "data.rehearsal.fraction", "must be in (0, 1)", fraction)


@dataclass
class DeepSpeedConfig:
    stage: int = 2
    """ZeRO stage 0..3."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory (ZeRO 1-3)."""
    offload_param: bool = False
    """Keep parameters in CPU memory (ZeRO 3 only)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches summed before each optimizer step."""
    gradient_clipping: float = 1.0
    """Global gradient-norm clip; 0 disables it."""

    def check(self) -> None:
        need(self.stage in (0, 1, 2, 3), "train.deepspeed.stage", "must be 0, 1, 2 or 3", self.stage)
        need(not self.offload_param or self.stage == 3, "train.deepspeed.offload_param", "needs stage 3", self.offload_param)
        need(not self.offload_optimizer or self.stage >= 1, "train.deepspeed.offload_optimizer", "needs stage >= 1",
             self.offload_optimizer)
        need(self.gradient_accumulation_steps >= 1, "train.deepspeed.gradient_accumulation_steps", "must be >= 1",
             self.gradient_accumulation_steps)
        need(self.gradient_clipping >= 0, "train.deepspeed.gradient_clipping", "must be >= 0", self.gradient_clipping)


@dataclass
class LoraConfig:
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Adapter scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    """Linear layers (by name) that get adapters; layers below the frozen depth never do."""

    def check(self) -> None:
        need(self.r >= 1, "train.lora.r", "must be >= 1", self.r)
        need(self.alpha > 0, "train.lora.alpha", "must be > 0", self.alpha)
        need(0 <= self.dropout < 1, "train.lora.dropout", "must be in [0, 1)", self.dropout)
        need(bool(self.target_modules), "train.lora.target_modules", "must name at least one module", self.target_modules)


@dataclass
class MwerConfig:
    n_best: int = 4
    """Hypotheses decoded per clip (duplicates dropped); 4 is the minimum-WER literature's beam."""
    sampling: str = "beam"
    """`beam` (the N best of a beam search) or `sample` (N draws at `temperature`: more diverse, noisier)."""
    temperature: float = 1.0
    """Sampling temperature for `sampling: sample`."""
    ce_weight: float = 1.0
    """Cross-entropy on the references beside the MWER term; it keeps the model anchored to real transcripts
    (without it, MWER can drift to whatever its own N-best happens to contain). 1.0, MWER added to plain
    cross-entropy, is what beat cross-entropy alone on the demo; at 0.1 (the literature's small anchor, from
    models trained far longer) MWER lost to it there (BENCHMARKS.md, "Minimum-WER training")."""
    length_penalty: float = 0.0
    """Each hypothesis' log-probability is divided by its length to this power before renormalising (0: none;
    1: per-token means, so long and short hypotheses compete on equal terms)."""

    def check(self) -> None:
        need(self.n_best >= 2, "train.mwer.n_best", "must be >= 2 (MWER compares hypotheses)", self.n_best)
        one_of(self.sampling, "train.mwer.sampling", ("beam", "sample"))
        need(self.temperature > 0, "train.mwer.temperature", "must be > 0", self.temperature)
        need(self.ce_weight >= 0, "train.mwer.ce_weight", "must be >= 0", self.ce_weight)
        need(self.length_penalty >= 0, "train.mwer.length_penalty", "must be >= 0", self.length_penalty)


@dataclass
class RewardConfig:
    wer: float = 1.0
    """Cost per unit of a hypothesis' utterance WER (1.0: every word wrong costs 1)."""
    loop: float = 1.0
    """Cost of a hypothesis that loops (a phrase repeated back to back, the `repetition_rate` detector)."""
    runaway: float = 1.0
    """Cost of a hypothesis that never stops within its clip's token limit (a `runaway_outputs` one)."""

    def check(self) -> None:
        for name in ("wer", "loop", "runaway"):
            need(getattr(self, name) >= 0, f"train.reward.{name}", "must be >= 0", getattr(self, name))


@dataclass
class TrainConfig:
    strategy: str = "freeze"
    """`full`, `freeze` (encoder frozen), `lora` (peft adapters only), `add_layers` (only the layers of
    `train.add_layers` train: every pretrained weight stays as it was) or `head` (only the embedding rows of
    `model.add_tokens` / `model.new_language`, plus any added layers). Default measured on the demo corpus
    (see the README): vocabulary adaptation needs the decoder, and a frozen encoder halves the step time."""
    add_layers: dict = field(default_factory=dict)
    """New layers stacked on the pretrained ones, `{decoder: 2, encoder: 0}`, each starting as the identity (its
    output projections zero), so the model's outputs are unchanged at step 0. They train under any strategy; with
    `strategy: add_layers` nothing else does. The export is a standard Whisper with the layer counts raised."""
    frozen_encoder_layers: int | None = None
    """Frozen depth: bottom N encoder layers (plus conv front end and positions) frozen; None = strategy default."""
    learning_rate: float = 3.0e-5
    """Peak learning rate (3e-5: 5e-5 overfit the demo corpus within two epochs)."""
    epochs: int = 2
    """Passes over the training split."""
    batch_size_per_worker: int = 8
    """Clips per worker per micro-batch."""
    precision: str = "auto"
    """`auto`, `bf16`, `fp16` or `fp32`. `auto`: bf16 where the device computes it natively (CUDA with bf16, CPUs
    with AVX-512 BF16 or AMX), fp16 on older GPUs, fp32 elsewhere (bf16 is emulated ~100x slower there)."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """DeepSpeed ZeRO settings."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings for `strategy: lora`."""
    freeze_token_embeddings: bool = False
    """Keep the decoder's token embeddings (tied to the output projection) frozen."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 5
    """Linear learning-rate warm-up steps before linear decay."""
    seed: int = 0
    """Seed for initialisation, shuffling and augmentation."""
    eval_every_steps: int = 0
    """Evaluate (and checkpoint) every N optimizer steps; 0 = at the end of each epoch only."""
    eval_at_start: bool = False
    """Evaluate the starting model before training too: the baseline every later row compares with."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about a third more compute."""
    shuffle_buffer: int = 64
    """Clips each worker shuffles locally as they stream in (0 = stream order). A training split kept in memory
    (`data.train_cache_mb`) is reshuffled whole each later epoch."""
    keep_checkpoints: int = 2
    """Checkpoints kept, best eval WER first (the latest is always kept too)."""
    max_failures: int = 2
    """Worker failures survived: the worker group restarts from the last checkpoint."""
    storage_path: str | None = None
    """Where Ray Train keeps checkpoints (local folder, NFS or `s3://...`); default `<output_dir>/checkpoints`."""
    run_name: str = "finetune"
    """Run name under `storage_path`: rerunning with the same name resumes from its last checkpoint."""
    fail_at_step: int = 0
    """Fault injection for tests: the last rank dies once at this step; 0 = off."""
    fail_nan_at_step: int = 0
    """Fault injection for tests: the first batch of this step gives a NaN loss (once per worker); 0 = off."""
    fail_during_save: int = 0
    """Fault injection for tests: the last rank copies half of its checkpoint at this step into storage and dies
    there (once), leaving a torn checkpoint folder; 0 = off."""
    nan_policy: str = "skip"
    """A batch whose loss is not finite (NaN/inf), or whose gradients are not (DeepSpeed's overflow check, bf16
    and fp16): `skip` drops its update with a warning naming the step and the rows, up to `max_nan_steps`
    times, then stops; `stop` ends the run at the first, with that line."""
    max_nan_steps: int = 10
    """Updates `nan_policy: skip` may drop in a run before it stops (a steady stream of them is a diverged
    run or broken data, not a bad batch)."""
    spec_augment: dict | None = None
    """SpecAugment on the training split's log-mel features, on the worker: `{time_masks: 2, time_width: 40,
    freq_masks: 2, freq_width: 15, p: 1.0}` (any key may be left out; `p`: share of clips masked). Never applied
    to evaluation splits; with it on, training clips bypass the activation cache. None = off."""
    report_to: list = field(default_factory=list)
    """Experiment trackers rank 0 writes scalars to: `tensorboard` (event files in `<output_dir>/tensorboard`)
    and/or `mlflow` (`pip install mlflow`; `MLFLOW_TRACKING_URI` picks the server, default `<output_dir>/mlruns`)."""
    prompt_vocabulary: dict | None = None
    """Custom vocabulary in training: `{file: terms.txt, p: 0.5, distractors: 3}` puts a prompt of domain terms
    (`<|startofprev|> term, term`) before a share `p` of the training labels, masked from the loss: the terms the
    clip says plus `distractors` it does not, so the model learns to use a prompt, not copy it. None = off."""
    log_every_steps: int = 10
    """Trackers get the training loss, learning rate and samples/s every N optimizer steps (and everything at
    each evaluation); 0 = at evaluations only."""
    regression: bool = False
    """Measure the abilities report (`ray-asr regress`: timestamps, long-form, language ID, other languages,
    silence, prompts) at each evaluation, on `regression_suite`: `abilities_<metric>` and, against the starting
    model (measured before training), `<metric>_change` in the history, where `tune.constraints` can bound them.
    Costs a few minutes of CPU per evaluation for whisper-base. Not with ZeRO-3 (rank 0 decodes alone)."""
    early_stopping: dict | None = None
    """Stop once `metric` (an evaluation key such as `wer`, `eval_loss`, `general_wer`; lower is better) has not
    improved for `patience` evaluations, `{metric: wer, patience: 3}`; the exported model is then the best
    evaluation's, not the last. `max_general_wer_increase: 0.01` exports the best evaluation whose general WER
    is at most a point above the starting model's (needs `data.general_eval` and `eval_at_start`); patience
    still counts on `metric` alone. None = train every epoch, export the last."""
    regression_suite: str = "default"
    """`default` (the built-in eSpeak suite, synthesised into `data/abilities` on the driver the first time) or a
    YAML file naming manifests (see `ray-asr regress --suite`)."""
    objective: str = "ce"
    """`ce` (cross-entropy on the references) or `mwer`: minimum word error rate over each clip's N-best decoded
    by the model being trained (`train.mwer`), costed by `train.reward`, with cross-entropy beside it. Rows
    with a `rating` (`data.feedback`) train by their rating under either."""
    mwer: MwerConfig = field(default_factory=MwerConfig)
    """N-best and weighting of `objective: mwer`."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Costs of a hypothesis under `objective: mwer` (lower is better; evaluations log its negative as `reward`)."""

    def check(self) -> None:
        one_of(self.strategy, "train.strategy", ("full", "freeze", "lora", "add_layers", "head"))
        need(isinstance(self.add_layers, dict) and set(self.add_layers) <= {"decoder", "encoder"} and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in self.add_layers.values()),
            "train.add_layers", "must be {decoder: K, encoder: K} with K >= 0", self.add_layers)
        need(not (self.strategy == "head" and self.weight_decay), "train.weight_decay",
             "must be 0 with strategy head (decay would move the embedding rows it keeps)", self.weight_decay)
        if self.early_stopping is not None:
            spec = self.early_stopping
            need(isinstance(spec, dict) and set(spec) <= {"metric", "patience", "max_general_wer_increase"},
                 "train.early_stopping", "must be {metric: wer, patience: N[, max_general_wer_increase: X]}", spec)
            guard = spec.get("max_general_wer_increase")
            need(guard is None or (isinstance(guard, (int, float)) and not isinstance(guard, bool) and guard >= 0),
                 "train.early_stopping.max_general_wer_increase", "must be a number >= 0 (0.01 = one point)", guard)
            need(isinstance(spec.get("metric", "wer"), str), "train.early_stopping.metric", "must be a metric name",
                 spec.get("metric"))
            patience = spec.get("patience", 3)
            need(isinstance(patience, int) and not isinstance(patience, bool) and patience >= 1,
                 "train.early_stopping.patience", "must be an int >= 1", patience)
        one_of(self.precision, "train.precision", ("auto", "bf16", "fp16", "fp32"))
        need(self.frozen_encoder_layers is None or self.frozen_encoder_layers >= 0, "train.frozen_encoder_layers",
             "must be >= 0", self.frozen_encoder_layers)
        need(self.learning_rate > 0, "train.learning_rate", "must be > 0", self.learning_rate)
        need(self.epochs >= 1, "train.epochs", "must be >= 1", self.epochs)
        need(self.batch_size_per_worker >= 1, "train.batch_size_per_worker", "must be >= 1", self.batch_size_per_worker)
        self.lora.check()
        need(self.weight_decay >= 0, "train.weight_decay", "must be >= 0", self.weight_decay)
        need(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0", self.warmup_steps)
        need(self.eval_every_steps >= 0, "train.eval_every_steps", "must be >= 0", self.eval_every_steps)
        need(self.shuffle_buffer >= 0, "train.shuffle_buffer", "must be >= 0", self.shuffle_buffer)
        need(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1", self.keep_checkpoints)
        need(not (self.regression and self.deepspeed.stage == 3), "train.regression",
             "needs deepspeed.stage 0-2 (under ZeRO-3 the model is partitioned and rank 0 measures it alone)",
             self.regression)
        need(self.max_failures >= 0, "train.max_failures", "must be >= 0", self.max_failures)
        need(bool(self.run_name) and "/" not in self.run_name, "train.run_name", "must be a non-empty name without /",
             self.run_name)
        need(self.fail_at_step >= 0, "train.fail_at_step", "must be >= 0", self.fail_at_step)
        need(self.fail_nan_at_step >= 0, "train.fail_nan_at_step", "must be >= 0", self.fail_nan_at_step)
        need(self.fail_during_save >= 0, "train.fail_during_save", "must be >= 0", self.fail_during_save)
        one_of(self.nan_policy, "train.nan_policy", ("skip", "stop"))
        need(self.max_nan_steps >= 0, "train.max_nan_steps", "must be >= 0", self.max_nan_steps)
        _check_spec_augment(self.spec_augment)
        _check_prompt_vocabulary(self.prompt_vocabulary)
        one_of(self.objective, "train.objective", ("ce", "mwer"))
        need(not (self.objective == "mwer" and self.prompt_vocabulary), "train.objective",
             "mwer does not combine with train.prompt_vocabulary (its N-best is decoded without prompts)", self.objective)
        self.mwer.check()
        self.reward.check()
        need(self.log_every_steps >= 0, "train.log_every_steps", "must be >= 0", self.log_every_steps)
        need(isinstance(self.report_to, list), "train.report_to", "must be a list such as [tensorboard]", self.report_to)
        self.deepspeed.check()


@dataclass
class ScalingConfig:
    num_workers: int | str = "auto"
    """Ray Train workers (one per GPU when `use_gpu`). `auto`: one per GPU with `use_gpu`, else one per CPU node
    (a worker's torch threads share a node better than workers that all-reduce every step)."""
    use_gpu: bool = False
    """Train on GPUs."""
    cpus_per_worker: float | str = "auto"
    """CPUs each training worker reserves (its torch threads: this, rounded up). `auto`: 1 with GPUs, else the
    node's CPUs less the data tier's share."""
    resources_per_worker: dict = field(default_factory=dict)
    """Extra Ray resources each training worker requests, e.g. `{trainer: 1}` to pin training to a node type
    (GPUs come from `use_gpu`)."""

    def check(self) -> None:
        workers, cpus = self.num_workers, self.cpus_per_worker
        auto_or("scaling.num_workers", workers, not isinstance(workers, str) and workers >= 1, "must be >= 1")
        auto_or("scaling.cpus_per_worker", cpus, not isinstance(cpus, str) and cpus > 0, "must be > 0")
        _check_resources("scaling.resources_per_worker", self.resources_per_worker)


@dataclass
class RayConfig:
    address: str | None = None
    """Ray cluster address; `RAY_ADDRESS` wins; with neither a local Ray is started."""


@dataclass
class TuneConfig:
    num_samples: int = 8
    """Trials in the search."""
    learning_rate: dict = field(default_factory=lambda: {"loguniform": [1.0e-6, 1.0e-4]})
    """Search space for `train.learning_rate`: `{loguniform: [lo, hi]}`, `{uniform: ...}` or `{choice: [...]}`."""
    frozen_encoder_layers: dict = field(default_factory=lambda: {"choice": [0, 2, 4, 6]})
    """Search space for frozen depth: `{choice: [...]}` or `{randint: [lo, hi]}` (hi exclusive)."""
    space: dict = field(default_factory=dict)
    """More searched keys, dotted, each a distribution: `{train.weight_decay: {uniform: [0, 0.1]}, augment.noise.p: ...}`."""
    metric: str = "wer"
    """What ASHA and the ranking minimise: in-domain `wer`, `cer` or `eval_loss` (for models too raw for WER)."""
    search: str = "random"
    """`random`, or `tpe` (Optuna's TPE; needs `pip install optuna`)."""
    max_concurrent_trials: int = 0
    """Trials running at once; 0 = as many as the cluster's resources allow."""
    grace_period: int = 1
    """ASHA: evaluations every trial gets before it can be stopped."""
    reduction_factor: int = 2
    """ASHA: only the best 1/reduction_factor of trials go on at each rung."""
    max_general_wer_increase: float | None = None
    """Forgetting constraint: a trial whose general WER rises by more than this (absolute) over the base
    model's fails it and cannot be best (the base is measured in each trial before training)."""
    constraints: dict = field(default_factory=dict)
    """More bounds a trial must keep to count (like `max_general_wer_increase`): `{max_<metric>: X}` or
    `{min_<metric>: X}` on any metric of its last evaluation, e.g. with `train.regression` on
    `{min_abilities_language_id_accuracy: 0.8, max_other_language_wer_change: 0.02, max_timestamp_error_s_change: 0.1}`.
    A trial that did not report the metric fails the bound."""
    seed: int = 0
    """Seed of the search's sampler."""

    def check(self) -> None:
        """The search's settings and the form of each distribution; whether a searched key names a real config key
        needs the whole config (`ray_asr.tune.check_space`, on the driver before any trial starts)."""
        need(self.num_samples >= 1, "tune.num_samples", "must be >= 1", self.num_samples)
        spaces = {f"tune.{key}": getattr(self, key) for key in ("learning_rate", "frozen_encoder_layers")}
        need(isinstance(self.space, dict), "tune.space", "must be a mapping of dotted keys", self.space)
        for key, space in self.space.items():
            need(str(key).startswith(("train.", "augment.", "data.")), f"tune.space.{key}",
                 "must name a train.*, augment.<name>.* or data.* key", key)
            spaces[f"tune.space.{key}"] = space
        for key, space in spaces.items():
            kind, args = next(iter(space.items())) if isinstance(space, dict) and len(space) == 1 else (None, None)
            ok = (kind == "choice" and isinstance(args, list) and args) or (
                kind in DISTRIBUTIONS and isinstance(args, list) and len(args) == 2 and args[0] < args[1])
            need(bool(ok), key, "must be one of {loguniform: [lo, hi]}, {uniform: [lo, hi]}, {randint: [lo, hi]}, "
                 "{choice: [...]}", space)
        one_of(self.search, "tune.search", ("random", "tpe"))
        one_of(self.metric, "tune.metric", ("wer", "cer", "eval_loss"))
        need(self.max_concurrent_trials >= 0, "tune.max_concurrent_trials", "must be >= 0", self.max_concurrent_trials)
        need(self.grace_period >= 1, "tune.grace_period", "must be >= 1", self.grace_period)
        need(isinstance(self.constraints, dict), "tune.constraints", "must be a mapping", self.constraints)
        for key, bound in self.constraints.items():
            need(str(key).startswith(("max_", "min_")) and len(str(key)) > 4, f"tune.constraints.{key}",
                 "must be max_<metric> or min_<metric>", key)
            need(isinstance(bound, (int, float)) and not isinstance(bound, bool), f"tune.constraints.{key}",
                 "must be a number", bound)
        need(self.reduction_factor >= 2, "tune.reduction_factor", "must be >= 2", self.reduction_factor)
        need(self.max_general_wer_increase is None or self.max_general_wer_increase >= 0,
             "tune.max_general_wer_increase", "must be >= 0", self.max_general_wer_increase)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Which Whisper to start from."""
    data: DataConfig = field(default_factory=DataConfig)
    """Inputs and the data tier."""
    augment: list = field(default_factory=list)
    """Waveform augmentations applied in order on the CPU tier: `[{name: noise, p: 0.5, ...}]`."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training recipe."""
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    """Ray Train workers."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Which Ray cluster to use."""
    output_dir: str = "runs/default"
    """Where the model, metrics, quarantine and plots are written."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """Ray Tune search."""

    @property
    def quarantine_path(self) -> Path:
        return Path(self.data.quarantine or Path(self.output_dir) / "quarantine.jsonl")


def need(ok: bool, key: str, rule: str, value: Any) -> None:
    """Raises the one-line `ConfigError` for `key` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {rule}, got {value!r}")


def one_of(value: Any, key: str, allowed: tuple) -> None:
    need(value in allowed, key, f"must be one of {', '.join(allowed)}", value)


def auto_or(key: str, value: Any, ok: bool, rule: str) -> None:
    need(value == AUTO or (not isinstance(value, str) and ok), key, f"{rule} or auto", value)


def _check_transforms(key: str, specs: list) -> None:
    if not specs:
        return  # no import of augment/ for a config without transforms (a script named augment.py may shadow it)
    from augment import REGISTRY

    for i, spec in enumerate(specs):
        need(isinstance(spec, dict) and "name" in spec, f"{key}[{i}]", "must be a mapping with a name", spec)
        need(spec["name"] in REGISTRY, f"{key}[{i}].name", f"must be one of {', '.join(sorted(REGISTRY))}", spec["name"])
        p = spec.get("p", 1.0)
        need(isinstance(p, (int, float)) and 0 <= p <= 1, f"{key}[{i}].p", "must be in [0, 1]", p)


def _check_resources(key: str, resources: dict) -> None:
    for name, amount in resources.items():
        need(name not in ("CPU", "GPU", "memory"), key,
             "CPUs and GPUs have their own keys (cpus/num_cpus, use_gpu); name a custom resource", name)
        need(isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount > 0, f"{key}.{name}",
             "must be a number > 0", amount)


PROMPT_VOCABULARY_KEYS = ("file", "p", "distractors")


def _check_prompt_vocabulary(spec: dict | None) -> None:
    if spec is None:
        return
    need(isinstance(spec, dict) and "file" in spec, "train.prompt_vocabulary", "must be {file: terms.txt, p: 0.5}",
         spec)
    for name, value in spec.items():
        key = f"train.prompt_vocabulary.{name}"
        need(name in PROMPT_VOCABULARY_KEYS, key, f"unknown key (known: {', '.join(PROMPT_VOCABULARY_KEYS)})", name)
        if name == "file":
            need(isinstance(value, str) and Path(value).is_file(), key, "must be a file of terms, one a line", value)
        elif name == "p":
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1, key,
                 "must be in [0, 1]", value)
        else:
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key, "must be an int >= 0",
                 value)


def _check_spec_augment(spec: dict | None) -> None:
    from ray_asr.features import SPEC_AUGMENT_KEYS

    if spec is None:
        return
    for name, value in spec.items():
        key = f"train.spec_augment.{name}"
        need(name in SPEC_AUGMENT_KEYS, key, f"unknown key (known: {', '.join(SPEC_AUGMENT_KEYS)})", name)
        if name == "p":
            need(isinstance(value, (int, float)) and 0 <= value <= 1, key, "must be in [0, 1]", value)
        else:
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key, "must be an int >= 0", value)


def validate(cfg: Config) -> Config:
    """Checks every value, section by section (each section's `check`); raises `ConfigError` naming the first
    bad field."""
    for section in (cfg.model, cfg.data, cfg.train, cfg.scaling, cfg.tune):
        section.check()
    _check_transforms("augment", cfg.augment)
    if cfg.data.labels.timestamps:  # preprocess runs before the speech bounds are found; augmentation after
        moving = [spec["name"] for spec in cfg.augment if spec["name"] in TIME_MOVING_TRANSFORMS]
        need(not moving, "data.labels.timestamps", f"cannot be used with augment {', '.join(moving)} (it moves speech "
             "in time, so the timestamps would be wrong); drop one", cfg.data.labels.timestamps)
    need(bool(cfg.output_dir), "output_dir", "must be set", cfg.output_dir)
    return cfg


AUTO = "auto"  # a value resolved from the hardware when the run starts (`ray_asr.layout`, `ray_asr.hardware`)
DISTRIBUTIONS = ("loguniform", "uniform", "randint")  # each takes [lo, hi]; `choice` takes a list


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Checks `value` against a field's type hint, building nested dataclasses from mappings."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping, got {value!r}")
        return _build(hint, value, key)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                try:
                    return _coerce(value, option, key)
                except ConfigError:
                    continue
        raise ConfigError(f"{key}: expected {' or '.join(getattr(o, '__name__', str(o)) for o in options)}, got {value!r}")
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads `3e-5` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{dotted}: unknown key (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _apply_override(tree: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"{override}: overrides are dotted.key=value")
    dotted, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[leaf] = value


def from_dict(values: dict, overrides: list[str] = ()) -> Config:
    """Builds and validates a `Config` from a mapping plus `dotted.key=value` overrides."""
    tree = copy.deepcopy(values or {})  # overrides must not reach into the caller's nested mappings
    for override in overrides:
        _apply_override(tree, override)
    return validate(_build(Config, tree))


def load(path: str | Path, overrides: list[str] = ()) -> Config:
    """Loads a YAML config; relative data and model paths stay relative to the working directory."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{path}: must be a mapping of sections")
    return from_dict(values or {}, overrides)


def to_dict(cfg: Config) -> dict:
    """The config as plain data, for YAML dumps and Ray Train's `train_loop_config`."""
    return dataclasses.asdict(cfg)
