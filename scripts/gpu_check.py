"""The Python half of scripts/gpu_check.sh: what the machine is (`info`), a training schedule that ends
in the minutes left (`plan`), the trained runs as float16 model folders (`export`), and everything
measured in one results.json (`report`, whose exit status says whether every stage did its work). It imports only
what the GPU machine has (torch, safetensors, Pillow, numpy); `info` checks that nothing the check
runs pulls in the app's or the Hub's packages."""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# What the GPU machine may lack: nothing gpu_check.sh runs may import these.
NOT_ON_THE_GPU_MACHINE = ("gradio", "gradio_client", "selenium", "huggingface_hub", "onnx", "onnxruntime",
                          "onnxscript")
# The modules gpu_check.sh runs, directly or through train.py, bench.py and the tests.
USED = ("cyclegan", "cyclegan.data", "cyclegan.datasets", "cyclegan.inference", "cyclegan.model", "cyclegan.runlog",
        "cyclegan.training", "cyclegan.training.graphs", "cyclegan.losses", "train", "benchmarks.bench", "scripts.make_grid", "scripts.pack_dataset",
        "tests.test_cuda")


def versions() -> dict:
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    for name in ("numpy", "PIL", "safetensors", "scipy", "matplotlib", "tqdm", "pytest", "triton"):
        try:
            info[name] = importlib.import_module(name).__version__
        except Exception:  # missing, or a version-less build: recorded as absent
            info[name] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update({"gpu": p.name, "gpus": torch.cuda.device_count(), "capability": f"{p.major}.{p.minor}",
                     "gpu_memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count,
                     "bf16": torch.cuda.is_bf16_supported(), "cudnn": torch.backends.cudnn.version()})
    return info


def info(args: argparse.Namespace) -> None:
    data = versions()
    for name in USED:
        importlib.import_module(name)
    data["imports_outside_the_machine"] = sorted({m.split(".")[0] for m in sys.modules} & set(NOT_ON_THE_GPU_MACHINE))
    print(json.dumps(data, indent=2))
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    if data["imports_outside_the_machine"]:
        sys.exit(f"error: importing {', '.join(USED)} pulls in {', '.join(data['imports_outside_the_machine'])}")


def export(args: argparse.Namespace) -> None:
    """Each run's model/ as a float16 folder `out/<run name>` (what comes back), with where it was
    trained, and its moving average (--ema-decay, from checkpoint.pt) as `out/<run name>-ema`: the
    GPU machine cannot measure FID (the Inception weights do not travel), so both come back to be
    chosen on the validation split. Then one grid of all of them on the dataset's test images."""
    from cyclegan import CycleGAN
    from cyclegan.training import load_checkpoint
    from scripts import make_grid

    machine = versions()
    folders = []
    for run in args.runs:
        run = Path(run)
        model = CycleGAN.from_pretrained(run / "model")
        model.info["gpu_check"] = {"machine": machine.get("gpu", f"{machine['cpus']}-core CPU"),
                                   "torch": machine["torch"], "cuda": machine["cuda"],
                                   "command": "scripts/gpu_check.sh" + (" --dry-run" if args.dry_run else "")}
        folders.append(model.save_pretrained(Path(args.out) / run.name, dtype="float16"))
        print(f"{run / 'model'} -> {folders[-1]} ({model.info.get('steps')} steps)")
        state = load_checkpoint(run)
        if "G_AB_ema" in state and state["step"] == model.info.get("steps"):
            model.G_AB.load_state_dict(state["G_AB_ema"])
            model.G_BA.load_state_dict(state["G_BA_ema"])
            model.info["weights"] = f"moving average of the generators (decay {model.info['training']['ema_decay']})"
            folders.append(model.save_pretrained(Path(args.out) / f"{run.name}-ema", dtype="float16"))
            print(f"{run / 'checkpoint.pt'} (moving average) -> {folders[-1]}")
    make_grid.main([*map(str, folders), "--dataroot", args.dataroot, "-n", "4", "--size", str(args.size),
                    "--out", args.grid])


def training_summary(run: Path) -> dict:
    """Steps, speed and last losses of a train.py run, from its model folder, losses.csv and log."""
    summary: dict = {"run": run.name}
    config = run / "model" / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        summary.update({k: c.get(k) for k in ("steps", "epochs", "train_seconds", "image_size", "lambda_identity",
                                              "ngf", "ndf", "n_blocks")})
        if c.get("steps") and c.get("train_seconds"):
            summary["steps_per_s"] = round(c["steps"] / c["train_seconds"], 2)
    losses = run / "losses.csv"
    if losses.is_file():
        with open(losses, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("G_AB")]
        if rows:
            summary["last_losses"] = {k: float(v) for k, v in rows[-1].items() if v and k not in ("epoch", "seconds")}
            seconds = [(int(r["step"]), float(r["seconds"])) for r in rows]
            if len(seconds) >= 3:  # the rate after the first window, which includes start-up (and compilation)
                (s0, t0), (s1, t1) = seconds[1], seconds[-1]
                summary["steps_per_s_after_start"] = round((s1 - s0) / max(t1 - t0, 1e-9), 2)
    log = run.parent.parent / "logs" / f"train-{run.name}.log"
    if log.is_file():
        found = re.search(r"training on (\S+) in ([^;]+);", log.read_text(errors="replace"))
        if found:
            summary["device"], summary["precision"] = found.groups()
    return summary


def pytest_summary(log: Path) -> dict:
    if not log.is_file():
        return {}
    text = log.read_text(errors="replace")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|xfailed)\b", text)}
    failed = re.findall(r"^FAILED (\S+)", text, re.M)
    return {"counts": counts, "failed": failed}


def plan(args: argparse.Namespace) -> None:
    """train.py's --epochs and --decay-epochs for a schedule that ends at lr 0 within `seconds`, from the
    steps/s that bench.py's batches section measured for the previews' model at this batch size (one
    run alone; `--share` of that rate each when runs share the GPU: by default 0.6 for the eager step,
    which waits on the host, and 0.45 with CUDA graphs, which split the GPU itself), less `--startup`
    seconds; then the flags of the fastest variant of the step that bench.py's profile section timed
    (its "pace"), less --cuda-graphs where that batch size's capture failed."""
    data = json.loads(Path(args.bench).read_text()) if Path(args.bench).is_file() else {}
    pace = data.get("pace") or {}
    flags = pace.get("train_flags", [])
    measured = [r for r in data.get("batches", [])
                if r["batch_size"] == args.batch_size and r["model"] in ("previews' model", "width 4")]
    if measured and "--cuda-graphs" in flags and not measured[0].get("graphed", True):
        flags = [f for f in flags if f != "--cuda-graphs"]
        print(f"(plan: batch {args.batch_size} could not be captured in the sweep: no --cuda-graphs)", file=sys.stderr)
    share = args.share or (0.45 if "--cuda-graphs" in flags else 0.6)
    if measured:
        rate = measured[0]["steps_per_s"] * share
    else:
        rate = args.fallback_steps_per_s
        print(f"(no measured rate for batch {args.batch_size} in {args.bench}: assuming {rate} steps/s)", file=sys.stderr)
    images = max(len([f for f in (Path(args.dataroot) / d).iterdir() if f.is_file()]) for d in ("trainA", "trainB"))
    steps_per_epoch = max(1, images // args.batch_size)
    epochs = max(2, int(max(0.0, args.seconds - args.startup) * rate // steps_per_epoch))
    print(f"(plan: {rate:.1f} steps/s, {steps_per_epoch} steps an epoch, {args.seconds:.0f} s: {epochs} epochs)",
          file=sys.stderr)
    print(f"(plan: the step as {pace.get('fast_path', 'Trainer')}: {' '.join(flags) or 'the defaults'})", file=sys.stderr)
    print(" ".join([f"--epochs {epochs // 2} --decay-epochs {epochs - epochs // 2}", *flags]))


def failed_steps(steps: list[dict], work: Path) -> list[str]:
    """The stages that did not do their work: a non-zero status, no time left, or cut off by their
    time limit; a training run stopped by its limit is fine once it saved its model."""
    failed = []
    for s in steps:
        if s["rc"] in (0, -2):
            continue
        run = work / "runs" / s["step"].removeprefix("train-")
        if s["step"].startswith("train-") and s["rc"] == 124 and (run / "model" / "config.json").is_file():
            continue
        failed.append(f"{s['step']} ({s['status']})")
    return failed


def report(args: argparse.Namespace) -> None:
    work = Path(args.work)
    steps = []
    with open(work / "steps.tsv") as f:
        for line in f:
            name, rc, seconds, limit = line.rstrip("\n").split("\t")
            steps.append({"step": name, "rc": int(rc), "seconds": int(seconds), "limit_s": int(limit),
                          "status": {"0": "ok", "124": "stopped at its time limit", "-1": "skipped: no time left",
                                     "-2": "skipped: GPU_CHECK_SKIP"}
                          .get(rc, "failed")})

    def load(path: Path):
        return json.loads(path.read_text()) if path.is_file() else None

    results = {
        "dry_run": args.dry_run,
        "machine": load(work / "info.json"),
        "steps": steps,
        "tests": pytest_summary(work / "logs" / "tests.log"),
        "pace": (load(work / "pace.json") or {}).get("pace"),
        "pace_bench": load(work / "pace.json"),
        "bench": load(work / "bench.json"),
        "bench_cpu": load(work / "logs" / "bench-cpu.json"),
        "dataset": load(Path(args.dataset, "packed.json")) if args.dataset else None,
        "training": [training_summary(run) for run in sorted((work / "runs").glob("*")) if run.is_dir()],
        "returned": sorted(p.name for p in Path(args.out).iterdir()) if Path(args.out).is_dir() else [],
        "fid": "measured back on the CPU: see docs/gpu.md and docs/results.md (python -m cyclegan.evaluate)",
    }
    results["failed"] = failed_steps(steps, work)
    Path(args.out, "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for s in steps:
        print(f"{s['step']:>17}: {s['status']} (rc {s['rc']}, {s['seconds']} s of {s['limit_s']})")
    for t in results["training"]:
        rate = t.get("steps_per_s_after_start", t.get("steps_per_s"))
        print(f"{t['run']:>12}: {t.get('steps')} steps in {t.get('train_seconds')} s"
              f"{f' ({rate} steps/s)' if rate else ''} on {t.get('device')} in {t.get('precision')}")
    if results["pace"]:
        print(f"pace: {json.dumps(results['pace'])}")
    if results["failed"]:
        sys.exit(f"failed: {', '.join(results['failed'])}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions and the GPU, as JSON")
    p.add_argument("--out", required=True)
    p.set_defaults(run=info)
    p = sub.add_parser("export", help="runs' model/ folders as float16 folders")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--grid", required=True, help="image of every model on the test images")
    p.add_argument("--dataroot", required=True, help="dataset with testA/ and testB/")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(run=export)
    p = sub.add_parser("plan", help="--epochs/--decay-epochs of a schedule that ends within SECONDS")
    p.add_argument("--bench", required=True, help="bench.py's JSON with the batches section")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--dataroot", required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--share", type=float, help="each run's share of the measured rate (default 0.6; 0.45 with "
                   "CUDA graphs)")
    p.add_argument("--startup", type=float, default=60, help="seconds before the first step")
    p.add_argument("--fallback-steps-per-s", type=float, default=6.0,
                   help="each run's rate where none was measured (two runs at batch 4 did 12 on an H100 before)")
    p.set_defaults(run=plan)
    p = sub.add_parser("report", help="results.json from a gpu_check work folder; exits 1 if a stage failed")
    p.add_argument("work")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default="", help="the unpacked dataset (its packed.json goes into the results)")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(run=report)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
