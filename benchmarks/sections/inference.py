"""Inference as translate() runs it: the generator's latency in float32 and in the default precision, what
emulated bf16 costs, bf16's 8-bit PSNR against float32 on photos, and a 4096x3072 photo's peak memory
(bench.py's sections generator, accuracy and big)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from benchmarks.core import PREVIEW, ROOT, compare_8bit, ms, photos, psnr, sample_photo, table, timed
from benchmarks.reference import bf16_output, simulated_bf16
from cyclegan import CycleGAN, ModelConfig
from cyclegan.data import load_rgb, to_tensor
from cyclegan.inference import autocast_dtype, cpu_precision, run_any_size

PREVIEWS = {"preview, identity": PREVIEW, "preview, no identity": ROOT / "weights" / "horse2zebra-no-identity"}
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cyclegan-kit"


def trained_briefly(data: Path, steps: int = 150, size: int = 64, batch: int = 2) -> CycleGAN:
    """A default-size model (ngf 64, 9 blocks) whose G_AB was taught for `steps` Adam steps to
    reproduce the bundled preview's G_AB on random crops of training photos: trained weights'
    statistics (random weights exaggerate bf16's error) in a few minutes. Cached after the first run."""
    cache = CACHE / f"bench-default-distilled-{steps}"
    if (cache / "model.safetensors").is_file():
        return CycleGAN.from_pretrained(cache)
    model, files = CycleGAN(ModelConfig(domain_A="horse", domain_B="zebra")), photos(data, "trainA")
    model.init_weights(seed=0)
    if not files or not PREVIEW.is_dir():
        return model.eval()
    teacher, g = CycleGAN.from_pretrained(PREVIEW).G_AB.requires_grad_(False), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.G_AB.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for step in range(steps):
        picks = torch.randint(len(files), (batch,), generator=g).tolist()
        x = torch.stack([to_tensor(load_rgb(files[i]).resize((size * 2, size * 2), Image.BICUBIC)) for i in picks])
        top, left = torch.randint(size, (2,), generator=g).tolist()
        x = x[..., top:top + size, left:left + size]
        loss = (model.G_AB(x) - teacher(x)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"    distilling the default-size generator: step {step + 1}/{steps}, L1 {loss.item():.3f}")
    model.info = {"trained": f"{steps} steps distilling {PREVIEW.name}'s G_AB at {size} px (benchmarks/bench.py)"}
    model.save_pretrained(cache)
    return model.eval()


def generators(data: Path, both_previews: bool) -> dict[str, torch.nn.Module]:
    """G_AB of the bundled previews (the one without identity loss only if asked) and of trained_briefly()."""
    out = {name: CycleGAN.from_pretrained(path).G_AB for name, path in PREVIEWS.items()
           if path.is_dir() and (both_previews or "no identity" not in name)}
    return {**out, "default (ngf 64, 9 blocks, trained briefly)": trained_briefly(data).G_AB}


def bench_generators(device: torch.device, data: Path, repeats: dict[int, int]) -> list[dict]:
    """One image through a generator as translate() runs it (run_any_size, one pass): float32 against
    the precision "auto" picks here (on the CPU by timing both at 128 px: the choice and its timings
    are printed), with the 8-bit PSNR between them and of bf16 against float32."""
    nets = {label: G.to(device) for label, G in generators(data, both_previews=False).items()}
    row = table("Generator forward as translate() runs it, one image (ms, min / median); 8-bit PSNR against "
                "fp32 (dB) / largest difference in levels of 255:",
                ["model", "size", "fp32", "default precision", "default", "speed-up", "default vs fp32",
                 "bf16 vs fp32" + (" (simulated)" if simulated_bf16(device) else "")])
    rows = []
    for label, G in nets.items():
        choice = cpu_precision(G) if device.type == "cpu" else None
        if choice is not None:
            print(f"(precision auto for {label}: {choice})")
        default = autocast_dtype("auto", device, G)
        auto = "fp32" if default is None else "auto"  # where "auto" is float32 it is the same path, timed once
        precision = str(default or torch.float32).split(".")[-1]
        for size, n in repeats.items():
            x = to_tensor(sample_photo(data, size, size)).unsqueeze(0).to(device)
            run = {p: (lambda p=p: run_any_size(G, x, max_side=None, precision=p)) for p in ("fp32", auto)}
            t, ref = timed(run, n, 1, device), run["fp32"]()
            rows.append(r := {"model": label, "size": size, "default_precision": precision,
                              "auto_choice": None if choice is None else {"precision": choice.name,
                                                                          "fp32_ms": choice.fp32_ms,
                                                                          "bf16_ms": choice.bf16_ms},
                              "fp32_s": t["fp32"], "auto_s": t[auto], "speedup": t["fp32"]["median"] / t[auto]["median"],
                              "auto_vs_fp32": compare_8bit(run[auto](), ref),
                              "bf16_vs_fp32": compare_8bit(bf16_output(G, x), ref)})
            row(label, size, ms(t["fp32"]), precision, ms(t[auto]), f"{r['speedup']:.2f}x",
                psnr(r["auto_vs_fp32"]), psnr(r["bf16_vs_fp32"]))
    return rows


def bench_emulated_bf16(data: Path, size: int = 128) -> dict:
    """What precision="bf16" costs where the CPU emulates it: the preview model, one image."""
    G, x = CycleGAN.from_pretrained(PREVIEW).G_AB, to_tensor(sample_photo(data, size, size)).unsqueeze(0)
    t = timed({p: (lambda p=p: run_any_size(G, x, precision=p)) for p in ("fp32", "bf16")}, 1, 1, torch.device("cpu"))
    slowdown = t["bf16"]["median"] / t["fp32"]["median"]
    print(f"\nprecision='bf16' on this CPU (emulated), preview model at {size} px: {t['bf16']['median']:.2f} s "
          f"against {ms(t['fp32'], 'median')} ms in fp32 ({slowdown:.0f}x slower).")
    return {"size": size, "fp32_s": t["fp32"], "bf16_s": t["bf16"], "slowdown": slowdown}


def bench_precision_accuracy(data: Path, n_photos: int, size: int = 256) -> dict:
    """bf16 against float32 on test photos (8-bit output), for every model; and the simulation
    against the real bf16 path on one small image, where the CPU emulates bf16."""
    files = photos(data)[:n_photos]
    if not files:
        return {}
    out: dict = {"size": size, "photos": len(files), "simulated": simulated_bf16(torch.device("cpu")), "models": []}
    nets = generators(data, both_previews=n_photos >= 12)
    row = table(f"bf16 ({'simulated by Bf16Rounding' if out['simulated'] else 'autocast'}) against fp32 on "
                f"{len(files)} test photos at {size} px, 8-bit output:", ["model", "PSNR min / median / max (dB)",
                "largest difference (levels)", "pixels within 1 level (worst photo)"])
    xs = [to_tensor(load_rgb(f).resize((size, size), Image.BICUBIC)).unsqueeze(0) for f in files]
    for label, G in nets.items():
        each = [compare_8bit(bf16_output(G, x), run_any_size(G, x, precision="fp32")) for x in xs]
        db = [c["psnr_db"] for c in each]
        out["models"].append(m := {"model": label, "psnr_min_db": min(db), "psnr_median_db": statistics.median(db),
                                   "psnr_max_db": max(db), "max_levels": max(c["max_levels"] for c in each),
                                   "within_1_level_min": min(c["within_1_level"] for c in each)})
        row(label, f"{min(db):.1f} / {m['psnr_median_db']:.1f} / {max(db):.1f}", m["max_levels"],
            f"{m['within_1_level_min'] * 100:.1f}%")
    if out["simulated"] and PREVIEW.is_dir():  # the simulation against the real (emulated, slow) bf16 path
        G = CycleGAN.from_pretrained(PREVIEW).G_AB
        x = to_tensor(load_rgb(files[0]).resize((96, 96), Image.BICUBIC)).unsqueeze(0)
        ref, real = (run_any_size(G, x, precision=p) for p in ("fp32", "bf16"))
        c = out["check_96px"] = {"real_bf16_psnr_db": compare_8bit(real, ref)["psnr_db"],
                                 "simulated_psnr_db": compare_8bit(bf16_output(G, x), ref)["psnr_db"]}
        print(f"\nThe simulation against the real (emulated) bf16 path, preview model, one photo at 96 px: PSNR "
              f"against fp32 {c['simulated_psnr_db']:.1f} dB simulated, {c['real_bf16_psnr_db']:.1f} dB real.")
    return out


def bench_big_photo(device: torch.device, data: Path, models: dict[str, str], size: str = "4096x3072") -> list[dict]:
    """benchmarks/peak_memory.py per model, in a fresh process so that its peak is the translation's alone."""
    row = table(f"A {size} photo through CycleGAN.translate(photo) with its defaults, fresh process:",
                ["model", "seconds", "peak RSS (GB)", "RSS before translate (GB)", "output size"])
    rows = []
    for name, model in models.items():
        command = [sys.executable, str(ROOT / "benchmarks" / "peak_memory.py"), model, "--size", size,
                   "--device", device.type, *(["--photo", str(photos(data)[0])] if photos(data) else [])]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        rows.append(r := {**json.loads(done.stdout.strip().splitlines()[-1]), "model": name})
        row(name, f"{r['seconds']:.1f}", f"{r['peak_rss_gb']:.2f}", f"{r['rss_before_translate_gb']:.2f}",
            "x".join(map(str, r["output"])))
    return rows
