"""Speed, memory and accuracy of cyclegan-kit on this machine, one table per section as it goes, and
benchmarks/results.json: generator latency in float32 and in translate()'s default precision, bf16's
8-bit PSNR against float32 on photos, the app end to end, a 4096x3072 photo through translate()
(benchmarks/peak_memory.py, in a fresh process), training steps beside a naive loop, data loading.

    python benchmarks/bench.py            # everything (~10 min on 2 idle CPU cores)
    python benchmarks/bench.py --quick    # fewer sizes, photos and repeats (~3 min)
    python benchmarks/bench.py --device cuda --only generator,training
    python benchmarks/bench.py --profile  # where a training step's time goes, against a plain loop

Timings are wall-clock, after warm-up, over interleaved repeats (a change in machine load hits all
variants alike): min and median; speed-ups are ratios of medians. Where the CPU emulates bf16 (~100x
slower than float32), bf16's error is measured by reference.py's Bf16Rounding, checked on one image.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# The sections, one module per family of measurements; what they share is in benchmarks/core.py.
from benchmarks.core import PREVIEW, machine_info, psnr  # noqa: E402
from benchmarks.reference import simulated_bf16  # noqa: E402
from benchmarks.sections.app import bench_app  # noqa: E402
from benchmarks.sections.inference import (bench_big_photo, bench_emulated_bf16, bench_generators,  # noqa: E402
                                           bench_precision_accuracy)
from benchmarks.sections.pace import bench_batches, pace  # noqa: E402
from benchmarks.sections.profiling import bench_profile, check_graphs  # noqa: E402
from benchmarks.sections.training import bench_data_loading, bench_training  # noqa: E402
from cyclegan.files import write_atomic  # noqa: E402

SECTIONS = ("generator", "accuracy", "app", "big", "training", "profile", "batches", "data")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with `sections`: the set of sections to run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes, photos and repeats (~3 min on 2 cores)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--data", type=Path, default=ROOT / "datasets" / "horse2zebra",
                        help="horse2zebra (trainA, testA); without it a synthetic image (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--profile", action="store_true",
                        help="only where a training step's time goes (the profile section; --only profile)")
    parser.add_argument("--tiny", action="store_true",
                        help="training: an 8-channel, 2-block model at 32 px, once (scripts/gpu_check.sh --dry-run)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    # Without --only: every section but batches (named, as gpu_check.sh's pace stage does)
    args.sections = set(args.only.split(",")) if args.only else set(SECTIONS) - {"batches"}
    if args.profile:
        args.sections = {"profile"}
    return args


def run_sections(args: argparse.Namespace, r: dict, save) -> None:
    """Each section asked for, in this order, into `r`; save() after each (and after each batch size): a run
    stopped by a time limit keeps what it measured."""
    device, quick, data, sections = torch.device(args.device), args.quick, args.data, args.sections
    if "generator" in sections:
        r["generator"] = bench_generators(device, data, {256: 3, 512: 2} if quick else {256: 10, 512: 5, 1024: 3})
        if simulated_bf16(device) and not quick and PREVIEW.is_dir():
            r["emulated_bf16"] = bench_emulated_bf16(data)
        save()
    if "accuracy" in sections and device.type == "cpu":
        r["accuracy"] = bench_precision_accuracy(data, 4 if quick else 12)
        save()
    if "app" in sections and device.type == "cpu":
        r["app"] = bench_app(data, 8 if quick else 20)
        save()
    if "big" in sections:
        preview = {"preview": str(PREVIEW)} if PREVIEW.is_dir() and not quick else {}
        r["big_photo"] = bench_big_photo(device, data, {**preview, "default": "default"})
        save()
    if "training" in sections:  # --quick: the paper's model at 256 px on CUDA, a smaller one on the CPU
        setups = [(8, 2, 32)] if args.tiny else [(32, 6, 128), (64, 9, 256)]
        if quick and not args.tiny:
            setups = setups[1:] if device.type == "cuda" else setups[:1]
        r["training"] = bench_training(device, setups, 1 if args.tiny else 2 if quick else 4)
        save()
    if "profile" in sections:
        if device.type == "cuda":
            r["graphs_check"] = check_graphs(device)
        checked = r.get("graphs_check", {})
        r["profile"] = bench_profile(device, 10 if args.tiny else 20 if quick else 40,
                                     graphs=tuple(layout for layout, c in checked.items() if c["ok"]),
                                     profiled=1 if args.tiny else 5)
        if device.type == "cuda":
            r["pace"] = pace(r["profile"])
        save()
    if "batches" in sections:
        r["batches"] = []
        for measured in bench_batches(device, [1, 2] if args.tiny else [1, 2, 4, 8, 16], args.tiny,
                                      r.get("pace", {}).get("fast_path", "Trainer")):
            r["batches"].append(measured)
            save()
    if "data" in sections:
        r["data_loading"] = bench_data_loading(data, [0, 2], 20 if quick else 100)
        save()


def check_targets(r: dict) -> dict[str, str]:
    """The issues' targets: what this run measured, and whether that meets them."""
    app = r.get("app") or {}
    amx = r.get("machine", {}).get("amx", False)  # issue 27: never slower than fp32; 1.6x where AMX runs bf16
    floor = 1.6 if amx else 0.97
    checks = [(f"{x['model']} {x['size']} px, default precision >= {floor}x fp32 at PSNR >= 45 dB",
               f"{x['default_precision']}: {x['speedup']:.2f}x, PSNR {psnr(x['auto_vs_fp32'])}",
               x["speedup"] >= floor and x["auto_vs_fp32"]["psnr_db"] >= 45)
              for x in r.get("generator", []) if x["size"] == 256]
    if r.get("pace", {}).get("paper_batch1_s_per_step"):  # issue 26, on CUDA
        p = r["pace"]
        checks += [("paper's model, batch 1: <= 0.020 s a step", f"{p['paper_batch1_s_per_step']:.4f} s",
                    p["paper_batch1_s_per_step"] <= 0.020),
                   ("previews' model, batch 1: >= 100 steps/s", f"{p['preview_batch1_steps_per_s']:.1f}",
                    p["preview_batch1_steps_per_s"] >= 100)]
    checks += [(f"host overhead per step >= 1.3x below the plain loop ({x['setup']})",  # issue 26
                f"{x['plain_over_this']:.2f}x", x["plain_over_this"] >= 1.3)
               for x in r.get("profile", []) if x["loop"] == "Trainer" and "width 4" in x["setup"]]
    # issue 27: what the app adds to the model (p50, one client) within 100 ms of the smallest Gradio
    # image app measured beside it, and 4 clients served at least as many requests/s as one
    checks += [(f"app {endpoint}: adds <= 100 ms more than the minimal Gradio app", f"{extra * 1000:.0f} ms",
                extra <= 0.100) for endpoint, extra in app.get("adds_minus_minimal_app_s", {}).items()]
    for endpoint, measured in (("/translate", app), ("/show", app.get("page") or {})):
        if measured.get("four_clients"):
            one, four = measured["one_client"]["throughput_per_s"], measured["four_clients"]["throughput_per_s"]
            checks.append((f"app {endpoint}: 4 clients >= 1 client in requests/s", f"{four:.2f} vs {one:.2f}",
                           four >= one))
    checks += [(f"4096x3072 peak memory <= 3 GB ({x['model']})", f"{x['peak_rss_gb']:.2f} GB, output "
                f"{x['output'][0]}x{x['output'][1]}", x["peak_rss_gb"] <= 3 and x["output"] == x["input"])
               for x in r.get("big_photo", [])]
    checks += [(f"training step >= 1.2x naive ({x['config']})", f"{x['speedup']:.2f}x", x["speedup"] >= 1.2)
               for x in r.get("training", []) if x["loop"] == "train_step (default)"]
    return {name: f"{text}: {'met' if ok else 'NOT met'}" for name, text, ok in checks}


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each row shows in a log file as it comes
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    r: dict = {"command": " ".join(["python benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])]),
               "quick": args.quick, "device": args.device, "machine": (m := machine_info())}
    print(f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), native bf16 {m['native_bf16']}, "
          f"torch {m['torch']}, {m['threads']} threads, load average {m['load_average_at_start'][0]:.2f} at start.")
    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        write_atomic(args.out, (json.dumps(r, indent=2) + "\n").encode())

    run_sections(args, r, save)
    r["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    r["seconds"] = time.perf_counter() - started
    r["targets"] = check_targets(r)
    targets = [f"- {k}: {v}" for k, v in r["targets"].items()]
    print(f"\nLoad average {r['load_average_at_end'][0]:.2f} at end.", *(["Targets:", *targets] if targets else []),
          sep="\n")
    save()
    print(f"\nwrote {args.out} ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
