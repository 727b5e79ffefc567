"""The supervisor of one training job (`python -m cyclegan.jobs.supervisor RUN_FOLDER [options] -- TRAIN_FLAGS`),
started by control.Jobs in a process session of its own: it fetches and checks an official dataset,
runs `python -m cyclegan.train` niced, with its output in train.log, passes a Stop on to it as
SIGINT (the Ctrl-C path: finish the step, save) and kills it on a second Stop or a timeout, waits for
it, and writes the run's last word to status.json: its state, exit code or signal, and the log's last
lines. Only a run that said "finished" or "stopped" is one; any other end is "failed"."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..files import DownloadStopped, one_line
from ..runstatus import LOG, log_tail, read_status, write_status
from .control import JOB, process_start, read_request, stop_requests, write_request


def fetch_dataset(folder: Path, flags: list[str]) -> None:
    """--dataset NAME: downloaded and checked here, before the trainer starts, and its counts recorded."""
    from ..datasets import DATASETS_URL, download_dataset
    from .data import check_folder

    given = dict(zip(flags[::2], flags[1::2]))
    say(folder, "preparing", f"downloading {given['--dataset']}")
    data = download_dataset(given["--dataset"], given["--data-dir"], given.get("--dataset-url", DATASETS_URL),
                            stop=lambda: stop_requests(folder) > 0)
    report = check_folder(data, int(os.environ.get("CYCLEGAN_MAX_PIXELS", 40_000_000)), names=f"{data.name}/")
    write_request(folder, {**read_request(folder), "data": report.summary()})
    say(folder, "preparing", report.summary())


def say(folder: Path, state: str, message: str, **fields) -> None:
    status = read_status(folder) or {}
    status.update(state=state, message=message, log=log_tail(folder), updated=time.time(), **fields)
    write_status(folder, status)


def supervise(folder: Path, flags: list[str], stop_timeout: float) -> int:
    """Run the trainer to its end; its exit code."""
    with open(folder / LOG, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: python -m cyclegan.train\n".encode())
        log.flush()
        child = subprocess.Popen([sys.executable, "-m", "cyclegan.train", *flags], stdout=log, stderr=log,
                                 stdin=subprocess.DEVNULL, preexec_fn=os.setpgrp)
    asked, killed, first = 0, None, None
    while child.poll() is None:
        time.sleep(0.25)
        now = stop_requests(folder)
        if now > asked:
            asked = now
            if asked == 1:
                first = time.monotonic()
                child.send_signal(signal.SIGINT)
            elif killed is None:
                killed = "a second Stop"
        if first is not None and killed is None and time.monotonic() - first > stop_timeout:
            killed = f"no answer to Stop in {stop_timeout:.0f} s"
        if killed is not None and child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    last_word(folder, child.returncode, asked > 0, killed)
    return child.returncode


def last_word(folder: Path, code: int, asked: bool, killed: str | None) -> None:
    """The final status from how the trainer ended and what it said last."""
    status = read_status(folder) or {}
    ended = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    fields = {"exit_code": code, "steps_per_s": None, "eta_s": None, "updated": time.time()}
    saved = status.get("checkpoint_step")
    kept = f"the last save (step {saved}) stands" if saved else "no checkpoint was written"
    if killed is not None:
        state, message = "stopped", f"killed after {killed}; {kept}"
    elif status.get("state") in ("finished", "stopped") and code == 0:
        state, message = status["state"], status.get("message", "")
    elif asked and code in (0, 130, -signal.SIGINT):  # stopped before the loop began: nothing to save
        state, message = "stopped", f"stopped before the first step; {kept}"
    elif status.get("state") == "failed":  # the trainer said why
        state, message = "failed", f"{status.get('message')} ({ended}); {kept}"
    else:
        state, message = "failed", f"the training process ended with {ended}; {kept}"
    status.update(state=state, message=message, log=log_tail(folder), **fields)
    write_status(folder, status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cyclegan.jobs.supervisor", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--niceness", type=int, default=10)
    parser.add_argument("--stop-timeout", type=float, default=600)
    parser.add_argument("--message", default="starting", help="what status.json says while the trainer starts")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, flags = parser.parse_args(argv[:split]), argv[split + 1:]  # after "--": train.py's flags
    folder = args.folder.resolve()
    os.nice(args.niceness)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Stop comes as a file; the trainer gets SIGINT from here
    try:
        previous = read_status(folder) or {}
        write_status(folder, {"state": "preparing", "run": folder.name, "step": previous.get("step", 0),
                              "total_steps": previous.get("total_steps", read_request(folder).get("target", 0)),
                              "checkpoint_step": previous.get("checkpoint_step"), "message": args.message,
                              "log": log_tail(folder), "updated": time.time()})
        if "--dataset" in flags:
            fetch_dataset(folder, flags)
        if stop_requests(folder):
            last_word(folder, 0, True, None)
            return 0
        return supervise(folder, flags, args.stop_timeout)
    except DownloadStopped as e:  # a Stop during the download: Resume downloads the rest
        say(folder, "stopped", f"{one_line(e, 300)}; no checkpoint was written", exit_code=0)
        return 0
    except Exception as e:  # the data could not be fetched or checked, or the trainer not started
        with open(folder / LOG, "a") as log:
            log.write(f"error: {one_line(e)}\n")
        say(folder, "failed", one_line(e, 300), exit_code=None)
        return 1
    finally:
        release(folder)


def release(folder: Path) -> None:
    """The runs folder's job lock, if it is still this supervisor's."""
    path = folder.parent / JOB
    try:
        job = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if job.get("pid") == os.getpid() and job.get("start") == process_start(os.getpid()):
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
