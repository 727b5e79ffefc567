"""How a run is asked to stop: Ctrl-C, SIGTERM (what `kill` and the Train tab's job control send),
once to finish the step and save, twice to stop at once."""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable


class StopRequested(Exception):
    """A first stop signal that arrived inside `StopSignals.cut_short()`."""


class StopSignals:
    """Ctrl-C or SIGTERM asks the loop to finish its step, save and stop; a second one stops at once,
    without saving (the last checkpoint stands). Work that may be dropped and redone later (a
    validation: minutes on a CPU) runs inside `cut_short()`, where the first signal ends it at once.
    `on_first(name)` is called in the handler of the first signal (e.g. to say "stopping")."""

    def __init__(self, on_first: Callable[[str], None] | None = None) -> None:
        self.name: str | None = None
        self.cutting_short = False
        self.on_first = on_first

    def _handle(self, signum, frame) -> None:
        if self.name is not None:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        if self.on_first is not None:
            self.on_first(self.name)
        if self.cutting_short:
            raise StopRequested(self.name)

    @contextmanager
    def cut_short(self):
        if self.name is not None:
            raise StopRequested(self.name)
        self.cutting_short = True
        try:
            yield
        finally:
            self.cutting_short = False

    def __enter__(self) -> "StopSignals":
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker_id: int) -> None:
    """For data-loader workers."""
    # Ctrl-C and `kill` reach the whole process group; the main process decides when to stop and
    # shuts its data workers down itself, so a worker dying first must not abort the final save.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

