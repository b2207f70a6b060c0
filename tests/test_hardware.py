"""Precision `auto`: bf16 only where the device computes it natively."""

from __future__ import annotations

import torch

from ray_asr import hardware

CPU = torch.device("cpu")


def test_auto_follows_native_bf16_and_explicit_values_are_kept():
    assert hardware.resolve_precision("auto", CPU, bf16_ok=True) == "bf16"
    assert hardware.resolve_precision("auto", CPU, bf16_ok=False) == "fp32"
    assert hardware.resolve_precision("auto", torch.device("cuda"), bf16_ok=False) == "fp16"
    assert hardware.resolve_precision("bf16", CPU, bf16_ok=False) == "bf16"
    assert hardware.resolve_precision("fp32", CPU, bf16_ok=True) == "fp32"


def test_this_cpus_answer_agrees_with_its_flags():
    flags = hardware._cpu_flags()
    if any(flag in flags for flag in hardware.CPU_BF16_FLAGS):
        assert hardware.cpu_bf16_native()
    assert hardware.resolve_precision("auto", CPU) == ("bf16" if hardware.cpu_bf16_native() else "fp32")


def test_the_measured_slowdown_is_a_positive_ratio_and_threads_are_restored():
    threads = torch.get_num_threads()
    ratio = hardware.bf16_slowdown(size=64, repeats=1)
    assert ratio > 0 and torch.get_num_threads() == threads
    if not hardware.cpu_bf16_native():
        assert ratio > 1.5  # emulated bf16 is always slower than fp32


def test_describe_says_why_auto_chose():
    assert hardware.describe("fp32", "auto", CPU) == "fp32 (auto: no native bf16 on this CPU)"
    assert hardware.describe("bf16", "bf16", CPU) == "bf16"
