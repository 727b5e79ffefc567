"""Training steps beside a naive loop, and what the data pipeline delivers alone (bench.py's sections
training and data)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.core import EPOCHS, STEPS_PER_EPOCH, photos, table, timed
from benchmarks.reference import naive_train_step, simulated_bf16
from cyclegan import ModelConfig
from cyclegan.data import UnpairedDataset
from cyclegan.training import Trainer, TrainConfig


def bench_training(device: torch.device, setups: list[tuple[int, int, int]], repeats: int) -> list[dict]:
    """The naive loop (float32, contiguous) against train_step with its defaults and, on CUDA, fp32
    and torch.compile beside the default bf16; on the CPU, where fp32 is the default, --amp bf16 where
    the CPU has it natively (emulated it is ~25x slower: 38 s a step at 128 px on a Zen 3, so left out)."""
    if device.type == "cuda":
        extra = {"train_step --amp none (fp32)": TrainConfig(amp="none"),
                 "train_step + torch.compile": TrainConfig(compile=True)}
    elif simulated_bf16(device):
        extra = {}
        print("(train_step --amp bf16 left out: this CPU has no native bf16)")
    else:
        extra = {"train_step --amp bf16": TrainConfig(amp="bf16")}
    row = table("Training, batch 1 (s/step min / median; images/s counts A and B; projection: 200 epochs of "
                "1334 steps):", ["config", "loop", "s/step", "images/s", "speed-up vs naive", "200 epochs"])
    rows = []
    for ngf, n_blocks, size in setups:
        model_config, g = ModelConfig(ngf=ngf, n_blocks=n_blocks), torch.Generator().manual_seed(0)
        batch = {d: torch.rand(1, 3, size, size, generator=g) * 2 - 1 for d in "AB"}
        naive = Trainer(TrainConfig(amp="none"), model_config, device)
        naive.model.to(memory_format=torch.contiguous_format)
        trainers = {name: Trainer(config, model_config, device)
                    for name, config in {"train_step (default)": TrainConfig(), **extra}.items()}
        variants = {"naive loop": lambda: naive_train_step(naive, batch),
                    **{name: (lambda t=t: t.train_step(batch)) for name, t in trainers.items()}}
        t = timed(variants, repeats, 2 if device.type == "cuda" else 1, device)
        for name, s in t.items():
            h = s["median"] * STEPS_PER_EPOCH * EPOCHS / 3600
            rows.append(r := {"config": f"ngf {ngf}, {n_blocks} blocks, {size} px", "loop": name, "step_s": s,
                              "images_per_s": 2 / s["median"], "speedup": t["naive loop"]["median"] / s["median"],
                              "projected_200_epochs_h": h})
            row(r["config"], name, f"{s['min']:.3f} / {s['median']:.3f}", f"{r['images_per_s']:.2f}",
                f"{r['speedup']:.2f}x", f"{h / 24:.1f} days" if h > 48 else f"{h:.1f} h")
    return rows


def bench_data_loading(data: Path, workers: list[int], batches: int) -> list[dict]:
    """Pairs/s the data pipeline (decode, resize to 286, crop 256, flip) delivers, without any model."""
    if not photos(data, "trainA"):
        return []
    dataset, rows = UnpairedDataset(data, "train", "resize_and_crop", 286, 256, True, 0), []
    for n in workers:
        it = iter(torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=True, num_workers=n))
        next(it), next(it)  # from the third batch on: the workers have started
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        rows.append({"workers": n, "pairs_per_s": batches / (time.perf_counter() - start)})
    print("\nData loading alone (horse2zebra, 286 -> 256 crops): "
          + ", ".join(f"{x['workers']} workers {x['pairs_per_s']:.0f} pairs/s" for x in rows))
    return rows
