"""The Ray Data pipeline: read → decode/resample/validate/tokenise → (augment) → trainers.

    source shards ──plan──► pieces ──Preparer actors──► waveform + labels ──Augmenter actors──► trainers
                            (read rows, decode...)  │   (data.preprocess)    (train split only)
                                                    └── rejected rows ──► QuarantineSink actor ──► quarantine.jsonl

Nothing is materialised: the dataset streams block by block into `TorchTrainer(datasets=...)`
workers (split by `ray_asr.ingest`), who read their share with `ray.train.get_dataset_shard` and turn
waveforms into log-mel themselves (`ray_asr.collate`). This module is what every decode
actor imports, so it stays clear of Ray Train and torch (~1 s of start-up each). Per-row failures are caught inside the stage and routed to the
sink, which fails the run once a split's rejected share passes `data.max_rejected_fraction`.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ray_asr import allocator, audio, labels, sources
from ray_asr.audio import Rejected
from ray_asr.cluster import on_this_node
from ray_asr.config import Config
from ray_asr.prepare import examples, quarantine_record

PREPARED_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("audio", pa.binary()),  # (samples,) 16 kHz mono as int16 or float32 bytes (data.wire_dtype)
    ("num_samples", pa.int32()),
    ("labels", pa.list_(pa.int32())),  # decoder labels ending in end-of-text, no start token
    ("text", pa.string()),
    ("previous", pa.string()),  # the utterance before it (its recording's previous window, its speaker's); or null
    ("rating", pa.float64()),  # a feedback row's rating of its text (a hypothesis, not a reference); or null
    ("pass", pa.int32()),  # times the row's piece was read before in this run: its epoch (augmentation's noise)
])


DEDICATED_ACTOR_CPUS = 1.0  # a decode/augment actor with the machine to itself (`auto` where no trainer shares it)


def actor_cpus(value: float | str) -> float:
    """`data.prepare_num_cpus` / `augment_num_cpus` as a number; `auto` left unresolved means no trainer shares
    the machine (`ray-asr validate`, benchmarks): a whole CPU each (`ray_asr.layout` resolves it for runs)."""
    return DEDICATED_ACTOR_CPUS if value == "auto" else float(value)


class IdleThrottle(ExecutionCallback):
    """Keeps Ray Data's scheduling loop from spinning while none of its tasks run.

    The loop blocks in `ray.wait` (up to 0.1 s) while tasks run, but with none running (the data tier
    is ahead and a trainer consumes slower, which is the usual state while training) it comes straight
    back: measured here, the split coordinator then took 70% of a core from a 2-core machine's
    trainer (12% with a 20 ms sleep). Sleeping as long as Ray's own wait for running tasks frees the
    core; the consumer reads from blocks already buffered, so the added latency does not reach it.
    """

    IDLE_SLEEP_S = 0.1  # Ray Data's WAIT_FOR_TASK_COMPLETION_TIMEOUT_S

    def on_execution_step(self, executor) -> None:
        topology = getattr(executor, "_topology", None) or {}
        if not any(op.num_active_tasks() for op in topology):
            time.sleep(self.IDLE_SLEEP_S)


class TooManyRejected(RuntimeError):
    """More of a split was quarantined than `data.max_rejected_fraction` allows."""


PIECE_SCHEMA = pa.schema([
    ("part", pa.int32()),  # index into `ManifestDatasource.parts`: a shard, its repeat and share
    ("piece", pa.int32()),  # which of the part's even slices of rows
    ("pieces", pa.int32()),  # how many slices the part is read in
])


class ManifestDatasource(Datasource):
    """A planned source (see `ray_asr.sources`) as a Ray Data datasource of *pieces*, not rows.

    A read emits one piece (a part of the plan and which slice of its rows); the decode actor that takes it
    reads those rows itself (`rows`), and runs the read too (`build_dataset` lets Ray Data fuse them). Rows read
    ahead of the decode actors waited for one in the heap of the process that runs Ray Data's executor: ~240
    bytes each, 100-180 MiB at a million rows (BENCHMARKS.md, "Where the executor's memory goes"). Pieces are a few bytes, about
    `num_blocks` of them (`MAX_BLOCKS` at most, or one per part), so that process holds the same whatever the rows.

    `mix` (`data.mix`: `[{manifest, weight}]`) adds other sets' shards, interleaved evenly with the source's
    so the mixed rows spread over the epoch; each keeps a seeded share of its rows (`weight` per source row),
    repeating a set too small for its share under new ids (`<id>@<repeat>`). `rows` (`data.train_rows`) keeps
    that many of the source's rows, a seeded pick whose smaller sizes are subsets of the larger (a learning
    curve adds data, never swaps it); the pick reads the source's rows once, on the driver.
    """

    def __init__(self, source: str | Path, mix: list[dict] = (), seed: int = 0, rows: int | None = None,
                 shuffled: bool = False):
        self.source = str(source)
        self.shuffled = shuffled
        self.shards, self.num_rows = sources.plan(source)
        self.only = None  # ids of the source's rows kept, or None for all
        if rows is not None and rows < (self.num_rows or 0):
            ids = [row["id"] for row in sources.read_all(source)]
            order = np.random.default_rng([seed, SUBSET_STREAM]).permutation(len(ids))
            self.only = frozenset(ids[i] for i in order[:rows])
            self.num_rows = rows
        self.parts = [(shard, 0, 1.0) for shard in self.shards]  # (shard, repeat, share of its rows kept)
        mixed_tasks = []
        for item in mix:
            shards, rows = sources.plan(item["manifest"])
            wanted = item["weight"] * (self.num_rows or 0)
            repeats = max(1, math.ceil(wanted / max(rows or 1, 1)))
            keep = min(1.0, wanted / (max(rows or 1, 1) * repeats))
            mixed_tasks += [(shard, r, keep) for r in range(repeats) for shard in shards]
            self.num_rows = (self.num_rows or 0) + round(wanted)
        self.parts = _interleave(self.parts, mixed_tasks)
        source_shards = {id(shard) for shard in self.shards}
        # The source's parts (not a mixed set's, even one of the same file): `only` applies to them.
        self.own = frozenset(i for i, (shard, _, _) in enumerate(self.parts) if id(shard) in source_shards)
        self.seed = seed

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def pieces(self, blocks: int) -> list[tuple[int, int, int]]:
        """(part, piece, pieces) for about `blocks` pieces: each part that `sources.splits` in even slices, the rest
        whole."""
        splitting = [sources.splits(shard) for shard, _, _ in self.parts]
        per_part = max(1, math.ceil((blocks - splitting.count(False)) / max(splitting.count(True), 1)))
        return [(part, piece, count) for part, split in enumerate(splitting)
                for count in [per_part if split else 1] for piece in range(count)]

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        def task(piece: tuple[int, int, int]) -> ReadTask:
            shard = self.parts[piece[0]][0]
            meta = BlockMetadata(num_rows=1, size_bytes=None, exec_stats=None, input_files=(shard.path,))
            block = pa.Table.from_pylist([dict(zip(PIECE_SCHEMA.names, piece))], schema=PIECE_SCHEMA)
            return ReadTask(lambda: [block], meta, schema=PIECE_SCHEMA, per_task_row_limit=per_task_row_limit)

        return [task(piece) for piece in self.ordered(self.pieces(parallelism))]

    def ordered(self, pieces: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """The pieces in the order they are read: the plan's, or for a shuffled source (the training split) a
        seeded permutation, so a manifest sorted by speaker, length or date does not reach the trainers in
        runs of its order that a local shuffle buffer is too short to mix."""
        if not self.shuffled:
            return pieces
        order = np.random.default_rng([self.seed, PIECE_ORDER_STREAM]).permutation(len(pieces))
        return [pieces[i] for i in order]

    def rows(self, part: int, piece: int = 0, pieces: int = 1) -> pa.Table:
        """The raw rows (`sources.RAW_SCHEMA`) of one piece of one part: its slice of the shard, kept by
        `data.train_rows`' pick or the mixed set's share."""
        shard, repeat, keep = self.parts[part]
        table = sources.read_shard(shard, piece, pieces)
        if self.only is not None and part in self.own:
            return _subset(table, self.only)
        if keep == 1.0 and repeat == 0:
            return table
        return _mixed_share(table, repeat, keep, self.seed)


def _subset(table: pa.Table, only: frozenset) -> pa.Table:
    return table.filter(pa.array([i in only for i in table.column("id").to_pylist()], pa.bool_()))


# The seed stream of `data.train_rows`' pick (apart from every per-row stream: see LABEL_STREAM).
SUBSET_STREAM = 1_000_037

# The seed stream of the training split's piece order (`ManifestDatasource.ordered`).
PIECE_ORDER_STREAM = 1_000_039


# The `epoch` of the generator that picks a mixed set's rows: one no run reaches (see LABEL_STREAM).
MIX_STREAM = 1_000_033


def _mixed_share(table: pa.Table, repeat: int, keep: float, seed: int) -> pa.Table:
    """The rows of a mixed set's shard that one repeat keeps, renamed `<id>@<repeat>` after the first."""
    ids = table.column("id").to_pylist()
    mask = [row_rng(seed, MIX_STREAM + repeat, i).random() < keep for i in ids]
    table = table.filter(pa.array(mask, pa.bool_()))
    if repeat:
        renamed = pa.array([f"{i}@{repeat}" for i in table.column("id").to_pylist()], pa.string())
        table = table.set_column(table.schema.get_field_index("id"), "id", renamed)
    return table


def _interleave(first: list, second: list) -> list:
    """Both lists merged so that each's items spread evenly over the result, in their own order."""
    keyed = [((i + 0.5) / len(first), 0, item) for i, item in enumerate(first)]
    keyed += [((i + 0.5) / len(second), 1, item) for i, item in enumerate(second)]
    return [item for *_, item in sorted(keyed, key=lambda k: k[:2])]


@ray.remote(num_cpus=0)
class QuarantineSink:
    """Collects rejected rows of a run: writes each once to quarantine.jsonl and keeps per-split counts.

    One sink serves every split of a run; rows seen again (a second epoch, a retried piece) are not counted
    twice. It tells them apart by piece, not by row: per piece of the plan (`ManifestDatasource.pieces`, about
    2,048 at most) it keeps how many times a decode actor started it and how many of its rows are counted, so
    what it holds does not grow with the rows.
    """

    def __init__(self, path: str | None):
        self.file = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (open for the actor's life)
        self.path = path
        self.splits: dict[str, dict] = {}

    def register(self, split: str, total_rows: int, max_rejected_fraction: float | None) -> None:
        limit = None if max_rejected_fraction is None else max_rejected_fraction * total_rows
        self.splits[split] = {"rows": total_rows, "limit": limit, "fraction": max_rejected_fraction,
                              "pieces": {}, "accepted": 0, "rejected": 0, "seconds": 0.0, "reasons": {}}

    def registered_rows(self, split: str) -> int | None:
        """The row count `register` was given for a split (None where the source cannot tell)."""
        return self.splits[split]["rows"]

    def start(self, split: str, piece: tuple[int, int, int]) -> int:
        """A decode actor starts reading `piece`: how many times it was started before in this run (its rows'
        pass: the epoch, unless an actor died in the middle of it)."""
        progress = self.splits[split]["pieces"].setdefault(tuple(piece), [0, 0])  # [starts, rows counted]
        progress[0] += 1
        return progress[0] - 1

    def record(self, split: str, piece: tuple[int, int, int], offset: int, accepted: list[tuple[str, float]],
               rejected: list[dict]) -> str | None:
        """Adds the outcome of the batch of `piece`'s rows from `offset` on, unless those rows were counted already
        (batches of a piece are the same every pass); returns an error message once the rejected share is too high."""
        state = self.splits[split]
        progress = state["pieces"].setdefault(tuple(piece), [0, 0])
        if offset >= progress[1]:
            progress[1] = offset + len(accepted) + len(rejected)
            state["accepted"] += len(accepted)
            state["seconds"] += sum(seconds for _, seconds in accepted)
            for record in rejected:
                state["rejected"] += 1
                state["reasons"][record["reason"]] = state["reasons"].get(record["reason"], 0) + 1
                if self.file:
                    self.file.write(json.dumps({"split": split, **record}, ensure_ascii=False) + "\n")
            if self.file and rejected:
                self.file.flush()
        if state["limit"] is not None and state["rejected"] > state["limit"]:
            where = f"; see {self.path}" if self.path else ""
            return (f"data.{split}: {state['rejected']} of {state['rows']} rows rejected, over "
                    f"data.max_rejected_fraction={state['fraction']:g}{where}")
        return None

    def planned_rows(self, split: str) -> int:
        """Rows of a split as planned from its source (before any is read)."""
        return self.splits[split]["rows"]

    def summary(self, split: str) -> dict:
        """`{"rows", "accepted", "rejected", "reasons", "hours"}` of one split so far."""
        state = self.splits[split]
        return {"rows": state["accepted"] + state["rejected"], "accepted": state["accepted"],
                "rejected": state["rejected"], "reasons": dict(sorted(state["reasons"].items())),
                "hours": state["seconds"] / 3600}

    def close(self) -> None:
        if self.file:
            self.file.close()


class Preparer:
    """Ray Data stage (a callable class, so each actor loads the tokenizer once): pieces in, prepared rows out.

    Each call takes one piece of `plan` (`PIECE_SCHEMA`), reads its rows and yields them prepared, `batch_rows` at
    a time, each batch's outcome recorded with the sink before the next is decoded.
    """

    def __init__(self, plan: ManifestDatasource, batch_rows: int, model_dir: str, language: str, task: str,
                 max_duration_s: float, wire_dtype: str, sink, split: str, preprocess: list | None = None,
                 seed: int = 0, timestamps: float = 0.0):
        allocator.keep_freed_memory()  # each clip's decode and resample buffers, reused
        self.plan, self.batch_rows = plan, batch_rows
        self.tokenizer = labels.load_tokenizer(model_dir, language, task)
        if timestamps and self.tokenizer.timestamp_begin is None:
            raise ValueError(f"data.labels.timestamps: {model_dir}'s tokenizer has no timestamp tokens")
        self.timestamps = timestamps
        self.max_duration_s, self.wire_dtype = max_duration_s, wire_dtype
        self.sink, self.split = sink, split
        self.preprocess, self.seed = None, seed
        if preprocess:
            import augment

            self.preprocess = augment.build(preprocess)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for piece in batch.to_pylist():
            key = (piece["part"], piece["piece"], piece["pieces"])
            rows = self.plan.rows(*key).to_pylist()
            passes = ray.get(self.sink.start.remote(self.split, key))
            last_said: dict[str, str] = {}  # speaker → their latest transcript in this piece (manifest order)
            for start in range(0, len(rows), self.batch_rows):
                yield self.prepare(rows[start : start + self.batch_rows], last_said, key, start, passes)

    def prepare(self, rows: list[dict], last_said: dict[str, str], piece: tuple[int, int, int], offset: int,
                passes: int) -> pa.Table:
        """Rows `offset`... of `piece` (`sources.RAW_SCHEMA`) decoded, validated and tokenised, on their `passes`-th
        pass; the outcome recorded with the sink. `last_said` (speaker → their latest transcript) carries the
        previous-text context from batch to batch."""
        out = {name: [] for name in PREPARED_SCHEMA.names}
        accepted, rejected = [], []
        for row in rows:
            try:
                made = []
                for example in examples(row, self.tokenizer, self.max_duration_s):
                    wave, ids = example.wave, example.labels
                    if self.preprocess is not None:  # the same for every epoch and split
                        wave = self.preprocess(wave, audio.SAMPLE_RATE, row_rng(self.seed, 0, example.id))
                    packed = example.id != row["id"]  # a long recording's window: timed already
                    if not packed and with_timestamps(self.seed, example.id, self.timestamps):
                        ids = timed_or_plain(self.tokenizer, ids, wave, example.segments, row.get("language"))
                    made.append(example._replace(wave=wave, labels=ids))
            except Rejected as err:
                rejected.append(quarantine_record(row, err.reason, err.detail))
                continue
            except Exception as err:  # noqa: BLE001 (one odd file must never take the whole run down)
                rejected.append(quarantine_record(row, "internal_error", f"{type(err).__name__}: {err}"))
                continue
            accepted.append((row["id"], sum(len(e.wave) for e in made) / audio.SAMPLE_RATE))
            previous = last_said.get(row.get("speaker")) if row.get("speaker") else None
            for example in made:
                out["id"].append(example.id)
                out["audio"].append(audio.to_wire(example.wave, self.wire_dtype))
                out["num_samples"].append(len(example.wave))
                out["labels"].append(example.labels)
                out["text"].append(example.text)
                out["previous"].append(previous)
                out["rating"].append(row.get("rating"))
                out["pass"].append(passes)
                previous = example.text  # a recording's next window follows this one
            if row.get("speaker"):
                last_said[row["speaker"]] = made[-1].text
        problem = ray.get(self.sink.record.remote(self.split, piece, offset, accepted, rejected))
        if problem:
            raise TooManyRejected(problem)
        return pa.Table.from_pydict(out, schema=PREPARED_SCHEMA)


def open_sink(path: str | Path | None):
    """The run's quarantine sink, placed on this (the driver's) node so the file lands here."""
    return on_this_node(QuarantineSink, str(path) if path else None)


def _actor_pool(max_actors: int, num_cpus: float):
    """An actor pool that starts with one actor and grows while CPUs are free (up to `max_actors`; 0 = cluster size).

    Starting at full size deadlocks when trainers already hold part of the CPUs.
    """
    size = max_actors or max(1, int(ray.cluster_resources().get("CPU", 1) / num_cpus))
    return ray.data.ActorPoolStrategy(min_size=1, max_size=size)


# Past this many blocks a block holds several preparation batches: each block is a task's output, an object
# and a scheduling decision, so a million rows in 8-row blocks (125,000) would cost more than the rows.
MAX_BLOCKS = 2048


# A split of a few hundred rows still gets this many blocks, of MIN_BLOCK_ROWS rows at least: Ray Train's split
# hands out whole blocks, so 64 evaluation clips in one block would all go to one worker while the others wait,
# and blocks of a few rows cost more (each is an object, a scheduling decision, a batch edge) than they spread.
MIN_BLOCKS, MIN_BLOCK_ROWS = 16, 8


def num_blocks(rows: int | None, shards: int, rows_per_block: int) -> int:
    """Blocks to cut a source into: one preparation batch each (`MIN_BLOCKS` at least where the rows allow blocks
    of `MIN_BLOCK_ROWS`, `MAX_BLOCKS` at most).

    Blocks are what Ray Train's split hands out, so a shard left whole would go to one worker; and each
    block is an object to store, schedule and batch on its own, so Ray Data's default (enough blocks
    to reach 200, a few rows each on a small manifest) costs more than it spreads.
    """
    rows = rows or 0
    return max(1, shards, min(MAX_BLOCKS, max(math.ceil(rows / rows_per_block), min(MIN_BLOCKS, rows // MIN_BLOCK_ROWS))))


def build_dataset(cfg: Config, split: str, sink, enforce_limit: bool = True, model_dir: str | None = None):
    """The streaming dataset of one split (`train`, `eval`, `general_eval`), registered with `sink`.

    Rows: `PREPARED_SCHEMA`. Augmentation applies to the training split only. `model_dir` names
    the tokenizer's folder when it is not the model's.
    """
    source = getattr(cfg.data, split)
    if source is None:
        raise ValueError(f"data.{split}: not set")
    datasource = ManifestDatasource(source, cfg.data.mixes() if split == "train" else (), cfg.train.seed,
                                    rows=cfg.data.train_rows if split == "train" else None,
                                    shuffled=split == "train" and cfg.train.shuffle_buffer > 0)
    limit = cfg.data.max_rejected_fraction if enforce_limit else None
    ray.get(sink.register.remote(split, datasource.num_rows, limit))
    tier = {"resources": cfg.data.augment_resources} if cfg.data.augment_resources else {}
    pieces = len(datasource.pieces(num_blocks(datasource.num_rows, len(datasource.parts), cfg.data.prepare_batch_size)))
    cpus = actor_cpus(cfg.data.prepare_num_cpus)
    # As many blocks as pieces, one read each, no split of their one-row blocks. The read asks what the decode
    # actor asks, and the decode stage no batch size: Ray Data then fuses the read into the decode actors, so no
    # read task runs at all (a read only makes a piece's one-row block). Separate read tasks cost a task process,
    # a CPU share and an object per piece.
    ds = ray.data.read_datasource(datasource, num_cpus=cpus, ray_remote_args=tier, override_num_blocks=pieces)
    ds = ds.map_batches(
        Preparer,
        fn_constructor_kwargs={
            "plan": datasource, "batch_rows": cfg.data.prepare_batch_size,
            "model_dir": model_dir or cfg.model.name_or_path, "language": cfg.model.language,
            "task": cfg.model.task, "max_duration_s": cfg.data.max_duration_s, "wire_dtype": cfg.data.wire_dtype,
            "sink": sink, "split": split, "preprocess": cfg.data.preprocess, "seed": cfg.train.seed,
            # Evaluation keeps <|notimestamps|>: its WER is comparable from run to run.
            "timestamps": cfg.data.labels.timestamps if split == "train" else 0.0,
        },
        batch_size=None,  # a block a call: one piece (a batch size would keep the read apart: see above)
        batch_format="pyarrow",
        compute=_actor_pool(cfg.data.prepare_concurrency, cpus),
        num_cpus=cpus,
        **tier,
    )
    if split == "train":
        ds = augment_stage(ds, cfg)
    ds.context.custom_execution_callback_classes = [*ds.context.custom_execution_callback_classes, IdleThrottle]
    return ds


# The `epoch` of the generator that picks a row's label form: one no run reaches, so the choice never shares a
# stream with the row's augmentation, and stays the same every epoch and on a rerun.
LABEL_STREAM = 1_000_003


def with_timestamps(seed: int, row_id: str, share: float) -> bool:
    """Whether a row's labels carry timestamps (`data.labels.timestamps`): a share of rows, the same ones every
    epoch and rerun."""
    return share > 0 and row_rng(seed, LABEL_STREAM, row_id).random() < share


def timed_or_plain(tokenizer, ids: list[int], wave: np.ndarray, segments=None, language: str | None = None) -> list[int]:
    """The labels with timestamps at the example's own segment times, else at its speech bounds; or as they were
    if those do not fit."""
    if segments:
        timed = labels.timed_segments(tokenizer, segments, language)
    else:
        timed = labels.timed(tokenizer, ids, *audio.speech_bounds(wave))
    return timed if labels.fits(timed) else ids


def row_rng(seed: int, epoch: int, row_id: str) -> np.random.Generator:
    """The generator for one row in one epoch: new noise every epoch, the same on a rerun."""
    return np.random.default_rng([seed, epoch, zlib.crc32(row_id.encode())])


class Augmenter:
    """Ray Data stage applying the `augment:` chain to training waveforms on the CPU tier."""

    def __init__(self, specs: list[dict], seed: int, wire_dtype: str):
        import augment

        self.chain, self.seed, self.wire_dtype = augment.build(specs), seed, wire_dtype

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column("id").to_pylist()
        passes = batch.column("pass").to_pylist()  # the row's epoch, whichever actor augments it
        waves = [self.chain(audio.from_wire(buffer, self.wire_dtype), audio.SAMPLE_RATE, row_rng(self.seed, n, i))
                 for buffer, n, i in zip(batch.column("audio").to_pylist(), passes, ids)]
        columns = {name: batch.column(name) for name in PREPARED_SCHEMA.names}
        columns["audio"] = pa.array([audio.to_wire(w, self.wire_dtype) for w in waves], pa.binary())
        columns["num_samples"] = pa.array([len(w) for w in waves], pa.int32())
        return pa.table(columns, schema=PREPARED_SCHEMA)


def augment_stage(ds, cfg: Config):
    """The CPU-tier augmentation stage (training split only); with no `augment:` list, data passes untouched.

    Like the read and decode stages, it requests `data.augment_resources` (e.g. `{augment_cpu: 1}`) so
    that on a heterogeneous cluster it runs on the CPU-only augmentation nodes.
    """
    if not cfg.augment:
        return ds
    import augment

    augment.build(cfg.augment)  # fails here, on the driver, naming a bad spec
    return ds.map_batches(
        Augmenter,
        fn_constructor_kwargs={"specs": cfg.augment, "seed": cfg.train.seed, "wire_dtype": cfg.data.wire_dtype},
        batch_size=cfg.data.prepare_batch_size,
        batch_format="pyarrow",
        compute=_actor_pool(cfg.data.augment_concurrency, actor_cpus(cfg.data.augment_num_cpus)),
        num_cpus=actor_cpus(cfg.data.augment_num_cpus),
        resources=cfg.data.augment_resources or None,
    )
