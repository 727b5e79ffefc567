"""Job control over a runs folder: start, stop, resume and read one training job at a time, from the
run folders' files alone, so that any process (the app, a restarted app, a second tab) sees the same
job. A job is `python -m cyclegan.train` under a supervisor (supervisor.py) in a process session of its
own: it outlives the process that started it."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..files import locked, write_atomic
from ..runstatus import ACTIVE, log_tail, read_status
from . import recipes
from .data import DataError, Limits, unpack_zip

JOB = ".job.json"  # in the runs folder: the supervisor of the running job (pid and start time)
REQUEST = "request.json"  # in a run folder: what the job was started with
STOP = "stop-request"  # in a run folder: how many times Stop was asked
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # what `python -m cyclegan.train` needs on its path


def process_start(pid: int) -> str | None:
    """The start time of a live process (Linux: /proc/PID/stat's 22nd field), "" where the system does not
    say, None where there is no such process: a PID reused by another process does not match."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie has ended


def read_request(folder: Path) -> dict:
    """What a run's job was started with (request.json); {} where there is none."""
    try:
        return json.loads((folder / REQUEST).read_text())
    except (OSError, ValueError):
        return {}


def write_request(folder: Path, request: dict) -> None:
    write_atomic(folder / REQUEST, json.dumps(request, indent=1).encode())


def stop_requests(folder: Path) -> int:
    """How many times Stop was asked of the run's job."""
    try:
        return int((folder / STOP).read_text() or 0)
    except (OSError, ValueError):
        return 0


def new_name(root: Path, source: str) -> str:
    """A run's name: its data's name and the time it started, unique in `root`."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", source).strip(".-_")[:40] or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, n = f"{base}-{stamp}", 1
    while (root / name).exists():
        n += 1
        name = f"{base}-{stamp}-{n}"
    return name


class Jobs:
    """The runs folder `root` (CYCLEGAN_RUNS), where each run is a folder `root/NAME`."""

    def __init__(self, root: str | os.PathLike, threads: int = 1, niceness: int = 10, max_bytes: int = 20 << 30,
                 limits: Limits | None = None, datasets_url: str | None = None, stop_timeout: float = 600) -> None:
        self.root = Path(root).resolve()
        self.shown_root = Path(root)  # as the operator gave it: the commands the page shows name it so
        self.threads, self.niceness, self.max_bytes = threads, niceness, max_bytes
        self.limits, self.datasets_url, self.stop_timeout = limits or Limits(), datasets_url, stop_timeout

    # ---- reading ----------------------------------------------------------------------------

    def running(self) -> str | None:
        """The name of the run whose job is alive, if one is."""
        try:
            job = json.loads((self.root / JOB).read_text())
        except (OSError, ValueError):
            return None
        start = process_start(int(job.get("pid", 0)))
        return job.get("run") if start is not None and start == job.get("start") else None

    def last(self) -> str | None:
        """The run of the current or last job."""
        try:
            name = (self.root / ".last-run").read_text().strip()
        except OSError:
            return None
        return name if (self.root / name).is_dir() else None

    def runs(self) -> list[str]:
        """The runs, newest first."""
        found = [p for p in self.root.glob("*/" + REQUEST)] if self.root.is_dir() else []
        return [p.parent.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def status(self, run: str | None = None) -> dict:
        """The status of `run` (default: the current or last job) as the API gives it. A job whose process is
        gone without its last word reads as failed (nothing is written)."""
        name = run or self.last()
        if name is None:
            return {"state": "idle", "run": None, "step": 0, "total_steps": 0, "steps_per_s": None, "eta_s": None,
                    "message": "no training job yet", "model": None}
        folder = self.folder(name)
        status = read_status(folder) or {}
        request = self.request(name)
        alive = self.running() == name
        if alive and status.get("state") not in ACTIVE:  # started, and its supervisor has not yet said so
            status = {**status, "state": "preparing", "message": request.get("starting", "starting")}
        if status.get("state", "preparing") in ACTIVE and not alive:
            status.update(state="failed", log=log_tail(folder), steps_per_s=None, eta_s=None,
                          message="the training process ended without saying why (killed, or the machine restarted)")
        status = {"step": 0, "total_steps": 0, "steps_per_s": None, "eta_s": None, "message": "", **status,
                  "run": name, "model": self.model_name(name)}
        status["command"], status["data"] = request.get("command"), request.get("data")
        return status

    def request(self, name: str) -> dict:
        return read_request(self.folder(name))

    def model_name(self, name: str) -> str | None:
        """The name /translate accepts for the run's latest weights, once it has saved some."""
        return f"run: {name}" if (self.folder(name) / "model" / "model.safetensors").is_file() else None

    def folder(self, name: str) -> Path:
        """A run's folder, for a name that can only be one (no path of the server reached by a name)."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a run name")
        return self.root / name

    # ---- starting and stopping ----------------------------------------------------------------

    def exclusive(self):
        """One process at a time decides whether a job may start."""
        return locked(self.root / ".lock")

    def start(self, recipe: str, identity: bool = True, max_steps: int = 0, zip_path: str | None = None,
              dataset: str = "", **changes) -> dict:
        """A new run on an uploaded zip or an official dataset (exactly one), checked before anything trains.
        A start while a job runs returns that job's status, saying so."""
        if bool(zip_path) == bool(dataset):
            raise ValueError("give either a zip of images or an official dataset's name, not both or neither")
        values = recipes.settings(recipe, identity, max_steps, **changes)
        with self.exclusive():
            if (busy := self.running()) is not None:
                return {**self.status(busy), "message": f"a job is already running: {busy}; stop it first"}
            self.check_space()
            name = new_name(self.root, Path(zip_path).stem if zip_path else dataset)
            folder = self.folder(name)
            folder.mkdir(parents=True)
            try:
                request = self.prepare_data(folder, zip_path, dataset)
            except (DataError, ValueError):
                shutil.rmtree(folder, ignore_errors=True)
                raise
            data = request.pop("flags")
            request.update(recipe=recipe, settings=values, target=values.get("max_steps", 0),
                           command=recipes.command(request["shown"], str(self.shown_root / name), values),
                           flags=[*data, "--output", str(folder), *recipes.flags(values)])
            request["starting"] = f"starting: {request.get('data') or 'dataset ' + dataset}"
            write_request(folder, request)
            return self.launch(name, request["starting"])

    def prepare_data(self, folder: Path, zip_path: str | None, dataset: str) -> dict:
        if zip_path:
            report = unpack_zip(Path(zip_path), folder / "data", self.limits)
            return {"data": report.summary(), "flags": ["--dataroot", str(folder / "data")],
                    "shown": ["--dataroot", str(self.shown_root / folder.name / "data")]}
        from ..datasets import DATASETS
        if dataset not in DATASETS and not (self.datasets_url and NAME.fullmatch(dataset)):  # another server's names
            raise ValueError(f"dataset {dataset!r} is not an official CycleGAN dataset: choose one of {', '.join(DATASETS)}")
        flags = ["--dataset", dataset, "--data-dir", str(self.root / ".datasets")]
        if self.datasets_url:
            flags += ["--dataset-url", self.datasets_url]
        return {"data": "", "dataset": dataset, "flags": flags, "shown": ["--dataset", dataset]}

    def resume(self, max_steps: int = 0, run: str | None = None) -> dict:
        """Continue the last run (or `run`) from its checkpoint, to its target unless a new one is given."""
        with self.exclusive():
            if (busy := self.running()) is not None:
                return {**self.status(busy), "message": f"a job is already running: {busy}"}
            name = run or self.last()
            if name is None or not (self.folder(name) / REQUEST).is_file():
                raise ValueError("no run to resume: start one first")
            folder, request = self.folder(name), self.request(name)
            if max_steps:
                request["target"] = max_steps
            flags = request["flags"]  # without a checkpoint (stopped before its first save): from the start
            if (folder / "checkpoint.pt").is_file() or (folder / "checkpoint.prev.pt").is_file():
                flags = ["--resume", str(folder), *(["--max-steps", str(request["target"])] if request.get("target") else [])]
            elif max_steps:
                flags = [*flags, "--max-steps", str(max_steps)]
            request["starting"] = f"resuming from step {(read_status(folder) or {}).get('checkpoint_step') or 0}"
            write_request(folder, request)
            return self.launch(name, request["starting"], flags)

    def launch(self, name: str, message: str, flags: list[str] | None = None) -> dict:
        """The supervisor of a job in a session of its own; called holding `exclusive()`."""
        folder = self.folder(name)
        flags = flags or self.request(name)["flags"]
        (folder / STOP).unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                                     os.environ.get("PYTHONPATH")]))}
        env.pop("HF_TOKEN", None)  # the trainer never pushes; a token stays out of its environment
        args = [sys.executable, "-m", "cyclegan.jobs.supervisor", str(folder), "--niceness", str(self.niceness),
                "--stop-timeout", str(self.stop_timeout), "--message", message, "--", *flags]
        proc = subprocess.Popen(args, cwd=folder, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it ends: no zombie here
        job = {"pid": proc.pid, "start": process_start(proc.pid), "run": name, "since": time.time()}
        write_atomic(self.root / JOB, json.dumps(job).encode())
        write_atomic(self.root / ".last-run", name.encode())
        return self.status(name)

    def stop(self) -> dict:
        """Ask the running job to stop (finish its step, save); asked again, or unanswered for the supervisor's
        timeout, the job is killed."""
        name = self.running()
        if name is None:
            return {**self.status(), "message": "no job is running"}
        asked = stop_requests(self.folder(name))
        write_atomic(self.folder(name) / STOP, str(asked + 1).encode())
        return {**self.status(name), "message": "stop asked: saving" if asked == 0 else "stop asked again: killing"}

    def wait(self, until, timeout: float, run: str | None = None, every: float = 0.25) -> dict:
        """Poll the status until `until(status)` holds; the last status, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while not until(status := self.status(run)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{status.get('run')}: still {status.get('state')!r} after {timeout:.0f} s")
            time.sleep(every)
        return status

    # ---- the folder -------------------------------------------------------------------------

    def check_space(self) -> None:
        used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and not p.is_symlink())
        if used >= self.max_bytes:
            raise ValueError(f"the runs folder holds {used / 1e9:.1f} GB, its cap is {self.max_bytes / 1e9:.1f} GB "
                             "(CYCLEGAN_RUNS_MAX_SIZE): delete runs first")

    def delete(self, name: str) -> None:
        folder = self.folder(name)
        with self.exclusive():  # not while a start or resume decides
            if not folder.is_dir():
                raise ValueError(f"no run {name!r}")
            if self.running() == name:
                raise ValueError(f"{name} is running: stop it first")
            shutil.rmtree(folder)

