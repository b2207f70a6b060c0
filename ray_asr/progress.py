"""What the user sees while a run works: training workers send events, the driver draws them.

Worker output does not reach the terminal as Ray's log lines (prefixed, interleaved, a tqdm bar per
process); a `Channel` actor carries the few things a user waits on instead, and the driver's `Display`
turns them into one progress bar per phase (each evaluation, the training steps with clips/s and
time left) and the per-evaluation lines. Workers never wait on the channel: every call is
fire-and-forget, so a slow terminal cannot slow a training step.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Self

import ray

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often the driver drains the channel: bars move smoothly, the actor stays idle
NON_TTY_REFRESH_S = 30.0  # a log file gets a bar redraw every 30 s, not ten a second


def bar(total: int, desc: str, unit: str, done: int = 0, stream=None):
    """A tqdm bar on stderr that redraws often on a terminal and rarely into a log file."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    tty = stream.isatty()
    return tqdm(total=total, initial=done, desc=desc, unit=unit, file=stream, leave=True, dynamic_ncols=tty,
                mininterval=0.5 if tty else NON_TTY_REFRESH_S, smoothing=0.1)


@contextlib.contextmanager
def shown(show: bool):
    """A `Channel` whose events the driver draws while the block runs, or None when `show` is off."""
    if not show:
        yield None
        return
    from ray_asr.cluster import on_this_node

    channel = on_this_node(Channel)
    with Display(channel):
        yield channel


@ray.remote(num_cpus=0)
class Channel:
    """Events from the workers, queued until the driver takes them."""

    def __init__(self):
        self.events: list[tuple] = []

    def put(self, *event) -> None:
        self.events.append(event)

    def take(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


class Reporter:
    """A worker's side: `say` a line, `start`/`advance`/`end` a phase. Without a channel (a Tune trial, whose
    driver is Tune's own) lines go to the worker's log and bars are skipped."""

    def __init__(self, channel=None, speaks: bool = True):
        self.channel, self.speaks = channel, speaks

    def say(self, text: str, warning: bool = False, every_rank: bool = False) -> None:
        """One line for the user: the speaking rank's, or (`every_rank`) this rank's whatever it is."""
        if not (self.speaks or every_rank):
            return
        (log.warning if warning else log.info)(text)
        if self.channel is not None:
            self.channel.put.remote("line", text)

    def start(self, phase: str, total: int, unit: str, done: int = 0) -> None:
        if self.speaks and self.channel is not None:
            self.channel.put.remote("start", phase, total, unit, done)

    def advance(self, phase: str, amount: int, note: str | None = None, every_rank: bool = False) -> None:
        """Moves a bar: by the speaking rank's count, or (`every_rank`) by each rank's own share of the work;
        `note` (the speaking rank's) shows beside it."""
        if self.channel is not None and amount and (self.speaks or every_rank):
            self.channel.put.remote("advance", phase, amount, note if self.speaks else None)

    def end(self, phase: str) -> None:
        if self.speaks and self.channel is not None:
            self.channel.put.remote("end", phase)


class Display:
    """The driver's side: a thread that drains a `Channel` into tqdm bars on stderr and lines on stdout.

    Use as a context manager around the blocking call (`trainer.fit()`); leaving it draws what is left."""

    def __init__(self, channel, stream=None):
        self.channel, self.stream = channel, stream or sys.stderr
        self.bars: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ray-asr-progress", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):  # a lost channel must not hide the run's own outcome
            self._draw(ray.get(self.channel.take.remote(), timeout=10))
        for phase in list(self.bars):
            self._close(phase)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._draw(ray.get(self.channel.take.remote(), timeout=30))
            except Exception:  # noqa: BLE001 (Ray shutting down under us: the run's own result says why)
                return

    def _close(self, phase: str) -> None:
        bar = self.bars.pop(phase, None)
        if bar is not None:
            bar.close()

    def _draw(self, events: list[tuple]) -> None:
        from tqdm import tqdm

        for kind, *args in events:
            if kind == "line":
                tqdm.write(args[0], file=sys.stdout)
            elif kind == "start":
                phase, total, unit, done = args
                self._close(phase)
                self.bars[phase] = bar(total, phase, unit, done, self.stream)
            elif kind == "advance" and args[0] in self.bars:
                phase, amount, note = args
                drawn = self.bars[phase]
                if note:
                    drawn.set_postfix_str(note, refresh=False)
                drawn.update(amount)
            elif kind == "end":
                self._close(args[0])
