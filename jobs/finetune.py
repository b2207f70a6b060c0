"""Ray job entry point for one fine-tuning run (the same as `ray-asr finetune`).

    ray job submit --working-dir . -- python jobs/finetune.py configs/smoke.yaml [dotted.key=value ...]

Inside a Ray job `RAY_ADDRESS` is set, so the run joins the cluster that runs the job.
"""

import sys

from ray_asr.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
