"""`ray-asr tune`: a Ray Tune search over learning rate, frozen depth and any other training key.

Each trial is a whole `finetune` run (its own `TorchTrainer` with `scaling.num_workers` workers,
started from the trial function, the Train V2 way); `TuneReportCallback` forwards every evaluation
to Tune, where ASHA stops trials whose `tune.metric` (in-domain WER, CER or eval loss) trails. Outputs in `output_dir`:

    base_score.json        the starting model's evaluation, measured once and heading every trial's history
    trials/<trial id>/     each trial's finetune outputs (model, metrics, curves, checkpoints)
    trials.csv             one row per trial: searched values, final and best WER, steps, stopped early, seconds
    search.png             WER against learning rate, one colour per frozen depth
    best_config.yaml       a complete config `ray-asr finetune` accepts (it resumes the best trial's run)
    best/model/            the best trial's model

The experiment state lives in `output_dir/tune`; rerunning the same command restores it: finished
trials are not run again, interrupted ones resume from their last checkpoint.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
import time
from pathlib import Path

import yaml

from ray_asr import cluster, config, finetune, grow, layout, metrics
from ray_asr.config import AUTO, Config, ConfigError

EXPERIMENT = "search"
BASE_SCORE = "base_score.json"


def _domain(space: dict):
    from ray import tune

    kind, args = next(iter(space.items()))
    if kind == "choice":
        return tune.choice(args)
    return {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}[kind](*args)


def param_space(cfg: Config) -> dict:
    """Tune's search space: dotted config keys → distributions. Only these reach Tune's config, so its console
    lines name a trial's sampled values and nothing else (`constants` travel beside them)."""
    space = {"train.learning_rate": _domain(cfg.tune.learning_rate),
             "train.frozen_encoder_layers": _domain(cfg.tune.frozen_encoder_layers)}
    space.update({key: _domain(value) for key, value in cfg.tune.space.items()})
    return {"searched": space}


def constants(cfg: Config, reserved: float = 0.0, base_row: dict | None = None) -> dict:
    """What every trial shares: the base config, each trial's share of the machine (`reserved`: CPUs it leaves to
    the others), the search folder and the starting model's evaluation."""
    base = finetune.absolute_paths(config.to_dict(cfg))  # trials run in their own folders
    return {"base": base, "root": str(Path(cfg.output_dir).resolve()), "reserved": reserved, "base_row": base_row}


def apply(values: dict, key: str, value) -> None:
    """Sets a dotted key in a config mapping; `augment.<name>.<param>` addresses the named transform."""
    section, *rest = key.split(".")
    if section == "augment":
        name, param = rest
        specs = [spec for spec in values.get("augment") or [] if spec.get("name") == name]
        if not specs:
            raise ConfigError(f"tune.space.{key}: no `{name}` transform in the augment list")
        for spec in specs:
            spec[param] = value
        return
    node = values.setdefault(section, {})
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value


def _representative(space: dict):
    """A value the distribution can give (its low end, or its first choice): enough to check a key once."""
    (args,) = space.values()
    return args[0]


def check_space(cfg: Config) -> None:
    """Every searched key, set to a value its distribution gives, still makes a valid config: checked once on
    the driver, so a mistyped key stops the search in a line instead of failing inside every trial."""
    searched = {"train.learning_rate": cfg.tune.learning_rate,
                "train.frozen_encoder_layers": cfg.tune.frozen_encoder_layers, **cfg.tune.space}
    for key, space in searched.items():
        values = config.to_dict(cfg)
        apply(values, key, _representative(space))
        try:
            config.from_dict(values)
        except ConfigError as err:
            where = f"tune.space.{key}" if key in cfg.tune.space else f"tune.{key.split('.', 1)[1]}"
            raise ConfigError(f"{where}: {err}") from None


def check(cfg: Config) -> None:
    """What a search needs beyond a valid config, checked on the driver before Ray starts."""
    finetune.check(cfg)
    if not cfg.data.eval:
        raise ConfigError("data.eval: must be set for tune (trials are ranked by its WER)")
    check_space(cfg)


def _plain(value):
    """A sampled value as a plain Python number (Tune hands out numpy scalars)."""
    return value.item() if hasattr(value, "item") else value


def trial_config(params: dict, trial_id: str) -> Config:
    """The finetune config of one trial: base + sampled values, its own output folder."""
    values = copy.deepcopy(params["base"])
    for key, value in params["searched"].items():
        apply(values, key, _plain(value))
    values["output_dir"] = str(Path(params["root"]) / "trials" / trial_id)
    if values["scaling"]["use_gpu"] and values["scaling"]["num_workers"] == AUTO:
        values["scaling"]["num_workers"] = 1  # a search runs trials side by side, one GPU each
    values["train"]["storage_path"] = None
    values["train"]["eval_at_start"] = True  # every history starts from the search's one base score
    return config.from_dict(values)


def run_trial(params: dict, shared: dict) -> None:
    """Tune's trainable: one finetune run whose evaluations reach Tune as they happen. `params`: the sampled
    values (`param_space`); `shared`: `constants`."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    params = {**shared, **params}
    cfg = trial_config(params, tune.get_context().get_trial_id())
    summary = finetune.run(cfg, callbacks=[TuneReportCallback()], reserved=params.get("reserved", 0.0),
                           base_row=params.get("base_row"), show_progress=False)
    final = {**metrics.split_row("eval", {key: summary["eval"][key] for key in ("wer", "cer", "eval_loss")}),
             "step": summary["step"], "finished": True}
    general = metrics.key("general_eval", "wer")
    history = finetune.read_history(cfg)
    if "general_eval" in summary:
        final[general] = summary["general_eval"]["wer"]
        if history and history[0]["step"] == 0 and general in history[0]:
            final["general_wer_increase"] = final[general] - history[0][general]
    last = (history or [{}])[-1]
    final.update({key: value for key, value in last.items() if key.startswith("abilities_") or key.endswith("_change")})
    tune.report(final)


def within_constraints(cfg: Config, metrics_: dict) -> bool:
    """Whether a trial's final metrics keep `tune.max_general_wer_increase` and every `tune.constraints` bound."""
    bounds = dict(cfg.tune.constraints)
    if cfg.tune.max_general_wer_increase is not None:
        bounds["max_general_wer_increase"] = cfg.tune.max_general_wer_increase
    for key, bound in bounds.items():
        value = metrics_.get(key[4:])
        if value is None or math.isnan(value) or (value > bound if key.startswith("max_") else value < bound):
            return False
    return True


TRIAL_FUNCTION_CPUS = 0.01  # the trial function only drives its TorchTrainer; Tune refuses an empty bundle


def _concurrency(cfg: Config) -> int:
    """Trials at once: `tune.max_concurrent_trials`, else what the cluster fits (trials of an `auto` layout
    fill a CPU-only machine one at a time)."""
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    cluster = layout.Cluster.current()
    if cfg.scaling.use_gpu:
        per_trial = 1 if cfg.scaling.num_workers == AUTO else cfg.scaling.num_workers
        return max(1, int(cluster.gpus // per_trial))
    if AUTO in (cfg.scaling.num_workers, cfg.scaling.cpus_per_worker):
        return 1
    one = layout.resolve(cfg, cluster)
    need = one.scaling.num_workers * one.scaling.cpus_per_worker + layout.data_cpus(one) + TRIAL_FUNCTION_CPUS
    return max(1, int(cluster.cpus // need))


def _reserved(cfg: Config, concurrency: int) -> float:
    """CPUs a trial leaves to the others on a shared machine: their whole share, and its own trial function."""
    cluster = layout.Cluster.current()
    if not layout.shares_machine(cfg, cluster):
        return TRIAL_FUNCTION_CPUS
    return cluster.cpus * (concurrency - 1) / concurrency + TRIAL_FUNCTION_CPUS


def base_row(cfg: Config) -> dict:
    """The starting model's evaluation, once per search: measured by the train loop's own evaluation, or read
    back from `output_dir/base_score.json` when it was measured for the same model and evaluation data."""
    values = finetune.absolute_paths(config.to_dict(cfg))
    key = {"model": values["model"], "eval": values["data"]["eval"], "general_eval": values["data"]["general_eval"],
           "max_duration_s": cfg.data.max_duration_s, "preprocess": cfg.data.preprocess}
    path = Path(cfg.output_dir) / BASE_SCORE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            return saved["row"]
    started = time.perf_counter()
    row = finetune.score_base(cfg, show_progress=True)
    print(f"[base] the starting model scored once for every run in {time.perf_counter() - started:.0f} s: "
          f"WER {row['wer']:.2%}" + (f", general WER {row['general_wer']:.2%}" if "general_wer" in row else ""))
    path.write_text(json.dumps({"key": key, "row": row}, indent=1))
    return row


def _tuner(cfg: Config, concurrency: int, base: dict):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # The constants go by object reference: in Tune's config they would be printed whole at every trial's start.
    trainable = tune.with_resources(tune.with_parameters(run_trial, shared=constants(cfg, _reserved(cfg, concurrency), base)),
                                    {"CPU": TRIAL_FUNCTION_CPUS})
    path = Path(cfg.output_dir).resolve() / "tune"
    if tune.Tuner.can_restore(str(path / EXPERIMENT)):
        print(f"resuming the search in {path / EXPERIMENT}")
        return tune.Tuner.restore(str(path / EXPERIMENT), trainable, resume_unfinished=True, resume_errored=True)
    if cfg.tune.search == "tpe":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError("tune.search: tpe needs optuna (pip install optuna)") from None
        search = OptunaSearch(seed=cfg.tune.seed)
    else:
        from ray.tune.search import BasicVariantGenerator

        # Its own limit: Tune's max_concurrent_trials does not reach the basic generator.
        search = BasicVariantGenerator(random_state=cfg.tune.seed, max_concurrent=concurrency)
    scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=cfg.tune.grace_period,
                              reduction_factor=cfg.tune.reduction_factor, max_t=10_000)
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode="min", num_samples=cfg.tune.num_samples, search_alg=search,
                                    scheduler=scheduler, max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(path)),
    )


def _rows(cfg: Config, grid) -> list[dict]:
    rows = []
    for result in grid:
        metrics, searched = result.metrics or {}, result.config["searched"]
        frame = result.metrics_dataframe
        def best(key: str, frame=frame) -> float:
            return float(frame[key].min()) if frame is not None and key in frame else math.nan

        row = {"trial_id": metrics.get("trial_id", Path(result.path).name)}
        row.update({key: _plain(value) for key, value in searched.items()})
        if cfg.tune.metric != "wer":
            row.update({cfg.tune.metric: metrics.get(cfg.tune.metric, math.nan), f"best_{cfg.tune.metric}": best(cfg.tune.metric)})
        row.update({"wer": metrics.get("wer", math.nan), "best_wer": best("wer"),
                    "general_wer": metrics.get("general_wer", math.nan), "steps": metrics.get("step", 0),
                    "stopped_early": not metrics.get("finished", False), "error": bool(result.error),
                    "seconds": round(metrics.get("time_total_s", math.nan), 1)})
        row.update({key[4:]: metrics.get(key[4:], math.nan) for key in cfg.tune.constraints})
        row["constraint_ok"] = within_constraints(cfg, metrics)
        rows.append(row)
    metric = cfg.tune.metric
    return sorted(rows, key=lambda r: (r["error"] or r["stopped_early"] or not r["constraint_ok"],
                                       r[metric] if r[metric] == r[metric] else math.inf))


def write_outputs(cfg: Config, grid) -> list[dict]:
    """trials.csv, search.png, best_config.yaml, best/model; returns the rows, best first."""
    from ray_asr import plots

    out = Path(cfg.output_dir)
    rows = _rows(cfg, grid)
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plots.search(rows, out / "search.png")
    best = rows[0]
    if best["error"] or best["stopped_early"] or not best["constraint_ok"]:
        print("no trial finished within the constraints; best_config.yaml and best/ are not written")
        return rows
    sampled = next(r.config for r in grid if (r.metrics or {}).get("trial_id") == best["trial_id"])
    best_cfg = trial_config({**constants(cfg), **sampled}, best["trial_id"])
    (out / "best_config.yaml").write_text(
        f"# ray-asr finetune {out / 'best_config.yaml'}\n# best trial {best['trial_id']}: eval WER {best['wer']:.2%}\n"
        + yaml.safe_dump(config.to_dict(best_cfg), sort_keys=False))
    shutil.rmtree(out / "best", ignore_errors=True)
    shutil.copytree(Path(best_cfg.output_dir) / "model", out / "best" / "model")
    return rows


def table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("error", "constraint_ok")]
    lines = ["  ".join(f"{k:>14}" for k in keys)]
    for row in rows:
        cells = []
        for key in keys:
            value = row[key]
            cells.append(f"{value:>14.3g}" if isinstance(value, float) else f"{value!s:>14}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def run(cfg: Config) -> list[dict]:
    """The whole search; returns the trials' rows, best first."""
    check(cfg)
    cfg = grow.materialise(cfg)  # once for every trial
    cluster.connect(cfg.ray.address)
    concurrency = _concurrency(cfg)
    layout.resolve(cfg, reserved=_reserved(cfg, concurrency))  # a trial that cannot fit stops the search here
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    grid = _tuner(cfg, concurrency, base_row(cfg)).fit()
    wall = time.perf_counter() - started
    rows = write_outputs(cfg, grid)
    trials = sum(r["seconds"] for r in rows if r["seconds"] == r["seconds"])
    print(f"\n{table(rows)}\n\ntrials: {Path(cfg.output_dir) / 'trials.csv'}")
    print(f"search: {wall / 60:.1f} min wall, the trials' own time summed {trials / 60:.1f} min "
          f"({wall / max(trials, 1e-9):.2f}x at {concurrency} at a time)")
    return rows
