"""The C allocator of a process that churns through large arrays: freed blocks kept for reuse.

No torch import here: data-tier actors call it too, and importing torch would add seconds to their start.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameters (malloc.h)
KEPT_FREE_BYTES = 1 << 30  # 1 GiB: above a step's churn of large tensors (~1.1 GB a whisper-base batch of 8)


def keep_freed_memory(limit: int = KEPT_FREE_BYTES) -> bool:
    """Lets glibc's malloc reuse freed large blocks in this process instead of returning them to the OS.

    By default glibc maps each block over 32 MB fresh and unmaps it when freed, and gives back the top of its
    heap past 64 MB free; torch's CPU tensors go straight to malloc, so every step faults in and zeroes its
    large activations and gradients again. Measured (whisper-base, bf16, batch 8, 2-core Zen 4): a decoder step
    0.59 → 0.44 s (116,000 page faults → 0), the frozen encoder's forward 2.64 → 2.39 s (204,000 → 0). The
    process keeps up to `limit` bytes of freed memory. Call it in a process that trains, decodes or prepares
    audio (a Ray Train worker, an evaluation replica, a data-tier actor); returns False where the C library is
    not glibc (nothing changed)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))
