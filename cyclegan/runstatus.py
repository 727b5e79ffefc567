"""A run's status.json: what a run is doing now (state, step, pace, the log's last lines), written
atomically by the training side only (the loop, and the supervisor of a job started by the Train tab),
so that a terminal, a second tab or a restarted app all read the same truth."""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

from .files import write_atomic

STATUS = "status.json"
LOG = "train.log"  # a job's output (the supervisor sends the trainer's stdout and stderr there)
STATES = ("idle", "preparing", "running", "stopping", "stopped", "finished", "failed")
ACTIVE = ("preparing", "running", "stopping")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ABSOLUTE = re.compile(r"(?<![\w.~])/(?:[^\s/:'\"]+/)+([^\s/:'\"]*)")


def read_status(run: Path) -> dict | None:
    """The run's status.json, or None where there is none (or a half-copied one)."""
    try:
        status = json.loads((Path(run) / STATUS).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def write_status(run: Path, status: dict) -> None:
    if status.get("message"):
        status = {**status, "message": without_paths(status["message"], run)}
    write_atomic(Path(run) / STATUS, json.dumps(status, indent=1).encode())


def without_paths(line: str, run: Path) -> str:
    """A line with no absolute path of the server: the run's folder named by its name, other paths by
    their last part."""
    line = line.replace(str(Path(run).resolve()), Path(run).name)
    return ABSOLUTE.sub(lambda m: "…/" + m[1] if m[1] else "…/", line)


def log_tail(run: Path, lines: int = 12, max_bytes: int = 64_000) -> list[str]:
    """The last lines of the run's train.log as a person reads them: a progress bar's redraws collapsed
    into the last one (tqdm rewrites its line with \\r), colours removed, and no absolute path of the
    server (the run's folder is named by its name, other paths by their last part)."""
    path = Path(run) / LOG
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    out = []
    for line in text.split("\n")[-4 * lines:]:  # not splitlines(): \r is a redraw, not a new line
        line = without_paths(ANSI.sub("", line.rstrip("\r").rsplit("\r", 1)[-1]).rstrip(), run)
        if line:
            out.append(line)
    return out[-lines:]


class RunStatus:
    """The loop's side of status.json: `update` sets fields (cheap: no write, no device read) and a
    thread writes the file every `every` seconds while the run lives, with the pace measured over the
    last minute; `close` stops the thread and writes the final state."""

    def __init__(self, run: Path, fields: dict, every: float = 1.0) -> None:
        self.run, self.every = Path(run), every
        self.fields = {"state": "preparing", "run": self.run.name, "pid": os.getpid(), "step": 0, "total_steps": 0,
                       "epoch": 0.0, "steps_per_s": None, "eta_s": None, "message": "", **fields}
        self.pace: list[tuple[float, int]] = []  # (time, step), the last minute of them
        self.lock = threading.RLock()  # update() may run in a signal handler, inside update()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="run-status", daemon=True)

    def start(self) -> "RunStatus":
        self.write()
        self.thread.start()
        return self

    def update(self, **fields) -> None:
        with self.lock:
            self.fields.update(fields)

    def _loop(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                self.write()
            except OSError:  # a full disk: the run goes on, the next write may work
                pass

    def write(self) -> None:
        with self.lock:
            status = dict(self.fields)
        now, step = time.time(), status["step"]
        if not self.pace or step != self.pace[-1][1]:
            self.pace.append((now, step))
        while len(self.pace) > 2 and now - self.pace[1][0] > 60:
            self.pace.pop(0)
        (t0, s0), (t1, s1) = self.pace[0], self.pace[-1]
        if status["state"] == "running" and s1 > s0 and t1 > t0:  # the pace of a run that goes on
            rate = (s1 - s0) / (t1 - t0)
            status["steps_per_s"] = round(rate, 4)
            status["eta_s"] = round(max(0, status["total_steps"] - step) / rate)
        status.update(updated=now, log=log_tail(self.run))
        write_status(self.run, status)

    def close(self, state: str, message: str = "") -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()
        self.update(state=state, message=message, eta_s=0 if state == "finished" else None)
        self.write()

