"""The pace of training on the GPU: the fastest variant of the step from the profile section (the fast
path gpu_check.sh trains with), and the batch-size sweep in that variant (bench.py's sections profile on
CUDA, and batches)."""
from __future__ import annotations

import math
from typing import Iterator

import torch

from benchmarks.core import EPOCHS, STEPS_PER_EPOCH, table, timed
from benchmarks.sections.profiling import FAST_PATHS, train_config
from cyclegan import ModelConfig
from cyclegan.training import Trainer


def pace(profile: list[dict]) -> dict:
    """Issue 26's targets from the profile section on CUDA: the paper's model s/step and the previews'
    steps/s at batch 1, for the fast path (the FAST_PATHS variant with the smallest sum of both
    models' times relative to plain Trainer's) and for the plain loop beside it, with every variant's."""
    def median_s(setup: str, loop: str) -> float | None:
        found = [r["wall_ms"]["median"] / 1000 for r in profile if r["setup"].startswith(setup) and r["loop"] == loop]
        return found[0] if found else None

    def figures(loop: str) -> dict:
        return {"paper_batch1_s_per_step": median_s("paper", loop),
                "preview_batch1_steps_per_s": 1 / median_s("previews", loop)}

    measured = [label for label in FAST_PATHS if median_s("paper", label) and median_s("previews", label)]
    fast = min(measured, key=lambda label: sum(median_s(m, label) / median_s(m, "Trainer")
                                               for m in ("paper", "previews")))
    return {**figures(fast), "fast_path": fast, "train_flags": train_flags(fast),
            "cuda_graphs": FAST_PATHS[fast].get("cuda_graphs", False),
            "plain": figures("plain loop (reference.PlainLoop)"),
            "variants": {label: figures(label) for label in measured}}


def train_flags(label: str) -> list[str]:
    """train.py's flags for a FAST_PATHS variant."""
    fields = FAST_PATHS[label]
    return ((["--cuda-graphs"] if fields.get("cuda_graphs") else [])
            + (["--memory-format", fields["memory_format"]] if "memory_format" in fields else []))


def bench_batches(device: torch.device, sizes: list[int], tiny: bool = False, path: str = "Trainer") -> Iterator[dict]:
    """Trainer at each batch size for both model sizes at 256 px (--tiny: a width-4 model at 32 px), as
    the FAST_PATHS variant `path` (on CUDA the one pace() chose: what gpu_check.sh then trains with):
    steps/s, images/s (A and B), seconds per horse2zebra epoch (1334 A images), peak device memory and
    the 200-epoch projection, a row at a time (the caller saves each: gpu_check's time limit may cut the
    sweep). The authors advise batch 1; a larger one must win on validation FID at equal wall time
    before it becomes a default."""
    setups = {"previews' model": ModelConfig(ngf=32, n_blocks=6), "paper's model": ModelConfig()}
    size = 256
    if tiny:
        setups, size = {"width 4": ModelConfig(ngf=4, ndf=4, n_blocks=2, n_layers=2)}, 32
    row = table(f"Training at each batch size as {path}, {size} px, the default precision (per step median; "
                "peak device memory; projection: 200 epochs of 1334 A images):",
                ["model", "batch", "steps/s", "images/s", "s/epoch", "peak GiB", "200 epochs"])
    for name, model_config in setups.items():
        for batch_size in sizes:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            g = torch.Generator().manual_seed(0)
            batch = {d: (torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1).to(device) for d in "AB"}
            try:
                config = train_config(path, batch_size=batch_size)
                trainer = Trainer(config, model_config, device)
                for _ in range(-(-config.pool_size // batch_size) if config.cuda_graphs else 0):  # fill the pools
                    trainer.train_step(batch)
                t = timed({"step": lambda t=trainer: t.train_step(batch)}, 5 if tiny else 20, 3, device)["step"]
            except torch.OutOfMemoryError:
                print(f"| {name} | {batch_size} | out of memory |")
                break
            per_epoch = math.ceil(STEPS_PER_EPOCH / batch_size) * t["median"]
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            if config.cuda_graphs and trainer.graph is None:  # the capture failed (e.g. out of memory): eager
                print(f"| {name} | {batch_size} | the capture failed: timed without CUDA graphs |")
            r = {"model": name, "path": path, "graphed": trainer.graph is not None, "batch_size": batch_size,
                 "step_s": t, "steps_per_s": 1 / t["median"], "images_per_s": 2 * batch_size / t["median"],
                 "epoch_s": per_epoch, "peak_gib": peak, "projected_200_epochs_h": per_epoch * EPOCHS / 3600}
            row(name, batch_size, f"{r['steps_per_s']:.1f}", f"{r['images_per_s']:.0f}", f"{per_epoch:.0f}",
                "-" if peak is None else f"{peak:.1f}", f"{r['projected_200_epochs_h']:.1f} h")
            del trainer
            yield r
