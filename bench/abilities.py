"""Keeping Whisper's abilities through a fine-tune, measured side by side in one run on the demo corpus:
whisper-base, the demo fine-tune as it is (`configs/demo.yaml`: plain `<|notimestamps|>` labels) and the
same fine-tune with the label builder and other-language rehearsal on (`configs/recipes/abilities.yaml`),
each through `ray-asr regress` on the default suite, with the demo's eval split as the prompts set (its
no-prompt WER is the in-domain WER, by the same code for all three).

    python bench/abilities.py [--steps finetune,regress,report] [--out runs/regress]

`finetune` trains both (about an hour each on 2 CPU cores), `regress` measures base once and each
fine-tune against it (`--base-from`), `report` prints the table and the acceptance checks of the
abilities issue from what the other steps wrote. Run `ray-asr demo` first (whisper-base and the corpus).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = "models/whisper-base"
RUNS = {"plain": ("configs/demo.yaml", "runs/abilities-plain"), "labels": ("configs/recipes/abilities.yaml", "runs/abilities")}
PROMPTS = "data/demo/eval.jsonl"


def _cli(*args: str) -> None:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ray_asr", *args], cwd=ROOT, check=True)
    print(f"  ({' '.join(args[:2])}: {time.perf_counter() - started:.0f} s)")


def finetune(out: Path) -> None:
    for config, run in RUNS.values():
        _cli("finetune", config, f"output_dir={run}", "train.eval_at_start=false")


def regress(out: Path) -> None:
    base = out / "base.json"
    if not base.is_file():
        _cli("regress", BASE, BASE, "--prompts", PROMPTS, "--out", str(base))
    for name, (_, run) in RUNS.items():
        _cli("regress", BASE, f"{run}/model", "--prompts", PROMPTS, "--base-from", str(base), "--out", str(out / f"{name}.json"))


def report(out: Path) -> bool:
    from ray_asr.regress import METRICS, noise_scores, shown

    reports = {name: json.loads((out / f"{name}.json").read_text()) for name in RUNS}
    columns = {"base": {r["metric"]: r["base"] for r in reports["plain"]["metrics"]}}
    columns.update({name: {r["metric"]: r["fine_tuned"] for r in rep["metrics"]} for name, rep in reports.items()})
    # Reports from before `noise_words` existed: the same score from the outputs they stored.
    for column, rep, model in (("base", reports["plain"], "base"), ("plain", reports["plain"], "fine-tuned"),
                               ("labels", reports["labels"], "fine-tuned")):
        if columns[column].get("noise_words") is None:
            columns[column].update(noise_scores([o["hypothesis"] for o in rep["details"][model]["noise"]["outputs"]]))
    print(f"\n## abilities, {time.strftime('%Y-%m-%d')}, {platform.machine()}\n")
    print("| ability | whisper-base | plain fine-tune | label builder + rehearsal |\n|---|---|---|---|")
    for key, (_, title, kind) in METRICS.items():
        print(f"| {title} | " + " | ".join(shown(columns[c][key], kind) for c in ("base", "plain", "labels")) + " |")
    languages = {c: reports["labels" if c == "labels" else "plain"]["details"]["base" if c == "base" else "fine-tuned"]
                 ["languages"]["wer_by_language"] for c in ("base", "plain", "labels")}
    print("\nWER per language: " + "; ".join(
        f"{lang} " + " / ".join(f"{languages[c][lang]:.0%}" for c in ("base", "plain", "labels")) for lang in languages["base"]))

    base, plain, labels = columns["base"], columns["plain"], columns["labels"]
    gain_plain, gain_labels = base["no_prompt_wer"] - plain["no_prompt_wer"], base["no_prompt_wer"] - labels["no_prompt_wer"]
    checks = {
        "timestamps well-formed >= 95% of the base's rate": labels["timestamps_well_formed"] >= 0.95 * base["timestamps_well_formed"],
        "language ID within 2 points of the base": labels["language_id_accuracy"] >= base["language_id_accuracy"] - 0.02,
        "other-language WER within 2 points of the base": labels["other_language_wer"] <= base["other_language_wer"] + 0.02,
        "empty output on noise-only clips >= the base's": labels["noise_empty_rate"] >= base["noise_empty_rate"],
        f"in-domain WER gain >= 90% of the plain fine-tune's ({gain_labels:.1%} vs {gain_plain:.1%})":
            gain_plain > 0 and gain_labels >= 0.9 * gain_plain,
    }
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return all(checks.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="finetune,regress,report")
    parser.add_argument("--out", default="runs/regress")
    args = parser.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps.split(",")
    if "finetune" in steps:
        finetune(out)
    if "regress" in steps:
        regress(out)
    return 0 if "report" not in steps or report(out) else 1


if __name__ == "__main__":
    sys.exit(main())
