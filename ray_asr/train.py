"""The recipe every Ray Train worker runs: Whisper under DeepSpeed ZeRO, evaluated and checkpointed.

    load Whisper → strategy + frozen depth → deepspeed.initialize (over Ray's process group)
    → resume from the last Ray checkpoint, if any
    → per epoch: stream this worker's share of `train` → log-mel on the worker → frozen encoder layers
         (from the activation cache after a clip's first pass, `ray_asr.encoder`) → forward/backward/step
         every `eval_every_steps` and at each epoch's end: sharded generation on `eval` (and
         `general_eval`), gathered → metrics → checkpoint (every rank's DeepSpeed shard) → report
    → the last checkpoint also carries the exported model

Ranks stay in lock-step: shares of a streaming split differ by up to a block, so a rank whose
share has run out steps on a zero-weighted dummy batch until every rank is done (DeepSpeed's
gradient all-reduce, and ZeRO-3's parameter gathers, need every rank in every step).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from transformers.modeling_outputs import BaseModelOutput

from ray_asr import (
    allocator,
    checkpoint,
    collate,
    config,
    cross_attention,
    evaluate,
    export,
    hardware,
    labels,
    layout,
    metrics,
    progress,
    reward,
)
from ray_asr import model as model_lib
from ray_asr.activation_cache import ActivationCache, default_folder
from ray_asr.checkpoint import RunState
from ray_asr.encoder import FrozenBoundary, deterministic, fingerprint, whisper_of
from ray_asr.eval_cache import EvalCache, shuffled
from ray_asr.watchdog import Watchdog
from ray_asr.zero import deepspeed_config, effective, fp32_values, init_distributed, optimizer, restore_masters

# Through logging, not print: Ray Train tees worker prints to stdout and its logger, so a print shows twice.
log = logging.getLogger(__name__)
EXPORTED_FILE = "exported.json"  # in the final checkpoint: the step whose model `model/` holds
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class RunStop(Exception):
    """Ends the run on every rank at once, without a retry (the driver prints the message as its one line):
    raised where every rank has agreed on it, so all of them report it together."""


def any_rank(flag: bool, group=None) -> bool:
    """Whether `flag` holds on some rank (a CPU all-reduce over `group`: no device sync)."""
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


def lockstep(batches, dummy, group=None):
    """Yields `(batch, real)` until every rank's iterator is exhausted; spent ranks get `(dummy, False)`."""
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        if not any_rank(batch is not None, group):
            return
        yield (batch, True) if batch is not None else (dummy, False)


def _dummy_batch(n_mels: int, eos: int, device) -> dict:
    """One silent clip whose label is end-of-text: a harmless forward for a rank with no data left."""
    return {"input_features": torch.zeros(1, n_mels, 3000, device=device),
            "labels": torch.tensor([[eos]], device=device), "id": [""], "text": [""]}


def teacher_forced_loss(forward, model_config, inputs: dict, batch: dict) -> torch.Tensor:
    """Token-mean cross-entropy of the batch's labels, teacher-forced (after its prompt's `decoder_input_ids` where
    it has them), with the log-softmax in fp32.

    transformers' own loss takes the logits as the model makes them: in a bf16 run they are bf16, 8 bits of
    mantissa on values near 20, whose rounding reached every token's probabilities and so the gradients.
    """
    logits = forward(**inputs, decoder_input_ids=reward.decoder_inputs(batch, model_config), use_cache=False).logits
    return reward.cross_entropy(logits, batch["labels"])


def cache_keys(split: str, ids, cacheable: bool) -> list[str | None]:
    """The activation cache's key of each clip of a batch: its split and row id; None (never cached) for the
    collator's no-speech clips, new noise every time, and for every clip of a batch that is not cacheable."""
    return [f"{split}/{i}" if cacheable and not str(i).startswith(collate.NO_SPEECH_ID) else None for i in ids]


class Worker:
    """One rank's training state: engine, data iterators, counters. `run()` is the whole recipe."""

    def __init__(self, loop_config: dict):
        self.cfg = config.from_dict(loop_config["config"])
        self.plan = loop_config["plan"]
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.report = progress.Reporter(self.plan.get("progress"), speaks=self.rank == 0)
        self.stage_asked = self.cfg.train.deepspeed.stage
        self.cfg = dataclasses.replace(self.cfg, train=effective(self.cfg.train, self.world))
        self.synced = self.cfg.train.deepspeed.stage == 3 and self.world > 1  # ZeRO-3 ranks decode in lock-step
        # Ray pins OMP_NUM_THREADS to the worker's whole CPUs; torch's intra-op pool takes the CPUs it holds.
        torch.set_num_threads(layout.threads(self.cfg.scaling.cpus_per_worker))
        allocator.keep_freed_memory()  # before the model's first allocations
        self.device = ray.train.torch.get_device()
        # Control flow (who has data, decode lengths) goes over gloo on the CPU: no device sync per step.
        self.control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        self.precision = self._precision()
        self.dtype = DTYPES[self.precision]
        self.tokenizer = labels.load_tokenizer(self.cfg.model.name_or_path, self.cfg.model.language, self.cfg.model.task)
        self.boundary: FrozenBoundary | None = None
        self.engine = self._engine()
        n_mels = self.engine.module.config.num_mel_bins
        # Each rank masks with its own generator (seed + a prime stride per rank).
        self.train_collate, self.collate = collate.for_splits(n_mels, self.cfg.data.wire_dtype, self.device,
                                                              self.cfg.train.spec_augment, self.cfg.train.seed + 7919 * self.rank,
                                                              prompts=self._prompts(), no_speech=self._no_speech())
        self.dummy = _dummy_batch(n_mels, self.tokenizer.eos_token_id, self.device)
        # MWER and rated feedback rows (`train.objective`, `data.feedback`); its sampling seed differs per rank.
        self.objective = reward.Objective(self.cfg.train, self.tokenizer, self.cfg.model.language,
                                          seed=self.cfg.train.seed + 7919 * self.rank)
        self.state = RunState()
        self.loss_sum, self.loss_count, self.steps_run = torch.zeros((), device=self.device), 0, 0
        self.clips, self.step_seconds = 0, 0.0  # real clips trained and time in steps since the last evaluation
        self.predictions: dict[str, list[dict]] = {}  # split → per-utterance rows of the latest evaluation
        self.eval_cache = EvalCache(self.cfg.data.eval_cache_mb)
        # Augmented clips differ every epoch; SpecAugment and the collator's other additions act after the cache.
        self.train_cache = EvalCache(0 if self.cfg.augment else self.cfg.data.train_cache_mb)
        self.exported_step = 0
        self.skipped_batches = 0  # updates skipped for a non-finite loss or gradients (`train.nan_policy`)
        self.nan_injected = False
        self.best: dict | None = None  # rank 0: the trained values at the best evaluation (`train.early_stopping`)
        self.watchdog = Watchdog(self._stall_message, warn=lambda text: self.report.say(text, warning=True)) \
            if self.rank == 0 else None
        self.tracker = self._tracker()

    def _prompts(self) -> collate.PromptMaker | None:
        """`train.prompt_vocabulary` and `data.labels.previous_text` as the training collator's prompt maker, or None."""
        from ray_asr import vocabulary

        spec, previous = self.cfg.train.prompt_vocabulary or {}, self.cfg.data.labels.previous_text
        if not spec and not previous:
            return None
        terms = vocabulary.read_terms(spec["file"]) if spec else []
        return collate.PromptMaker(terms, float(spec.get("p", 0.5)), int(spec.get("distractors", 3)), self.tokenizer,
                                   self.engine.module.config.decoder_start_token_id, previous_text=previous)

    def _no_speech(self) -> collate.NoSpeechMaker | None:
        """`data.labels.no_speech` as the training collator's no-speech clip maker, or None."""
        share = self.cfg.data.labels.no_speech
        if not share:
            return None
        files = tuple(f for spec in self.cfg.augment if spec.get("name") == "noise" for f in spec.get("files", []))
        return collate.NoSpeechMaker(share, (*self.tokenizer.prefix, self.tokenizer.eos_token_id), noise_files=files)

    def _precision(self) -> str:
        """`train.precision`, `auto` resolved the same on every rank (bf16 only if every rank has it natively)."""
        requested = self.cfg.train.precision
        native = not any_rank(not hardware.bf16_native(self.device), self.control)
        precision = hardware.resolve_precision(requested, self.device, native)
        if precision == "bf16" and not native and self.device.type == "cpu":
            self.report.say(f"[train] train.precision: bf16 on a CPU without native bf16: a matmul measured "
                        f"{hardware.bf16_slowdown():.0f}x slower than fp32 here; use train.precision=auto (fp32 here)",
                            warning=True)
        self.precision_note = hardware.describe(precision, requested, self.device)
        return precision

    def _engine(self):
        import deepspeed
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        torch.manual_seed(self.cfg.train.seed)
        net = model_lib.apply_strategy(model_lib.load(self.cfg.model.name_or_path), self.cfg.train)
        if self.cfg.train.gradient_checkpointing:
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        depth = model_lib.depth_of(whisper_of(net), self.cfg.train)
        cache = self._activation_cache(net, depth)  # reads the frozen weights: before ZeRO-3 partitions them
        if self.cfg.train.deepspeed.stage < 3:  # it reads the projections' weights directly, outside ZeRO-3's hooks
            cross_attention.install(whisper_of(net))
        total = self.plan["steps_per_epoch"] * self.cfg.train.epochs
        init_distributed(dist.get_backend())  # joins Ray's process group
        trainable = [p for p in net.parameters() if p.requires_grad]
        loaded = fp32_values(net) if self.precision != "fp32" else {}
        engine, *_ = deepspeed.initialize(model=net, model_parameters=trainable, optimizer=optimizer(self.cfg.train, trainable),
                                          config=deepspeed_config(self.cfg.train, total, self.precision, net.config.d_model))
        restore_masters(engine, loaded)
        if self.world == 1 and self.cfg.train.deepspeed.stage == 0:
            # One rank's all-reduce is the identity, yet DeepSpeed flattens every gradient into buckets and copies
            # them back each step (~75 ms of a whisper-base decoder step, measured). ZeRO stages need the call.
            engine.enable_backward_allreduce = False
        checkpoint.use_safe_loading(engine)
        if cache is not None:
            self.boundary = FrozenBoundary(engine.module, depth, cache,
                                           anyone=(lambda flag: any_rank(flag, self.control)) if self.synced else None)
        if self.rank == 0:  # counted on every rank would gather ZeRO-3 partitions for nothing
            share = model_lib.trainable_summary(engine.module)
            threads = "GPU" if self.device.type == "cuda" else f"{torch.get_num_threads()} threads"
            stage = self.cfg.train.deepspeed.stage
            zero = f"ZeRO-{stage}" + (f" (stage {self.stage_asked} partitions nothing on one worker)"
                                      if stage != self.stage_asked else "")
            self.report.say(f"[train] {self.cfg.train.strategy}: {share['trainable']:,} of {share['total']:,} parameters "
                     f"train ({share['share']:.1%}); {zero}, {self.precision_note}, "
                     f"{self.world} worker{'s' if self.world > 1 else ''} ({threads}), ~{total} steps")
            self.report.say(f"[train] activation cache: {self._cache_note(depth, cache)}")
        return engine

    def _activation_cache(self, net, depth: int) -> ActivationCache | None:
        """The frozen-boundary cache, or None where the frozen part is absent or not the same every time."""
        d = self.cfg.data
        if depth == 0 or d.activation_cache_mb <= 0 or not deterministic(whisper_of(net).config):
            return None
        folder = d.activation_cache_dir or default_folder()
        return ActivationCache(d.activation_cache_mb, folder, fingerprint(net, depth, self.dtype),
                               share_disk=self.world > 1, keep_files=d.activation_cache_dir is not None)

    def _cache_note(self, depth: int, cache: ActivationCache | None) -> str:
        if cache is None:
            why = ("no frozen encoder layers" if depth == 0 else "data.activation_cache_mb is 0"
                   if self.cfg.data.activation_cache_mb <= 0 else "the encoder has dropout or layer drop")
            return f"off ({why})"
        where = "evaluation splits only (augmented training clips differ every epoch)" if self._perturbed() else \
            "training and evaluation splits"
        return (f"on below encoder layer {depth}, {where}; up to {self.cfg.data.activation_cache_mb:g} MiB in memory, "
                f"then {cache.folder.parent}")

    def _stall_message(self, waited: float) -> str:
        """What a stalled data tier is waiting for: free resources against what its stages ask."""
        total, free = ray.cluster_resources(), ray.available_resources()
        d = self.cfg.data
        asks = f"decode actors ask {d.prepare_num_cpus:g} CPU each"
        if self.cfg.augment:
            asks += f", augment actors {d.augment_num_cpus:g}"
        if d.augment_resources:
            asks += f", all with {d.augment_resources}"
        return (f"[data] no batch for {waited:.0f} s; Ray has {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs "
                f"free and {asks}: lower scaling.cpus_per_worker or data.prepare_num_cpus, or add CPU nodes")

    def _perturbed(self) -> bool:
        """Whether training clips differ every epoch (waveform augmentation or SpecAugment): not cacheable."""
        return bool(self.cfg.augment) or self.cfg.train.spec_augment is not None

    def _tracker(self):
        """Rank 0's experiment trackers (`train.report_to`); a no-op elsewhere."""
        from ray_asr import tracking

        if self.rank != 0 or not self.cfg.train.report_to:
            return tracking.Tracker.open([], Path(self.cfg.output_dir), self.cfg.train.run_name, {})
        params = {"model": self.cfg.model.name_or_path, "strategy": self.cfg.train.strategy,
                  "frozen_encoder_layers": self.cfg.train.frozen_encoder_layers,
                  "learning_rate": self.cfg.train.learning_rate, "epochs": self.cfg.train.epochs,
                  "batch_size_per_worker": self.cfg.train.batch_size_per_worker, "workers": self.world,
                  "zero_stage": self.cfg.train.deepspeed.stage}
        return tracking.Tracker.open(self.cfg.train.report_to, Path(self.cfg.output_dir), self.cfg.train.run_name, params)

    def close(self) -> None:
        self.tracker.close()
        if self.boundary is not None and self.boundary.cache is not None:
            self.boundary.cache.close()
        if self.watchdog is not None:
            self.watchdog.stop()

    def resume(self) -> None:
        found = self._resume_point()
        if found is None:
            return
        with found.as_directory() as folder:
            self.state = checkpoint.read_state(Path(folder))
            self.state.done = self.state.finished(self.cfg.train.epochs)
            if not self.state.done:
                checkpoint.load(self.engine, Path(folder))
        where = "finished" if self.state.done else f"epoch {self.state.epoch}, batch {self.state.batches_done}"
        self.report.say(f"[train] resumed from checkpoint at step {self.state.step} ({where})")

    def _resume_point(self) -> ray.train.Checkpoint | None:
        """The checkpoint to resume from: the newest complete one in the run's storage folder. Usually that is the
        one Ray Train recorded; it is not when a storage fault tore that one after Ray recorded it, or when the
        worker was lost between sealing a checkpoint and reporting it (a node going at that moment). None: the
        run starts from the beginning (and says so where Ray had recorded one)."""
        storage = ray.train.get_context().get_storage()
        fs, root = storage.storage_filesystem, storage.experiment_fs_path
        recorded = ray.train.get_checkpoint()
        newest = checkpoint.newest_complete(fs, root)
        if recorded is not None:
            issues = checkpoint.problems(recorded.filesystem, recorded.path)
            if issues:
                where = f"resuming from {newest.rsplit('/', 1)[-1]}" if newest else "no complete one is left: starting over"
                self.report.say(f"[train] checkpoint {recorded.path} is incomplete ({issues[0]}); {where}", warning=True)
            elif newest is None or newest.rsplit("/", 1)[-1] <= recorded.path.rstrip("/").rsplit("/", 1)[-1]:
                return recorded
        elif newest is not None:
            self.report.say(f"[train] {newest.rsplit('/', 1)[-1]} was sealed but never reported (the worker was lost "
                            f"in between): resuming from it")
        return ray.train.Checkpoint(newest, filesystem=fs) if newest else None

    def run(self) -> None:
        if self.plan.get("score_to"):  # a search's one scoring of the starting model
            row = self._eval_row(epoch=0)
            if self.rank == 0:  # an actor, since Ray Train keeps only the metrics reported with a checkpoint
                ray.get(self.plan["score_to"].put.remote(row))
            return
        self.resume()
        if self.state.done:  # a finished run: report its final metrics again, train nothing
            ray.train.report({**self.state.history[-1], "steps_run": 0, "finished": True})
            return
        every = self.cfg.train.eval_every_steps
        if (self.cfg.train.eval_at_start or self.plan.get("regression_suite")) and not self.state.history:
            # Kept in the history, not reported: a search's scheduler should rank trials on trained steps only.
            # A search scores the starting model once for all its trials (`plan["base_row"]`).
            self.state.history.append(self.plan.get("base_row") or self._eval_row(epoch=0))
            self._track_best(final=False)  # the starting model is a candidate too: a fine-tune may never beat it
        for epoch in range(self.state.epoch, self.cfg.train.epochs):
            batches = map(self.train_collate, self._train_rows(epoch))
            skip = self.state.batches_done  # resumed mid-epoch: batches trained before the restart
            self._start_train_bar()
            for n, (batch, real) in enumerate(lockstep(self._watched(batches), self.dummy, self.control)):
                if n < skip:
                    continue
                stepped = self._train_step(batch, real)
                self.state.batches_done = n + 1
                if stepped:
                    self._after_step(epoch)
                if stepped and every and self.state.step % every == 0:
                    self._evaluate_and_checkpoint(epoch + 1, final=False)  # the epoch in progress
                    if self.state.stopped_early:
                        break
                    self._start_train_bar()
            if not self.state.stopped_early:
                self._settle(self.train_cache, "train", "[train] training split: kept in worker memory, reshuffled there "
                             "each epoch", "[train] training split: over data.train_cache_mb on some worker, streamed every epoch")
                self.state.epoch, self.state.batches_done = epoch + 1, 0
                self._evaluate_and_checkpoint(epoch + 1, final=epoch + 1 == self.cfg.train.epochs)
            if self.state.stopped_early:  # at an evaluation in or at the end of this epoch
                self._evaluate_and_checkpoint(epoch + 1, final=True)  # evaluated already: the final checkpoint
                return

    def _train_rows(self, epoch: int):
        """This rank's raw training batches for `epoch`: its shard streamed and shuffled by the data tier (and kept
        on the first pass, within `data.train_cache_mb`), or, once kept, the kept rows in this epoch's order."""
        size, seed = self.cfg.train.batch_size_per_worker, self.cfg.train.seed + 1000 * epoch + self.rank
        kept = self.train_cache.kept.get("train")
        if kept is not None:  # train.shuffle_buffer: 0 asks for stream order, the first epoch's
            return shuffled(kept, size, np.random.default_rng(seed)) if self.cfg.train.shuffle_buffer else iter(kept)
        stream = ray.train.get_dataset_shard("train").iter_batches(
            batch_size=size, batch_format="numpy", prefetch_batches=2,
            local_shuffle_buffer_size=self.cfg.train.shuffle_buffer or None, local_shuffle_seed=seed)
        return self.train_cache.batches("train", stream)

    def _settle(self, cache: EvalCache, split: str, kept_says: str, streamed_says: str) -> None:
        """After a whole pass over `split` on every rank (collective): `cache` keeps it where every rank's share fit;
        rank 0 says which, once."""
        first_pass = split not in cache.settled
        kept = cache.settle(split, self.device)
        if first_pass and self.rank == 0 and cache.limit > 0:
            log.info(kept_says if kept else streamed_says)

    def _start_train_bar(self) -> None:
        """The training bar, in optimizer steps over the whole run, drawn again after each evaluation's bar."""
        total = self.plan["steps_per_epoch"] * self.cfg.train.epochs
        self.report.start("train", max(total, self.state.step), "step", done=self.state.step)

    def _after_step(self, epoch: int) -> None:
        """The bar moves and, every `train.log_every_steps`, the trackers get the running loss (the one host
        sync in the loop, and only with trackers on)."""
        rate = self.clips * self.world / max(self.step_seconds, 1e-9)  # this rank's pace, for every rank
        self.report.advance("train", 1, f"epoch {epoch + 1}/{self.cfg.train.epochs}, {rate:.2f} clips/s")
        every = self.cfg.train.log_every_steps
        if self.tracker.backends and every and self.state.step % every == 0 and self.loss_count:
            self.tracker.scalars(self.state.step, {"train_loss": float(self.loss_sum) / self.loss_count,
                                                   "learning_rate": self.engine.get_lr()[0], "train_clips_per_s": rate})

    def _watched(self, batches):
        return self.watchdog.watch(batches) if self.watchdog else batches

    def _encoder_inputs(self, batch: dict, split: str, real: bool) -> dict:
        """The model's encoder input for a batch: the encoder output through the frozen boundary (cached per
        clip where nothing perturbs it), else the log-mel features."""
        features = batch["input_features"].to(self.dtype)
        if self.boundary is None:
            return {"input_features": features}
        cacheable = real and (split != "train" or not self._perturbed())
        keys = cache_keys(split, batch["id"], cacheable)
        return {"encoder_outputs": BaseModelOutput(last_hidden_state=self.boundary(features, keys))}

    def _train_step(self, batch: dict, real: bool) -> bool:
        """One micro-batch; returns whether the optimizer stepped. Nothing here waits for the device."""
        self._maybe_fail()
        started = time.perf_counter()
        self.engine.train()
        before = self.engine.global_steps
        inputs = self._encoder_inputs(batch, "train", real)
        if self.objective.applies(batch):
            hidden = (inputs["encoder_outputs"].last_hidden_state if "encoder_outputs" in inputs
                      else whisper_of(self.engine.module).get_encoder()(**inputs).last_hidden_state)
            loss = self.objective.loss(self.engine, hidden, batch, real, self.synced, self._agree_max, self.state.step)
        else:
            loss = teacher_forced_loss(self.engine, whisper_of(self.engine.module).config, inputs, batch)
        loss = loss if real else loss * 0.0
        if real and self._injects_nan():
            loss = loss * float("nan")
        ids = batch["id"] if real else []
        # The one host read per micro-batch: a non-finite loss must be caught before its update is applied.
        if self._skips(not bool(torch.isfinite(loss)), ids, "loss"):
            self.step_seconds += time.perf_counter() - started
            return False
        skipped = self.engine.skipped_steps
        self.engine.backward(loss)
        self.engine.step()
        if real:
            self.loss_sum += loss.detach()
            self.loss_count += 1
            self.clips += len(batch["id"])
        self.step_seconds += time.perf_counter() - started
        stepped = self.engine.global_steps != before
        if stepped:
            self.state.step = self.engine.global_steps
            self.steps_run += 1
            # DeepSpeed drops a step whose gradients overflow (fp16's loss scaler does so by design, not counted).
            if self.precision != "fp16" and self.engine.skipped_steps != skipped:
                self._skips(True, ids, "gradients", step=self.state.step)
        return stepped

    def _injects_nan(self) -> bool:
        """Fault injection (`train.fail_nan_at_step`): the first batch of that step gives a NaN loss, once."""
        step = self.cfg.train.fail_nan_at_step
        if not step or self.nan_injected or self.state.step + 1 != step:
            return False
        self.nan_injected = True
        return True

    def _skips(self, bad: bool, ids, what: str, step: int | None = None) -> bool:
        """`train.nan_policy` for a batch whose loss (or gradients) is non-finite on some rank: whether its update
        is skipped; raises `RunStop` with the step and the rows when the policy or `train.max_nan_steps` says
        stop. Every rank takes the same branch (the flag and the row ids are gathered)."""
        if not any_rank(bad, self.control):
            return False
        parts = [None] * self.world
        dist.all_gather_object(parts, [str(i) for i in ids] if bad else [], group=self.control)
        rows = [i for part in parts for i in part]
        shown = ", ".join(rows[:8]) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
        found = f"non-finite {what} at step {step or self.state.step + 1} (rows: {shown or 'none'})"
        self.skipped_batches += 1
        policy, limit = self.cfg.train.nan_policy, self.cfg.train.max_nan_steps
        if policy == "stop":
            raise RunStop(f"{found}; train.nan_policy is stop: check those rows (`ray-asr validate`), lower "
                          f"train.learning_rate, or set train.nan_policy=skip")
        if self.skipped_batches > limit:
            raise RunStop(f"{found}: {self.skipped_batches} updates skipped, more than train.max_nan_steps={limit}; "
                          f"lower train.learning_rate or check the data (`ray-asr validate`)")
        self.report.say(f"[train] {found}: update skipped ({self.skipped_batches} of train.max_nan_steps={limit})",
                        warning=True)
        return True

    def _maybe_fail(self) -> None:
        """Fault injection (`train.fail_at_step`): the last rank dies once, at that step."""
        step = self.cfg.train.fail_at_step
        if self._injects(step, "fault_marker", f"exits at step {step}"):
            _exit_after_poll()

    def _injects(self, step: int, marker_key: str, says: str) -> bool:
        """Whether a fault injected on the last rank at `step` fires now: once per run (the plan's `marker_key`
        file remembers it across restarts), saying so in one line (the last rank is otherwise silent)."""
        marker = self.plan.get(marker_key)
        if not step or self.state.step != step or self.rank != self.world - 1 or marker is None or Path(marker).exists():
            return False
        Path(marker).write_text(f"rank {self.rank} {says}\n")
        self.report.say(f"[train] fault injection: rank {self.rank} {says}", warning=True, every_rank=True)
        return True

    def _agree_max(self, value: int) -> int:
        """The largest of every rank's `value` (decode lengths: ranks decoding in lock-step decode as long)."""
        found = torch.tensor([value])
        dist.all_reduce(found, op=dist.ReduceOp.MAX, group=self.control)
        return int(found.item())

    def _evaluate(self, split: str) -> dict:
        """Sharded generation on one split, gathered on every rank; under `train.objective: mwer` also the
        N-best's figures (`reward.Tally`)."""
        model = self.engine.module
        model.eval()
        rows, loss_sum, loss_n = [], 0.0, 0
        tally = reward.Tally() if self.objective.mwer else None
        stream = ray.train.get_dataset_shard(split).iter_batches(batch_size=self.cfg.train.batch_size_per_worker,
                                                                 batch_format="numpy")
        batches = map(self.collate, self._watched(self.eval_cache.batches(split, stream)))
        phase = f"{split} (step {self.state.step})"
        self.report.start(phase, self.plan.get("split_rows", {}).get(split, 0), "clip")
        with torch.no_grad():
            for batch, real in lockstep(batches, self.dummy, self.control):
                inputs = self._encoder_inputs(batch, split, real)
                if "input_features" in inputs:  # the encoder once, for the loss and the decoding alike
                    encoder = whisper_of(model).get_encoder()
                    inputs = {"encoder_outputs": BaseModelOutput(last_hidden_state=encoder(**inputs).last_hidden_state)}
                loss = teacher_forced_loss(model, whisper_of(model).config, inputs, batch)
                limits = evaluate.token_limits(batch["labels"])
                longest = self._agree_max(max(limits))
                language = labels.languages_of(self.tokenizer, batch["labels"], self.cfg.model.language)
                ids, runaway = evaluate.generate(model, limits, self.tokenizer.eos_token_id, self.synced,
                                                 max_new_tokens=longest, language=language, task=self.cfg.model.task,
                                                 **inputs)
                if tally is not None:
                    hyps = reward.nbest(model, self.tokenizer, batch["labels"], self.cfg.model.language,
                                        self.cfg.train.mwer.n_best, "beam", 1.0, limits, self.synced, seed=0,
                                        hidden=inputs["encoder_outputs"].last_hidden_state, max_new_tokens=longest)
                    if real:
                        tally.add(self.tokenizer, self.objective.weights, self.cfg.model.language, batch["text"], ids,
                                  runaway, hyps)
                if real:
                    loss_sum += loss.item() * len(ids)
                    loss_n += len(ids)
                    rows += evaluate.rows(self.tokenizer, ids, runaway, batch["text"], batch["id"])
                    self.report.advance(phase, len(ids), every_rank=True)
        self.report.end(phase)
        self._settle(self.eval_cache, split, f"[eval] {split}: kept in worker memory for later evaluations",
                     f"[eval] {split}: over data.eval_cache_mb on some worker, streamed at every evaluation")
        gathered = [None] * self.world
        dist.all_gather_object(gathered, (rows, loss_sum, loss_n, tally))
        all_rows = sorted((r for part, *_ in gathered for r in part), key=lambda r: r["id"])
        self.predictions[split] = all_rows
        result = metrics.report(all_rows, self.cfg.model.language)
        result["eval_loss"] = sum(s for _, s, _, _ in gathered) / max(sum(n for _, _, n, _ in gathered), 1)
        if tally is not None:
            result.update(reward.Tally.merged([t for *_, t in gathered]))
        return result

    def _abilities(self) -> dict:
        """The abilities report's metrics (`ray_asr.regress`) of the model as it is now, measured on rank 0 and
        shared, with their change from the starting model's where the history starts with it."""
        from ray_asr import regress

        found = [None]
        if self.rank == 0:
            self.report.say(f"[abilities] measuring at step {self.state.step}")
            probe = regress.Probe(self.cfg.model.name_or_path, self.cfg.train.batch_size_per_worker,
                                  model=whisper_of(self.engine.module))
            measured = probe.measure(regress.Suite(**self.plan["regression_suite"]))
            found = [{f"abilities_{key}": measured[key] for key in regress.METRICS}]
        dist.broadcast_object_list(found, src=0)
        row = dict(found[0])
        start = self.state.history[0] if self.state.history and self.state.history[0]["step"] == 0 else {}
        for key, value in found[0].items():
            if value is not None and start.get(key) is not None:
                row[key.removeprefix("abilities_") + "_change"] = value - start[key]
        return row

    def _train_totals(self) -> dict:
        """Mean train loss and throughput since the last row, over every rank; resets the counters."""
        totals = torch.stack([self.loss_sum.double(), torch.tensor(float(self.loss_count), dtype=torch.float64,
                                                                     device=self.device)])
        dist.all_reduce(totals)
        clips = torch.tensor([float(self.clips)])
        dist.all_reduce(clips, group=self.control)
        seconds = torch.tensor([self.step_seconds])
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX, group=self.control)
        loss = float(totals[0] / totals[1]) if totals[1] else float("nan")
        rate = float(clips[0] / seconds[0]) if seconds[0] > 0 else float("nan")
        self.loss_sum, self.loss_count, self.clips, self.step_seconds = self.loss_sum.zero_(), 0, 0, 0.0
        return {"train_loss": loss, "train_clips_per_s": rate}

    def _eval_row(self, epoch: int) -> dict:
        """Train loss since the last row, and every eval split's metrics (logged on rank 0)."""
        started = time.perf_counter()
        self.report.end("train")  # one bar at a time: nested bars garble a console that is not a terminal
        row = {"step": self.state.step, "epoch": epoch, **self._train_totals()}
        for split in metrics.EVAL_SPLITS:
            if split in self.plan["eval_splits"]:
                row.update(metrics.split_row(split, self._evaluate(split)))
        if self.plan.get("regression_suite"):
            row.update(self._abilities())
        row["eval_seconds"] = round(time.perf_counter() - started, 1)
        self.report.say(_eval_line(row))
        if self.plan.get("regression_suite"):
            self.report.say(_abilities_line(row))
        if self.tracker.backends:
            every = self.cfg.train.log_every_steps
            logged = every and row["step"] and row["step"] % every == 0  # `_after_step` wrote the same train loss
            self.tracker.scalars(row["step"], {k: v for k, v in row.items() if not (logged and k.startswith("train_"))})
        return row

    def _track_best(self, final: bool) -> None:
        """`train.early_stopping`: keeps the trained values of the best evaluation so far (rank 0, on the CPU) and
        decides, the same on every rank (the rows are gathered), whether to stop."""
        spec = self.cfg.train.early_stopping
        if spec is None:
            return
        metric, history, guard = spec.get("metric", "wer"), self.state.history, spec.get("max_general_wer_increase")
        found = metrics.best_index(history, metric, guard)
        if found == len(history) - 1 and not final:
            state = export.trainable_state(self.engine)  # collective under ZeRO-3
            self.best = {"step": self.state.step, "state": state} if self.rank == 0 else {"step": self.state.step}
        # Patience counts on the metric alone: general WER often rises early in a fine-tune and comes back, so a
        # bound on it chooses what is exported, never when to stop.
        stale = metrics.stale_evaluations(history, metric)
        if not final and stale >= spec.get("patience", 3):
            self.state.stopped_early = True
            best = history[found] if found is not None else {}
            self.report.say(f"[train] early stopping at step {self.state.step}: {metric} has not improved for {stale} "
                            f"evaluations; exporting step {best.get('step', self.state.step)}'s model "
                            f"({metric} {best.get(metric, float('nan')):.4g})")

    def _exported_state(self) -> dict:
        """What the final checkpoint exports: the best evaluation's trained values under `train.early_stopping`
        when they are kept and better than the last, else the last (collective under ZeRO-3)."""
        last = export.trainable_state(self.engine)
        self.exported_step = self.state.step
        spec = self.cfg.train.early_stopping
        if spec is None or self.best is None or self.rank != 0:
            return last
        history, metric = self.state.history, spec.get("metric", "wer")
        best = metrics.best_index(history, metric, spec.get("max_general_wer_increase"))
        if best is not None and history[best]["step"] == self.best["step"]:
            self.exported_step = self.best["step"]
            return self.best["state"]
        return last  # the best was before a restart, whose kept values are gone: the last, and the summary says so

    def _evaluate_and_checkpoint(self, epoch: int, final: bool) -> None:
        """Evaluates and checkpoints, once per step: an epoch's end that falls on the eval cadence, or a
        step evaluated before a restart, is not evaluated again (the final checkpoint is still written)."""
        if self.state.evaluated_step == self.state.step and self.state.history:
            if not final:
                return
            row = self.state.history[-1]
        else:
            row = self._eval_row(epoch)
            self.state.history.append(row)
            self.state.evaluated_step = self.state.step
            self._track_best(final)
        trainable = self._exported_state() if final else None
        self.state.done = final
        name = f"step-{self.state.step:07d}{'-final' if final else ''}"
        with tempfile.TemporaryDirectory(prefix="ray-asr-ckpt-") as tmp:
            folder = Path(tmp)
            self._attempt(lambda: self._write_checkpoint(folder, final, trainable), "writing it locally")
            saved = self._persist(folder, name)
        # Not "done": Ray Tune reads a `done` metric as "stop this trial now". Every rank persisted its part
        # and rank 0 sealed the folder: Ray Train only records it.
        ray.train.report({**row, "steps_run": self.steps_run, "finished": final}, checkpoint=saved,
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD)

    def _write_checkpoint(self, folder: Path, final: bool, trainable: dict | None) -> None:
        checkpoint.save(self.engine, folder, self.state if self.rank == 0 else None)
        if final and self.rank == 0:
            export.write(self.cfg, trainable, folder / "model", adapter_out=folder / "adapter")
            (folder / "history.json").write_text(json.dumps(self.state.history, indent=1))
            (folder / EXPORTED_FILE).write_text(json.dumps({"step": self.exported_step}))
            with open(folder / "predictions.jsonl", "w", encoding="utf-8") as f:
                for split, rows in self.predictions.items():
                    f.writelines(json.dumps({"split": split, **r}, ensure_ascii=False) + "\n" for r in rows)

    def _attempt(self, action, doing: str) -> None:
        """Runs `action` on this rank and agrees with the others whether it failed anywhere; a storage error
        (full disk, unwritable path) on any rank becomes one `RunStop` on every rank."""
        error = None
        try:
            action()
        except OSError as err:
            error = f"{type(err).__name__}: {err}"
        if not any_rank(error is not None, self.control):
            return
        errors = [None] * self.world
        dist.all_gather_object(errors, error, group=self.control)
        first = next(e for e in errors if e)
        raise RunStop(f"the checkpoint at step {self.state.step} could not be written ({doing}: {first}); the previous "
                      f"checkpoint is kept: free space or fix train.storage_path / output_dir, then rerun the same "
                      f"command to resume")

    def _persist(self, folder: Path, name: str) -> ray.train.Checkpoint:
        """Copies every rank's files into the checkpoint folder in storage and seals it (`ray_asr.checkpoint`)."""
        storage = ray.train.get_context().get_storage()
        fs, dest = storage.storage_filesystem, f"{storage.experiment_fs_path}/{name}"

        def clear() -> None:  # what an earlier attempt at this step left, torn (a restart repeats the step)
            import pyarrow.fs

            if self.rank == 0 and fs.get_file_info(dest).type == pyarrow.fs.FileType.Directory:
                fs.delete_dir(dest)

        self._attempt(clear, "clearing an earlier attempt")
        tear = self._tears()

        def copy() -> None:
            checkpoint.persist(folder, fs, dest, self.rank, tear=tear)
            if tear:
                _exit_after_poll()

        self._attempt(copy, "copying to storage")
        self._attempt(lambda: self.rank == 0 and checkpoint.seal(fs, dest, self.world, self.state.step), "sealing it")
        return ray.train.Checkpoint(dest, filesystem=fs)

    def _tears(self) -> bool:
        """Fault injection (`train.fail_during_save`): the last rank copies half of its checkpoint at that step,
        once, and dies there, as a kill during the copy does."""
        step = self.cfg.train.fail_during_save
        return self._injects(step, "tear_marker", f"tears the checkpoint at step {step} and exits")


def _exit_after_poll() -> None:
    """An injected death. Ray Train's controller collects reports when it polls (every
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default); a checkpoint is registered once every rank's report is
    in. Waiting past a poll makes the death land after the last checkpoint is recorded, so recovery is repeatable."""
    time.sleep(2.5 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")))
    os._exit(1)


def _eval_line(row: dict) -> str:
    parts = [f"[eval] step {row['step']} epoch {row['epoch']}",
             f"train loss {row['train_loss']:.3f} ({row.get('train_clips_per_s', float('nan')):.2f} clips/s)"]
    if row["step"] == 0:
        parts[1] = "before training"
    for split in metrics.EVAL_SPLITS:
        found = metrics.of_split(row, split)
        if "wer" in found:
            parts.append(f"{split} loss {found['eval_loss']:.3f} WER {found['wer']:.2%} "
                         f"CER {found['cer']:.2%} runaway {found['runaway_outputs']}")
            if metrics.key(split, "reward") in row:  # `train.objective: mwer`
                parts[-1] += (f" reward {row[metrics.key(split, 'reward')]:.3f} "
                              f"N-best oracle WER {row[metrics.key(split, 'oracle_wer')]:.2%}")
    return " | ".join(parts) + f" | {row['eval_seconds']:.1f} s"


def _abilities_line(row: dict) -> str:
    from ray_asr import regress

    shown = [f"{key} {regress.shown(row.get('abilities_' + key), kind)}" for key, (_, _, kind) in regress.METRICS.items()]
    return f"[abilities] step {row['step']}: " + " | ".join(shown)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point: `loop_config = {"config": Config as dict, "plan": {...}}` (see `ray_asr.finetune`)."""
    worker = Worker(loop_config)
    try:
        worker.run()
    except RunStop as stop:  # every rank is here together: the run ends without a retry, the driver says why
        if worker.rank == 0 and loop_config["plan"].get("stop_to") is not None:
            ray.get(loop_config["plan"]["stop_to"].put.remote(str(stop)))
    finally:
        worker.close()
