"""Ray job entry point for an evaluation report (the same as `ray-asr evaluate`).

    ray job submit --working-dir . -- python jobs/evaluate.py runs/demo/model data/demo/eval.jsonl --out report.json
"""

import sys

from ray_asr.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
