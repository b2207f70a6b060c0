"""What the device computes natively, and the precision `train.precision: auto` picks from it.

bf16 is only fast where the hardware has it: CUDA GPUs from Ampere on, and CPUs with AVX-512 BF16
or AMX. Elsewhere PyTorch emulates it: on an AVX2-only CPU one 1500x512 @ 512x2048 matmul took
54 ms in fp32 and 7.2 s in bf16, so a bf16 run there is two orders of magnitude slower, not faster.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's own check, or the AVX-512 BF16/AMX flags)."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    return any(flag in _cpu_flags() for flag in CPU_BF16_FLAGS)


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_bf16_native()


def resolve_precision(requested: str, device: torch.device, bf16_ok: bool | None = None) -> str:
    """`train.precision` made concrete: `auto` → bf16 where native, fp16 on a GPU without it, else fp32.

    `bf16_ok` overrides the local check (a run's ranks agree on one answer first).
    """
    if requested != "auto":
        return requested
    native = bf16_native(device) if bf16_ok is None else bf16_ok
    if native:
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def bf16_slowdown(size: int = 384, repeats: int = 3) -> float:
    """How many times slower a bf16 matmul runs than an fp32 one on this CPU (one thread, best of `repeats`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(size, size)

        def best(x: torch.Tensor) -> float:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                x @ x
                times.append(time.perf_counter() - start)
            return min(times)

        return best(a.bfloat16()) / max(best(a), 1e-9)
    finally:
        torch.set_num_threads(threads)


def describe(precision: str, requested: str, device: torch.device) -> str:
    """The precision as the `[train]` line shows it, e.g. `fp32 (auto: no native bf16 on this CPU)`."""
    if requested != "auto":
        return precision
    where = "GPU" if device.type == "cuda" else "CPU"
    why = f"native bf16 on this {where}" if precision == "bf16" else f"no native bf16 on this {where}"
    return f"{precision} (auto: {why})"
