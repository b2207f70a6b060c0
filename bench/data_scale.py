"""Memory of the data tier against manifest size: `ray-asr validate` on manifests of 10k / 100k / 1M rows.

Each manifest names the same few short WAV files under distinct ids (1% of rows name a missing file, so
the quarantine sink has rejections to hold). While the command streams every row through the read tasks,
the decode actors and the sink, this script samples the memory of the driver and of each Ray process
kind twice a second and prints the peak of each against the row count, with the wall time: resident
(RSS) and private (USS). RSS counts the pages of Ray's shared-memory object store that a process has
read blocks from, and blocks grow with the rows once their count is capped (`data.MAX_BLOCKS`); USS is
the process' own. Per-row state on the driver or in an actor shows as a private peak that grows with the rows.

    python bench/data_scale.py [--rows 10000,100000,1000000] [--workdir runs/data-scale] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile

ROOT = Path(__file__).resolve().parents[1]
CLIPS = 4
CLIP_S = 0.5  # short clips: the cost under test is per row, not per second of audio
KINDS = {"driver": None, "decode actor": "Preparer", "quarantine sink": "QuarantineSink", "read task": "ReadManifest",
         "split coordinator": "SplitCoordinator", "drain task": "_drain"}


def make_manifest(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(CLIPS):
        path = folder / f"clip{i}.wav"
        if not path.exists():
            t = np.arange(int(CLIP_S * 16_000)) / 16_000
            wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(t.size)
            soundfile.write(path, wave.astype(np.float32), 16_000)
    manifest = folder / f"rows-{rows}.jsonl"
    if not manifest.exists():
        with open(manifest, "w") as f:
            for n in range(rows):
                audio = "missing.wav" if n % 100 == 99 else f"clip{n % CLIPS}.wav"
                f.write(json.dumps({"id": f"r{n:08d}", "audio": audio, "text": "ka tu mi sa"}) + "\n")
    return manifest


def kind_of(process: psutil.Process, driver: int) -> str | None:
    if process.pid == driver:
        return "driver"
    try:
        title = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return next((kind for kind, mark in KINDS.items() if mark and mark in title), None)


def sample(driver: int, peaks: dict, private: dict, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        for process in psutil.process_iter():
            kind = kind_of(process, driver)
            if kind is None:
                continue
            try:
                memory = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            peaks[kind] = max(peaks.get(kind, 0), memory.rss)
            private[kind] = max(private.get(kind, 0), memory.uss)


def measure(manifest: Path, model: str, out: Path) -> dict:
    env = {**os.environ, "RAY_ADDRESS": ""}
    command = [sys.executable, "-m", "ray_asr", "validate", str(manifest), "--json", "--model", model,
               "--quarantine", str(out / f"{manifest.stem}.quarantine.jsonl")]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    peaks: dict[str, int] = {}
    private: dict[str, int] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=sample, args=(child.pid, peaks, private, stop), daemon=True)
    watcher.start()
    output, _ = child.communicate()
    stop.set()
    watcher.join()
    seconds = time.perf_counter() - started
    summary = json.loads(output.strip().splitlines()[-1]) if child.returncode in (0, 1) else {}
    return {"seconds": seconds, "summary": summary, "peaks_mib": {k: v / 2**20 for k, v in peaks.items()},
            "private_peaks_mib": {k: v / 2**20 for k, v in private.items()}, "returncode": child.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,100000,1000000")
    parser.add_argument("--workdir", default="runs/data-scale")
    parser.add_argument("--model", default="models/whisper-base", help="a Whisper folder (its tokenizer)")
    args = parser.parse_args()
    work = Path(args.workdir)
    results = {}
    for rows in (int(r) for r in args.rows.split(",")):
        manifest = make_manifest(work, rows)
        results[rows] = found = measure(manifest, args.model, work)
        s = found["summary"]
        print(f"{rows:>9} rows: {found['seconds']:.0f} s, accepted {s.get('accepted')}, rejected {s.get('rejected')}, "
              f"peak RSS / USS " + ", ".join(f"{k} {v:.0f} / {found['private_peaks_mib'].get(k, float('nan')):.0f} MiB"
                                             for k, v in sorted(found["peaks_mib"].items())), flush=True)
    kinds = sorted({k for r in results.values() for k in r["peaks_mib"]})
    print("\npeak RSS / private (USS) MiB")
    print("| rows | seconds | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for rows, found in results.items():
        cells = " | ".join(f"{found['peaks_mib'].get(k, float('nan')):.0f} / "
                           f"{found['private_peaks_mib'].get(k, float('nan')):.0f}" for k in kinds)
        print(f"| {rows:,} | {found['seconds']:.0f} | {cells} |")
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
