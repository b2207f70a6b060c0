"""Ray job entry point for a search (the same as `ray-asr tune`).

    ray job submit --working-dir . -- python jobs/tune.py configs/tune-smoke.yaml [dotted.key=value ...]
"""

import sys

from ray_asr.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
