"""`ray-asr fewshot-curve`: the few-shot recipe run at several training-set sizes k, as a learning curve.

    output_dir/base_score.json        the starting model's evaluation, measured once for every k
    output_dir/k-<k>/                 each run's own outputs (model/, history.json, metrics.json, ...)
    output_dir/fewshot-curve.csv/.md  one row per k: in-domain and general WER against the base's
    output_dir/fewshot-curve.png      both WERs against k

Each k trains on `data.train_rows: k` rows of `data.train` (a seeded pick; the rows of a smaller k are
among those of a larger one), with the base model's evaluation heading its history, so early stopping
can keep the base when nothing beats it. Runs go one after another: a curve point is a whole fine-tune,
and each already uses the machine. Rerunning the command skips the points whose runs finished.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
from pathlib import Path

from ray_asr import finetune, grow, metrics, tune
from ray_asr.config import Config, ConfigError

COLUMNS = ("k", "steps", "exported_step", "wer", "wer_relative_change", "general_wer", "general_wer_change")


def parse_ks(text: str) -> list[int]:
    """`8,16,32` → [8, 16, 32]; one line naming `--k` otherwise."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--k: expected sizes such as 8,16,32, got {text!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise ConfigError(f"--k: expected sizes >= 1 such as 8,16,32, got {text!r}")
    return sorted(set(ks))


def point_config(cfg: Config, k: int) -> Config:
    """The run of one curve point: k training rows, its own folder, the base evaluation first."""
    point = copy.deepcopy(cfg)
    point.output_dir = str(Path(cfg.output_dir) / f"k-{k}")
    point.data = dataclasses.replace(cfg.data, train_rows=k)
    point.train = dataclasses.replace(cfg.train, eval_at_start=True, run_name=f"{cfg.train.run_name}-k{k}",
                                      storage_path=None)
    return point


def curve(cfg: Config, ks: list[int]) -> list[dict]:
    """Runs every point; returns the rows (also written as CSV, markdown and PNG under `output_dir`)."""
    finetune.check(cfg)
    if not cfg.data.eval:
        raise ConfigError("data.eval: must be set for fewshot-curve (each point is scored on it)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = grow.materialise(cfg)  # once for every point
    base = tune.base_row(cfg)
    rows = []
    for k in ks:
        print(f"[fewshot] k = {k}")
        summary = finetune.run(point_config(cfg, k), base_row=base)
        rows.append(row(k, summary, base))
    write(rows, base, out)
    print(f"\n{markdown(rows, base)}\n\ncurve: {out / 'fewshot-curve.png'}")
    return rows


def row(k: int, summary: dict, base: dict) -> dict:
    """One point: the exported model's in-domain and general WER, and their change from the base's."""
    found = {"k": k, "steps": summary.get("last_step"), "exported_step": summary.get("step"),
             "wer": summary.get("eval", {}).get("wer"), "general_wer": summary.get("general_eval", {}).get("wer")}
    found["wer_relative_change"] = (found["wer"] / base["wer"] - 1) if found["wer"] is not None and base.get("wer") else None
    general_base = base.get(metrics.key("general_eval", "wer"))
    found["general_wer_change"] = (found["general_wer"] - general_base) if None not in (found["general_wer"],
                                                                                        general_base) else None
    return found


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key in ("wer", "general_wer"):
        return f"{value:.2%}"
    if key == "wer_relative_change":
        return f"{value:+.1%}"
    if key == "general_wer_change":
        return f"{100 * value:+.2f} pt"
    return str(value)


def markdown(rows: list[dict], base: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    general = base.get(metrics.key("general_eval", "wer"))
    lines.append("| base | 0 | 0 | " + _cell("wer", base.get("wer")) + " | - | " + _cell("general_wer", general) + " | - |")
    lines += ["| " + " | ".join(_cell(key, r[key]) for key in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def write(rows: list[dict], base: dict, out: Path) -> None:
    with open(out / "fewshot-curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "fewshot-curve.md").write_text(markdown(rows, base) + "\n")
    from ray_asr import plots

    plots.fewshot_curve(rows, base, out / "fewshot-curve.png")
