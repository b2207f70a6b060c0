"""Soak: the smoke config trained for many steps, watching each training worker's memory, files and threads.

Runs `ray-asr finetune configs/smoke.yaml` for one epoch of about `--steps` optimizer steps (the tone
corpus' 64 training clips repeated under new ids), with an evaluation (and a checkpoint) every `--eval-every`,
samples every Ray Train worker process every few seconds (resident memory,
open file descriptors, threads) and prints, per worker, the least-squares slope of each after warm-up
(the first `--warmup` share of the samples is left out). A leak shows as a slope that does not fall to
about zero: MiB per 100 steps, descriptors and threads per 100 steps.

    python bench/soak.py [--steps 500] [--eval-every 50] [--out runs/soak]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
CLIPS_PER_STEP = 8  # the smoke config: 2 workers x 4 clips a batch


def repeated_manifest(folder: Path, rows: int) -> Path:
    """The tone corpus' training clips repeated under new ids up to `rows` rows: one long epoch."""
    from ray_asr.builtin import build_tones

    build_tones(folder)
    base = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    manifest = folder / f"train-x{rows}.jsonl"
    with open(manifest, "w") as f:
        for n in range(rows):
            row = base[n % len(base)]
            f.write(json.dumps({"id": f"soak-{n:06d}", "audio": str((folder / row["audio"]).resolve()),
                                "text": row["text"]}) + "\n")
    return manifest


def workers(driver: int) -> list[psutil.Process]:
    """The run's training workers: descendants of its driver (which started the local Ray), not other runs'."""
    found = []
    try:
        family = psutil.Process(driver).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for process in family:
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def sample(samples: dict, stop: threading.Event, started: float, every: float, driver: list) -> None:
    while not stop.wait(every):
        for process in workers(driver[0]) if driver else []:
            try:
                row = (time.perf_counter() - started, process.memory_info().rss / 2**20, process.num_fds(),
                       process.num_threads())
            except psutil.NoSuchProcess:
                continue
            samples.setdefault(process.pid, []).append(row)


def slope(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(x, y, 1)[0]) if len(x) > 2 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=0.2, help="share of the samples left out at the start")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--out", default="runs/soak")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    manifest = repeated_manifest(out.parent / f"{out.name}-tones", args.steps * CLIPS_PER_STEP)
    command = [sys.executable, "-m", "ray_asr", "finetune", str(ROOT / "configs" / "smoke.yaml"), f"output_dir={out}",
               f"data.train={manifest}", "train.epochs=1", f"train.eval_every_steps={args.eval_every}",
               "data.general_eval=null", "train.keep_checkpoints=1"]
    started = time.perf_counter()
    samples: dict[int, list] = {}
    stop = threading.Event()
    driver: list[int] = []
    watcher = threading.Thread(target=sample, args=(samples, stop, started, args.every, driver), daemon=True)
    watcher.start()
    out.mkdir(parents=True)
    with open(out.parent / f"{out.name}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""})
        driver.append(child.pid)
        code = child.wait()
    stop.set()
    watcher.join()
    seconds = time.perf_counter() - started
    history = json.loads((out / "history.json").read_text()) if (out / "history.json").exists() else []
    steps = history[-1]["step"] if history else 0
    steps_per_s = steps / seconds if seconds else math.nan
    print(f"soak: exit {code}, {steps} steps in {seconds:.0f} s, {len(history)} evaluations")
    print("\n| worker | samples | RSS start→end MiB | RSS slope MiB/100 steps | fds start→end | fd slope /100 steps "
          "| threads start→end | thread slope /100 steps |")
    print("|---|---|---|---|---|---|---|---|")
    report = {}
    for pid, rows in samples.items():
        rows = np.array(rows)
        kept = rows[int(len(rows) * args.warmup):]
        if len(kept) < 3:
            continue
        per_100 = 100 / steps_per_s  # seconds per 100 steps
        t = kept[:, 0]
        found = {name: slope(t, kept[:, i]) * per_100 for i, name in ((1, "rss"), (2, "fds"), (3, "threads"))}
        report[pid] = {**found, "samples": len(rows)}
        print(f"| {pid} | {len(rows)} | {kept[0, 1]:.0f}→{kept[-1, 1]:.0f} | {found['rss']:+.2f} | "
              f"{kept[0, 2]:.0f}→{kept[-1, 2]:.0f} | {found['fds']:+.2f} | {kept[0, 3]:.0f}→{kept[-1, 3]:.0f} | "
              f"{found['threads']:+.2f} |")
    (out / "soak.json").write_text(json.dumps({"steps": steps, "seconds": seconds, "workers": report}, indent=1))


if __name__ == "__main__":
    main()
