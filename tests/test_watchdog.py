"""Watchdog: one warning when a stream stalls, none while it flows, never a second one."""

from __future__ import annotations

import logging
import time

from ray_asr.watchdog import Watchdog


def _slow(items: int, pause: float):
    for i in range(items):
        time.sleep(pause)
        yield i


def test_a_stalled_stream_warns_once_with_the_message(caplog):
    calls = []

    def message(waited: float) -> str:
        calls.append(waited)
        return f"[data] no batch for {waited:.1f} s"

    dog = Watchdog(message, after_s=0.2, poll_s=0.02)
    with caplog.at_level(logging.WARNING, logger="ray_asr.watchdog"):
        assert list(dog.watch(_slow(3, 0.35))) == [0, 1, 2]  # every item arrives late
    dog.stop()
    assert len(calls) == 1 and calls[0] >= 0.2
    assert [r.getMessage() for r in caplog.records] == [f"[data] no batch for {calls[0]:.1f} s"]


def test_a_flowing_stream_and_time_spent_outside_it_are_not_stalls(caplog):
    dog = Watchdog(lambda waited: "stalled", after_s=0.2, poll_s=0.02)
    with caplog.at_level(logging.WARNING, logger="ray_asr.watchdog"):
        for _ in dog.watch(_slow(5, 0.01)):
            time.sleep(0.3)  # the consumer's own work (a training step) is not the stream's stall
    dog.stop()
    assert not caplog.records and not dog.warned
