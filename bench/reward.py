"""Reward-based fine-tuning on the demo corpus with whisper-base, three comparisons side by side:

    python bench/reward.py [--steps compare,loops,feedback] [--start runs/demo] [--out runs/reward]

`compare`: from the same cross-entropy checkpoint (`--start`: the first epoch of a finished run such as
`ray-asr demo`'s `runs/demo`, or a model folder), one epoch of continued cross-entropy and one of minimum-WER
training (`configs/recipes/mwer.yaml`), same seeds and learning rate: in-domain and general WER of each, beside
the start's. The first epoch, not the finished model: after the demo's two epochs the model has all but
memorised its training split (training loss 0.06), so every training clip's N-best leads with its reference
and minimum-WER training has nothing to choose between.
`loops`: a model that loops (the start fine-tuned one epoch at `--looping-lr`), then minimum-WER training with the
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


def first_epoch(run: Path, out: Path) -> Path:
    """A model folder holding `run`'s first-epoch checkpoint: its exported model (for the frozen weights, which
    checkpoints leave out) with the checkpoint's trainable parameters loaded. ZeRO 0-2 on one worker only: there
    the module file holds every trainable parameter whole."""
    import shutil

    from transformers import WhisperForConditionalGeneration

    from ray_asr.checkpoint import weights_only_engine

    if (out / "model.safetensors").exists():
        return out
    checkpoints = sorted((run / "checkpoints").glob("*/step-*"))
    if not checkpoints or not (run / "model" / "config.json").exists():
        raise SystemExit(f"{run}: not a finished run with checkpoints (`ray-asr demo` writes runs/demo)")
    modules = sorted((checkpoints[0] / "ds").rglob("mp_rank_*_model_states.pt"))
    if len(modules) != 1:
        raise SystemExit(f"{checkpoints[0]}: {len(modules)} module files; a one-worker ZeRO 0-2 run is needed")
    trained = weights_only_engine().load(str(modules[0]), map_location="cpu")["module"]  # the loader resuming uses
    model = WhisperForConditionalGeneration.from_pretrained(run / "model")
    unknown = set(trained) - set(model.state_dict())
    if unknown:
        raise SystemExit(f"{modules[0]}: parameters the model lacks ({sorted(unknown)[:3]}); LoRA runs are not supported")
    model.load_state_dict(trained, strict=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for extra in (run / "model").iterdir():
        if not (out / extra.name).exists():
            shutil.copy(extra, out / extra.name)
    return out


def _speakers_rows(name: str) -> list[dict]:
    """The demo split's rows spoken by `SPEAKERS`, with absolute audio paths (the manifests land elsewhere)."""
    corpus = ROOT / "data" / "demo"
    rows = [json.loads(line) for line in (corpus / name).read_text().splitlines() if line.strip()]
    return [{**r, "audio": str((corpus / r["audio"]).resolve())} for r in rows if r.get("speaker") in SPEAKERS]


def compare(start: str, out: Path) -> dict:
    # the start is scored once, by the cross-entropy run (the minimum-WER run's scoring also decodes the 4-best)
    runs = {name: _finetune(out / name, f"model.name_or_path={start}", f"train.objective={name}", *extra)
            for name, extra in (("ce", ()), ("mwer", ("train.eval_at_start=false",)))}
    base = runs["ce"]["start"]
    rows = {"start": {"wer": base["wer"], "general_wer": base["general_wer"]}}
    for name, found in runs.items():
        rows[name] = {"wer": _metric(found["end"], "eval", "wer"),
                      "general_wer": _metric(found["end"], "general_eval", "wer"), "steps": found["end"]["step"]}
    return rows


def loops(start: str, out: Path, looping_lr: float) -> dict:
    rate = f"lr{looping_lr:g}"  # one folder pair per rate: a rerun at another never reuses these
    looping = out / f"looping-{rate}"
    broken = _finetune(looping, f"model.name_or_path={start}", "train.objective=ce", f"train.learning_rate={looping_lr}",
                       "train.eval_at_start=false")
    # the looping model's own final evaluation is the "before": scoring it again would decode its runaways twice
    fixed = _finetune(out / f"unloop-{rate}", f"model.name_or_path={looping / 'model'}", "train.objective=mwer",
                      "train.eval_at_start=false")
    keys = ("wer", "runaway_outputs", "repetition_rate")
    return {split: {"looping": {k: _metric(broken["end"], split, k) for k in keys},
                    "after_mwer": {k: _metric(fixed["end"], split, k) for k in keys}} for split in ("eval", "general_eval")}


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
    parser.add_argument("--start", default="runs/demo",
                        help="a finished cross-entropy run (its first epoch is used; `ray-asr demo` writes runs/demo) "
                             "or a model folder")
    parser.add_argument("--out", default="runs/reward")
    parser.add_argument("--looping-lr", type=float, default=3.0e-4,
                        help="learning rate of the cross-entropy epoch that makes the looping model (1e-3 breaks "
                             "far more than stopping: 100%% WER)")
    args = parser.parse_args()
    out = ROOT / args.out
    steps = args.steps.split(",")
    start = args.start
    if {"compare", "loops"} & set(steps):
        if (ROOT / start / "checkpoints").is_dir():
            start = str(first_epoch(ROOT / start, out / "start").relative_to(ROOT))
        elif not (ROOT / start / "config.json").exists():
            raise SystemExit(f"{start}: neither a run nor a model; run `ray-asr demo` first (or give --start)")
    record = out / "reward.json"  # a run of some steps keeps what earlier runs measured of the others
    results = json.loads(record.read_text()) if record.exists() else {}
    results.update({"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                    "start": start})
    if "compare" in steps:
        results["compare"] = compare(start, out)
    if "loops" in steps:
        results["loops"] = loops(start, out, args.looping_lr)
    if "feedback" in steps:
        results["feedback"] = feedback(out)
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
