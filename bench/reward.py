"""Reward-based fine-tuning on the demo corpus with whisper-base, three comparisons side by side:

    python bench/reward.py [--steps compare,loops,feedback] [--start runs/demo/model] [--out runs/reward]

`compare`: from the same cross-entropy checkpoint (`--start`; `ray-asr demo` writes it), one epoch of
continued cross-entropy and one of minimum-WER training (`configs/recipes/mwer.yaml`), same seeds and
learning rate: in-domain and general WER of each, beside the start's.
`loops`: a model that loops (the start fine-tuned one epoch at 1e-3), then minimum-WER training with the
loop and runaway penalties from it: runaway outputs, repetition rate and WER before and after.
`feedback`: `ray-asr feedback` on 32 clinical clips of two speakers, their references standing in for a
person's corrections; one fine-tune on that feedback file alone; WER on the same speakers' held-out clips
(the demo's eval split) before and after.
Each run is a `ray-asr finetune` (minutes to tens of minutes each on 2 CPU cores); results go to
`<out>/reward.json` and a table on stdout.
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
RECIPE = "configs/recipes/mwer.yaml"
SPEAKERS = ("en-us+f2", "en-us+m3")
FEEDBACK_CLIPS = 32


def _cli(*args: str) -> None:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ray_asr", *args], cwd=ROOT, check=True)
    print(f"  ({' '.join(args[:2])}: {time.perf_counter() - started:.0f} s)", flush=True)


def _finetune(out: Path, *overrides: str) -> dict:
    """One run (skipped when `out` already has its metrics); its start row and exported row."""
    if not (out / "metrics.json").exists():
        _cli("finetune", RECIPE, f"output_dir={out}", *overrides)
    history = json.loads((out / "history.json").read_text())
    return {"start": history[0], "end": json.loads((out / "metrics.json").read_text())}


def _metric(summary: dict, split: str, key: str):
    """A metric of `metrics.json` (`{"eval": {...}, "general_eval": {...}}`); history rows are flat (`general_wer`)."""
    return summary.get(split, {}).get(key)


def _speakers_rows(name: str) -> list[dict]:
    """The demo split's rows spoken by `SPEAKERS`, with absolute audio paths (the manifests land elsewhere)."""
    corpus = ROOT / "data" / "demo"
    rows = [json.loads(line) for line in (corpus / name).read_text().splitlines() if line.strip()]
    return [{**r, "audio": str((corpus / r["audio"]).resolve())} for r in rows if r.get("speaker") in SPEAKERS]


def compare(start: str, out: Path) -> dict:
    runs = {name: _finetune(out / name, f"model.name_or_path={start}", f"train.objective={name}") for name in ("ce", "mwer")}
    base = runs["ce"]["start"]
    rows = {"start": {"wer": base["wer"], "general_wer": base["general_wer"]}}
    for name, found in runs.items():
        rows[name] = {"wer": _metric(found["end"], "eval", "wer"),
                      "general_wer": _metric(found["end"], "general_eval", "wer"), "steps": found["end"]["step"]}
    return rows


def loops(start: str, out: Path) -> dict:
    looping = out / "looping"
    _finetune(looping, f"model.name_or_path={start}", "train.objective=ce", "train.learning_rate=1.0e-3",
              "train.eval_at_start=false")
    fixed = _finetune(out / "unloop", f"model.name_or_path={looping / 'model'}", "train.objective=mwer")
    keys = ("wer", "runaway_outputs", "repetition_rate")
    return {"looping": {k: fixed["start"].get(k) for k in keys},
            "after_mwer": {k: _metric(fixed["end"], "eval", k) for k in keys}}


def feedback(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    source, held_out = out / "feedback-source.jsonl", out / "held-out.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _speakers_rows("in_domain.jsonl")[:FEEDBACK_CLIPS]))
    held_out.write_text("".join(json.dumps(r) + "\n" for r in _speakers_rows("eval.jsonl")))
    rows = out / "feedback.jsonl"
    if not rows.exists():
        _cli("feedback", "models/whisper-base", str(source), "--out", str(rows), "--with-reference")
    found = _finetune(out / "feedback-run", "model.name_or_path=models/whisper-base", "train.objective=ce",
                      "data.train=null", f"data.feedback={rows}", f"data.eval={held_out}", "data.general_eval=null",
                      "train.epochs=5", "train.batch_size_per_worker=8", "train.learning_rate=3.0e-5")
    return {"speakers": list(SPEAKERS), "feedback_rows": FEEDBACK_CLIPS, "held_out_clips": found["start"].get("num_utterances"),
            "wer_before": found["start"]["wer"], "wer_after": _metric(found["end"], "eval", "wer")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="compare,loops,feedback")
    parser.add_argument("--start", default="runs/demo/model", help="a cross-entropy fine-tune (`ray-asr demo` writes it)")
    parser.add_argument("--out", default="runs/reward")
    args = parser.parse_args()
    out = ROOT / args.out
    steps = args.steps.split(",")
    if {"compare", "loops"} & set(steps) and not (ROOT / args.start / "config.json").exists():
        raise SystemExit(f"{args.start}: no model there; run `ray-asr demo` first (or give --start)")
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}
    if "compare" in steps:
        results["compare"] = compare(args.start, out)
    if "loops" in steps:
        results["loops"] = loops(args.start, out)
    if "feedback" in steps:
        results["feedback"] = feedback(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reward.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
