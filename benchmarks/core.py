"""What every benchmark here shares: interleaved timing and its statistics, the markdown tables printed as
a run goes, the 8-bit comparison of two outputs, the machine's description and the photos measured on."""
from __future__ import annotations

import datetime
import math
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.peak_memory import photo
from cyclegan.inference import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parent.parent
PREVIEW = ROOT / "weights" / "horse2zebra-identity"
STEPS_PER_EPOCH, EPOCHS = 1334, 200  # horse2zebra: 1334 trainA images at batch 1, 100 + 100 epochs


def stats(values: list[float]) -> dict:
    s = sorted(values)
    return {"min": s[0], "median": statistics.median(s), "p95": s[round(0.95 * (len(s) - 1))], "n": len(s)}


def timed(variants: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, dict]:
    """Run each callable `warmup` times, then `repeats` rounds of all of them in turn; stats() of each."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for fn in [fn for fn in variants.values() for _ in range(warmup)]:
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: stats(t) for name, t in times.items()}


def table(title: str, columns: list[str]):
    """Prints a report section's title and markdown table header; returns a function that prints a row."""
    print(f"\n{title}\n\n| {' | '.join(columns)} |\n|{'---|' * len(columns)}")
    return lambda *cells: print("| " + " | ".join(map(str, cells)) + " |")


def ms(s: dict, *keys: str) -> str:
    """Milliseconds of the `keys` of a stats() dict (default min and median), joined by " / "."""
    return " / ".join(f"{s[k] * 1000:.0f}" for k in keys or ("min", "median"))


def compare_8bit(y: torch.Tensor, ref: torch.Tensor) -> dict:
    """8-bit PSNR (dB; inf when identical), largest difference in levels, share of pixels within 1 level."""
    y8, ref8 = (t.float().clamp(-1, 1).add(1).mul(127.5).round() for t in (y, ref))  # as to_image() writes
    d = (y8 - ref8).abs()
    mse = d.pow(2).mean().item()
    return {"psnr_db": float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse),
            "max_levels": int(d.max().item()), "within_1_level": (d <= 1).float().mean().item()}


def psnr(c: dict) -> str:
    """A compare_8bit() result as a table cell: PSNR (dB) / largest difference (levels)."""
    return f"{'identical' if c['psnr_db'] == float('inf') else format(c['psnr_db'], '.1f')} / {c['max_levels']}"


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu, flags = (re.search(rf"^{key}\s*:(.*)$", cpuinfo, re.M) for key in ("model name", "flags"))
    flags = set(flags.group(1).split()) if flags else set()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpu": cpu.group(1).strip() if cpu else platform.machine(), "cores": os.cpu_count(),
            "simd": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "native_bf16": cpu_has_native_bf16(), "amx": "amx_bf16" in flags, "git_commit": commit.stdout.strip(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            **({"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {})}


def photos(data: Path, split: str = "testA") -> list[Path]:
    return sorted((data / split).glob("*.jpg"))


def sample_photo(data: Path, width: int, height: int) -> Image.Image:
    """The first test photo resized, or a synthetic image where there is none."""
    return photo(width, height, next(iter(photos(data)), None))
