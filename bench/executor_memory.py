"""Where the memory of the process that runs Ray Data's executor goes while `validate` streams a manifest.

`bench/data_scale.py` shows that process' private memory (USS) growing with the manifest's rows. This script
runs the same pipeline (read tasks -> decode actors -> quarantine sink, `validate`'s batch size) with the
executor in a task of its own and, every `--every` rows it consumes, reads inside that process: its USS,
the bytes glibc's malloc has handed out and not had back (in use), and the freed bytes malloc keeps in its
arenas instead of returning them to the system (retained). At the end it calls `malloc_trim(0)` and reads
them again. Native memory in use that climbs and falls back is a queue (rows read ahead of the decode
actors); retained memory that only climbs is the allocator's, and the trim shows how much of it the
system gets back.

    python bench/executor_memory.py [--rows 1000000] [--every 100000] [--workdir runs/data-scale] [--model DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

import psutil
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_scale import make_manifest  # the same manifests, so the two benches compare

from ray_asr import cluster, data, validate

MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                    "keepcost")  # glibc's `struct mallinfo2`, summed over every arena


def _reading(libc, consumed) -> dict:
    info = libc.mallinfo2()
    mib = 2**20
    return {"rows": consumed, "uss": psutil.Process().memory_full_info().uss / mib,
            "in_use": (info.uordblks + info.hblkhd) / mib, "retained": info.fordblks / mib}


@ray.remote(num_cpus=0)
def _drain_and_read(dataset, every: int) -> tuple[float, list[dict]]:
    # Built here, in the task: a ctypes class defined at module level in __main__ cannot be pickled to it.
    mallinfo2 = type("MallInfo2", (ctypes.Structure,), {"_fields_": [(f, ctypes.c_size_t) for f in MALLINFO2_FIELDS]})
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = mallinfo2
    readings = [_reading(libc, 0)]
    consumed = 0
    started = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        consumed += batch.num_rows
        if consumed - readings[-1]["rows"] >= every:
            readings.append(_reading(libc, consumed))
    readings.append(_reading(libc, consumed))
    seconds = time.perf_counter() - started
    libc.malloc_trim(0)
    readings.append(_reading(libc, "after malloc_trim(0)"))
    return seconds, readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000)
    parser.add_argument("--workdir", default="runs/data-scale")
    parser.add_argument("--model", default="models/whisper-base", help="a Whisper folder (its tokenizer)")
    args = parser.parse_args()
    work = Path(args.workdir)
    manifest = make_manifest(work, args.rows)
    os.environ["RAY_ADDRESS"] = ""  # a local Ray of this script's own, never a cluster someone else uses
    cluster.connect(None, log_to_driver=False)
    sink = data.open_sink(work / f"{manifest.stem}.quarantine.jsonl")
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = data.build_dataset(validate.source_config(str(manifest), args.model), "train", sink, enforce_limit=False)
    try:
        seconds, readings = ray.get(_drain_and_read.remote(dataset, args.every))
    finally:
        ray.get(sink.close.remote())
    print(f"{args.rows:,} rows in {seconds:.0f} s; the executor's process, MiB:")
    print("| rows consumed | USS | malloc in use | malloc retained (freed, kept) |")
    print("|---|---|---|---|")
    for r in readings:
        rows = f"{r['rows']:,}" if isinstance(r["rows"], int) else r["rows"]
        print(f"| {rows} | {r['uss']:.0f} | {r['in_use']:.0f} | {r['retained']:.0f} |")


if __name__ == "__main__":
    main()
