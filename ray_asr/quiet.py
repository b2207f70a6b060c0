"""Other libraries' chatter kept off the user's console unless `--verbose`.

What a run prints is ray-asr's own: a line per phase, progress bars, the evaluation lines and the
summary. Ray, DeepSpeed and transformers log a great deal at info and warning level that reads like
trouble to a user (an accelerator "fallback", weight-loading bars per worker, deprecation notices).
A local Ray started by this process inherits its environment, so its workers are quieted the same.
"""

from __future__ import annotations

import logging
import os
import warnings

# Read by the libraries at import time (and by a local Ray's workers, which inherit them).
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also turns off transformers' weight-loading and shard-writing bars
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "RAY_DATA_LOG_LEVEL": "ERROR",  # execution plans, progress blocks and "progress bars disabled" notices
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
}
# Ray's token-auth notice at every start; DeepSpeed's and torch.distributed's info lines in this process.
QUIET_LOGGERS = ("ray._private.authentication", "DeepSpeed", "torch.distributed")


QUIET_FLAG = "RAY_ASR_QUIET"  # set by the CLI without --verbose; a local Ray's workers (Tune trials) inherit it


def libraries(verbose: bool) -> None:
    """Quiets the libraries in this process and in a local Ray started after it; `verbose` leaves them be."""
    if verbose:
        return
    os.environ[QUIET_FLAG] = "1"
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if "DS_ACCELERATOR" not in os.environ and not _has_cuda():
        # DeepSpeed warns "Setting accelerator to CPU ... unable to detect it" in every process without
        # CUDA; naming the accelerator it would pick anyway keeps it quiet. Never set where CUDA is present.
        os.environ["DS_ACCELERATOR"] = "cpu"
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_log_level() -> str:
    """Ray Train's own log level for a run: its per-checkpoint and worker-group info lines only with --verbose."""
    return "WARNING" if os.environ.get(QUIET_FLAG) == "1" else "INFO"
