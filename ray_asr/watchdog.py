"""Says once when a stream has produced nothing for a while, instead of waiting without a word.

A data tier that cannot get the CPUs it asks for (trainers holding them all, an autoscaler that
never adds the node) leaves the train loop blocked on its next batch; Ray keeps waiting, as it
should on a cluster that may still grow, but the user must hear what it waits for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

log = logging.getLogger(__name__)
STALL_AFTER_S = 60.0  # Ray Data's start-up (actors, first blocks) takes seconds; a minute of nothing is a stall


class Watchdog:
    """Wraps iterators; a daemon thread says `message(waited)` once (through `warn`, default a log warning) when
    one waits past `after_s` for an item."""

    def __init__(self, message: Callable[[float], str], after_s: float = STALL_AFTER_S, poll_s: float = 1.0,
                 warn: Callable[[str], None] | None = None):
        self.message, self.after_s, self.poll_s = message, after_s, poll_s
        self.warn = warn or log.warning
        self.waiting_since: float | None = None
        self.warned = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ray-asr-watchdog", daemon=True)
        self._thread.start()

    def watch(self, items: Iterable) -> Iterator:
        iterator = iter(items)
        while True:
            self.waiting_since = time.monotonic()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.waiting_since = None
            yield item

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s) and not self.warned:
            since = self.waiting_since
            if since is not None and time.monotonic() - since >= self.after_s:
                self.warned = True
                try:
                    self.warn(self.message(time.monotonic() - since))
                except Exception as err:  # noqa: BLE001 (the warning must never take the run down)
                    self.warn(f"[data] no batch for {self.after_s:.0f} s ({err})")

    def stop(self) -> None:
        self._stop.set()
