"""Turn a training run into a bundled preview model: evaluate it on the test split, record how it
was trained, and write a float16 model folder (config.json with the metrics, model card).

    python scripts/export_preview.py runs/h2z-identity weights/horse2zebra-identity \
        --dataroot datasets/horse2zebra --command "python train.py ..." --command "python train.py --resume ..."
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cyclegan import CycleGAN  # noqa: E402
from cyclegan.data import list_images, split_validation  # noqa: E402
from cyclegan.evaluate import FEATURES, evaluate  # noqa: E402


def training_seconds(run: Path) -> float:
    """Training time from losses.csv: its clock restarts at each resume of runs made before the
    checkpoint kept the time, so the segments are added up (later runs have one segment)."""
    total, last = 0.0, 0.0
    with open(run / "losses.csv", newline="") as f:
        for row in csv.DictReader(f):
            s = float(row["seconds"])
            if s < last:
                total += last
            last = s
    return total + last


def scores(results: dict) -> dict:
    """FID, KID and cycle L1 of both directions of an evaluate() result, rounded, keyed by domain names."""
    metrics = {}
    for d in ("A2B", "B2A"):
        r = results[d]
        metrics.update({f"FID {r['domains']}": round(r["fid"], 2), f"KID {r['domains']}": round(r["kid"], 4),
                        f"cycle L1 {r['domains']}": round(r["cycle_l1"], 4),
                        f"reference FID {r['domains']} (untranslated)": round(r["reference_fid"], 2),
                        f"reference KID {r['domains']} (untranslated)": round(r["reference_kid"], 4)})
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory of train.py (with model/ and checkpoint.pt)")
    parser.add_argument("out", type=Path, help="model folder to write")
    parser.add_argument("--dataroot", required=True, help="dataset with testA/ and testB/")
    parser.add_argument("--command", action="append", default=[], help="a command the run was made with")
    parser.add_argument("--machine", default=f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU, "
                                             f"torch {torch.__version__}")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--val-count", type=int, default=0,
                        help="also score the N images per domain that `train.py --val-count N` holds out of trainA/B")
    parser.add_argument("--model", default="model", help="the run's model folder to export: model or best")
    args = parser.parse_args()

    model = CycleGAN.from_pretrained(args.run / args.model)
    metrics = scores(evaluate(model, args.dataroot, "both", args.size))
    if args.val_count:
        held = {s: split_validation(list_images(Path(args.dataroot) / f"train{s}"), args.val_count)[1] for s in "AB"}
        val = scores(evaluate(model, size=args.size, files=held))
        metrics.update({f"validation {k}": v for k, v in val.items() if not k.startswith("reference")})
    seconds = training_seconds(args.run)
    model.info["training"] = {**model.info.get("training", {}), "commands": args.command,
                              "machine": args.machine, "wall_time_hours": round(seconds / 3600, 2)}
    model.info["metrics"] = metrics
    model.info["evaluation"] = (f"`python -m cyclegan.evaluate --model {args.out} --dataroot <horse2zebra> "
                                f"--size {args.size}`: test split, {FEATURES}"
                                + (f"; 'validation' rows: the {args.val_count} images per domain that train.py "
                                   f"--val-count {args.val_count} holds out of trainA/trainB" if args.val_count else ""))
    model.save_pretrained(args.out, dtype="float16")
    print(json.dumps({"out": str(args.out), "metrics": metrics, "wall_time_hours": round(seconds / 3600, 2)}, indent=2))


if __name__ == "__main__":
    main()
