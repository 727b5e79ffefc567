"""The Train tab's figures (issue: train from the browser), measured through the app's API as a user
meets them: the time from a zip's upload to the job's first step, the pace of a job started from the
app against the same recipe run by `python train.py` beside it, and /translate's latency while a job
trains against the idle app.

    python benchmarks/train_tab.py [--data ../shared/datasets/horse2zebra] [--images 100] [--out file.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.screenshot import serve_app  # noqa: E402


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def make_zip(data: Path, per_domain: int, out: Path) -> Path:
    """trainA/ and trainB/ (per_domain images each) and two test images each, one folder down."""
    with zipfile.ZipFile(out, "w") as zf:
        for folder, count in (("trainA", per_domain), ("trainB", per_domain), ("testA", 2), ("testB", 2)):
            for path in sorted((data / folder).iterdir())[:count]:
                zf.write(path, f"mine/{folder}/{path.name}")
    return out


def until(client, test, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while not test(status := client.predict(api_name="/train_status")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"status still {status['state']}")
        time.sleep(0.2)
    return status


def translate_p50(client, images: list[Path], requests: int) -> float:
    """Median seconds of /translate for 256 px images, the inputs varied."""
    from gradio_client import handle_file

    times = []
    for i in range(requests):
        start = time.perf_counter()
        client.predict(handle_file(str(images[i % len(images)])), "A2B", True, api_name="/translate")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def terminal_pace(command: str, run: Path, seconds: float) -> float:
    """Steps/s of the same recipe from `python train.py`, one thread, niced as the app's job, measured
    over `seconds` from its status.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["nice", "-n", "10", *command.split()], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (run / "status.json").exists() or json.loads((run / "status.json").read_text())["step"] < 5:
            time.sleep(0.2)
        first = json.loads((run / "status.json").read_text())
        time.sleep(seconds)
        last = json.loads((run / "status.json").read_text())
        return (last["step"] - first["step"]) / (last["updated"] - first["updated"])
    finally:
        proc.terminate()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "horse2zebra")
    parser.add_argument("--images", type=int, default=100, help="per domain: 100 makes the 200-image zip")
    parser.add_argument("--requests", type=int, default=20, help="/translate requests per condition")
    parser.add_argument("--seconds", type=float, default=60, help="pace measured over this long")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from gradio_client import Client, handle_file

    work = Path(tempfile.mkdtemp(prefix="train-tab-bench-"))
    archive = make_zip(args.data, args.images, work / "mine.zip")
    tests = sorted((args.data / "testA").iterdir())[:8]
    result = {"cpu": cpu_name(), "cores": os.cpu_count(),
              "load_before": os.getloadavg(), "zip_mb": round(archive.stat().st_size / 1e6, 1)}
    with serve_app(CYCLEGAN_TRAINING="1", CYCLEGAN_RUNS=str(work / "runs"), CYCLEGAN_MAX_SIDE="256") as url:
        client = Client(url, verbose=False)
        result["translate_p50_idle_s"] = translate_p50(client, tests, args.requests)
        start = time.perf_counter()
        status = client.predict(handle_file(str(archive)), "", "quick", True, 100_000, api_name="/train_start")
        result["start_call_s"] = time.perf_counter() - start
        status = until(client, lambda s: s["step"] >= 1 or s["state"] in ("failed", "stopped"))
        result["upload_to_first_step_s"] = time.perf_counter() - start
        result["data"] = status["data"]
        result["translate_p50_training_s"] = translate_p50(client, tests, args.requests)
        first = until(client, lambda s: s["steps_per_s"] is not None)
        time.sleep(args.seconds)
        last = client.predict(api_name="/train_status")
        result["app_job_steps_per_s"] = (last["step"] - first["step"]) / (last["updated"] - first["updated"])
        # the same recipe from a terminal, beside the app's job (one thread each, both niced)
        command = status["command"].replace(f"runs/{status['run']}", str(work / "runs" / status["run"]))
        command = command.replace(f"--output {work / 'runs' / status['run']}", f"--output {work / 'terminal'}")
        result["command"] = status["command"]
        result["train_py_steps_per_s"] = terminal_pace(command, work / "terminal", args.seconds)
        last = client.predict(api_name="/train_status")
        result["app_job_steps_per_s_beside_train_py"] = last["steps_per_s"]
        client.predict(api_name="/train_stop")
        until(client, lambda s: s["state"] in ("stopped", "failed"))
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
