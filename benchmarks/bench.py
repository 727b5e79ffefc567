"""Speed, memory and accuracy of cyclegan-kit on this machine: generator latency in float32 and in
the precision translate() picks by default, the 8-bit PSNR of bf16 against float32, the app end to
end, a 4096x3072 photo through translate() with its defaults, and training steps (a naive loop
beside Trainer.train_step). Prints tables and writes benchmarks/results.json.

    python benchmarks/bench.py            # everything (~10 min on 2 idle CPU cores)
    python benchmarks/bench.py --quick    # fewer sizes, photos and repeats (~3 min)
    python benchmarks/bench.py --device cuda

Every timing is wall-clock, after warm-up, over interleaved repeats (so that a change in machine
load hits all variants alike), reported as min and median; speed-ups are ratios of medians from
the same run. Where the CPU has no native bf16, bf16 runs through PyTorch's emulation (some 100x
slower than float32), so its error is measured by rounding float32 to bf16 where autocast would
(Bf16Rounding, checked against the real bf16 path on one small image in the same run).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_map  # noqa: E402

from cyclegan import CycleGAN, ModelConfig  # noqa: E402
from cyclegan.model import autocast_dtype, cpu_has_native_bf16, run_any_size  # noqa: E402
from cyclegan.data import load_rgb, to_tensor  # noqa: E402
from cyclegan.losses import adversarial_loss, cycle_loss, discriminator_loss, identity_loss  # noqa: E402
from cyclegan.training import Trainer, TrainConfig  # noqa: E402

PREVIEW = ROOT / "weights" / "horse2zebra-identity"
PREVIEWS = {"preview, identity": PREVIEW, "preview, no identity": ROOT / "weights" / "horse2zebra-no-identity"}
PHOTOS = [ROOT / "datasets" / "horse2zebra" / "testA", ROOT.parent / "shared" / "datasets" / "horse2zebra" / "testA"]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cyclegan-kit"
STEPS_PER_EPOCH, EPOCHS = 1334, 200  # horse2zebra: 1334 trainA images at batch 1, 100 + 100 epochs


# ---- measuring ---------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(variants: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, dict]:
    """Run each callable `warmup` times, then `repeats` rounds of all of them in turn."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: stats(t) for name, t in times.items()}


def stats(values: list[float]) -> dict:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"min": ordered[0], "median": statistics.median(ordered), "p95": p95, "n": len(ordered)}


def machine_info() -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "simd": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(), "git_commit": commit,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def photo_files(folder_name: str = "testA") -> list[Path]:
    for folder in PHOTOS:
        folder = folder.parent / folder_name
        files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
        if files:
            return files
    return []


def photo(width: int, height: int) -> Image.Image:
    """A real horse photo when the data set is at hand (resized), else a smooth synthetic image."""
    files = photo_files()
    if files:
        return Image.open(files[0]).convert("RGB").resize((width, height), Image.BICUBIC)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    rgb = torch.stack([x, y, (x + y) / 2]) * 200 + torch.rand(3, height, width, generator=torch.Generator().manual_seed(0)) * 55
    return Image.fromarray(rgb.permute(1, 2, 0).byte().numpy())


def trained_briefly(steps: int = 150, size: int = 64, batch: int = 2) -> CycleGAN:
    """A default-size model (ngf 64, 9 blocks) whose G_AB was taught for `steps` Adam steps to
    reproduce the bundled preview's G_AB on random crops of training photos: trained weights'
    statistics (random weights exaggerate bf16's error) in a few minutes. Cached after the first run."""
    model = CycleGAN(ModelConfig(domain_A="horse", domain_B="zebra")).init_weights(seed=0)
    cache = CACHE / f"bench-default-distilled-{steps}"
    if (cache / "model.safetensors").is_file():
        return CycleGAN.from_pretrained(cache)
    teacher, files = CycleGAN.from_pretrained(PREVIEW).G_AB, photo_files("trainA")
    if not files:
        return model.eval()
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.G_AB.parameters(), lr=2e-4, betas=(0.5, 0.999))
    model.train()
    for step in range(steps):
        picks = torch.randint(len(files), (batch,), generator=g).tolist()
        x = torch.stack([to_tensor(load_rgb(files[i]).resize((size * 2, size * 2), Image.BICUBIC))
                         for i in picks])
        top, left = torch.randint(size, (2,), generator=g).tolist()
        x = x[..., top:top + size, left:left + size]
        with torch.no_grad():
            target = teacher(x)
        loss = (model.G_AB(x) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"    distilling the default-size generator: step {step + 1}/{steps}, L1 {loss.item():.3f}", flush=True)
    model.info = {"trained": f"{steps} steps distilling {PREVIEW.name}'s G_AB at {size} px (benchmarks/bench.py)"}
    model.save_pretrained(cache)
    return model.eval()


def models(quick: bool) -> dict[str, CycleGAN]:
    out = {name: CycleGAN.from_pretrained(path) for name, path in PREVIEWS.items() if path.is_dir()}
    if quick:
        out.pop("preview, no identity", None)
    out["default (ngf 64, 9 blocks, trained briefly)"] = trained_briefly()
    return out


# ---- precision --------------------------------------------------------------------------------------

def _round_bf16(t):
    return t.bfloat16().float() if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t


class Bf16Rounding(TorchDispatchMode):
    """bf16 autocast's arithmetic at float32 speed, for CPUs that emulate bf16: convolutions take
    inputs, weights and bias rounded to bf16, and every result is rounded to bf16, as autocast's bf16
    tensors are (it then flows through instance norm, ReLU and the residual sums in bf16)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            args = tree_map(_round_bf16, args)
        return tree_map(_round_bf16, func(*args, **(kwargs or {})))


def bf16_output(net, x: torch.Tensor) -> torch.Tensor:
    """`net`(x) in bf16: the real autocast path where the CPU has native bf16 (or on CUDA), else simulated."""
    if x.device.type == "cuda" or cpu_has_native_bf16():
        return run_any_size(net, x, max_side=None, precision="bf16")
    with torch.inference_mode(), Bf16Rounding():
        return run_any_size(net, x, max_side=None, precision="fp32")


def to_8bit(y: torch.Tensor) -> torch.Tensor:
    """What to_image() writes: [-1, 1] -> levels 0..255."""
    return y.float().clamp(-1, 1).add(1).mul(127.5).round()


def compare_8bit(y: torch.Tensor, ref: torch.Tensor) -> dict:
    """8-bit PSNR (dB; inf when identical), largest level difference, share of pixels within 1 level."""
    d = (to_8bit(y) - to_8bit(ref)).abs()
    mse = d.pow(2).mean().item()
    return {"psnr_db": float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse),
            "max_levels": int(d.max().item()), "within_1_level": (d <= 1).float().mean().item()}


def bench_precision_accuracy(n_photos: int, size: int = 256) -> dict:
    """bf16 against float32 on test photos (8-bit output), for every model; and the simulation
    against the real bf16 path on one small image, where the CPU emulates bf16."""
    files = photo_files()[:n_photos]
    if not files:
        return {}
    out: dict = {"size": size, "photos": len(files), "simulated": not cpu_has_native_bf16(), "models": []}
    for label, model in models(n_photos < 12).items():
        per_photo = []
        for f in files:
            x = to_tensor(load_rgb(f).resize((size, size), Image.BICUBIC)).unsqueeze(0)
            per_photo.append(compare_8bit(bf16_output(model.G_AB, x), run_any_size(model.G_AB, x, precision="fp32")))
        psnr = [p["psnr_db"] for p in per_photo]
        out["models"].append({"model": label, "psnr_min_db": min(psnr), "psnr_median_db": statistics.median(psnr),
                              "psnr_max_db": max(psnr), "max_levels": max(p["max_levels"] for p in per_photo),
                              "within_1_level_min": min(p["within_1_level"] for p in per_photo)})
        print(f"  {label}: bf16 vs fp32 PSNR {min(psnr):.1f}-{max(psnr):.1f} dB over {len(files)} photos", flush=True)
    if out["simulated"]:  # the simulation against the real (emulated, slow) bf16 path
        model = CycleGAN.from_pretrained(PREVIEW)
        x = to_tensor(load_rgb(files[0]).resize((96, 96), Image.BICUBIC)).unsqueeze(0)
        ref = run_any_size(model.G_AB, x, precision="fp32")
        real = run_any_size(model.G_AB, x, precision="bf16")
        out["check_96px"] = {"real_bf16_psnr_db": compare_8bit(real, ref)["psnr_db"],
                             "simulated_psnr_db": compare_8bit(bf16_output(model.G_AB, x), ref)["psnr_db"]}
    return out


# ---- generator latency --------------------------------------------------------------------------

def bench_generators(device: torch.device, sizes: list[int], repeats: dict[int, int], quick: bool) -> list[dict]:
    """One image through a generator as translate() runs it (run_any_size, one pass): float32 against
    the precision "auto" picks here, with the 8-bit PSNR between them and of bf16 against float32."""
    default = autocast_dtype("auto", device)
    rows = []
    for label, model in models(quick).items():
        if "no identity" in label:
            continue
        model = model.to(device)
        for size in sizes:
            x = to_tensor(photo(size, size)).unsqueeze(0).to(device)
            variants = {"fp32": lambda: run_any_size(model.G_AB, x, max_side=None, precision="fp32")}
            if default is not None:
                variants["auto"] = lambda: run_any_size(model.G_AB, x, max_side=None, precision="auto")
            t = timed(variants, repeats[size], 1, device)
            t.setdefault("auto", t["fp32"])  # "auto" is float32 here: the same path
            ref = variants["fp32"]()
            row = {"model": label, "size": size, "default_precision": str(default or torch.float32).split(".")[-1],
                   "fp32_s": t["fp32"], "auto_s": t["auto"], "speedup": t["fp32"]["median"] / t["auto"]["median"],
                   "auto_vs_fp32": compare_8bit(variants.get("auto", variants["fp32"])(), ref),
                   "bf16_vs_fp32": compare_8bit(bf16_output(model.G_AB, x), ref)}
            rows.append(row)
            print(f"  {label} {size}px: fp32 {t['fp32']['median']:.3f}s, auto ({row['default_precision']}) "
                  f"{t['auto']['median']:.3f}s (x{row['speedup']:.2f}), bf16 PSNR {row['bf16_vs_fp32']['psnr_db']:.1f} dB",
                  flush=True)
    return rows


def bench_emulated_bf16(size: int = 128) -> dict:
    """What precision="bf16" costs where the CPU emulates it: the preview model, one image."""
    model = CycleGAN.from_pretrained(PREVIEW)
    x = to_tensor(photo(size, size)).unsqueeze(0)
    t = timed({p: (lambda p=p: run_any_size(model.G_AB, x, precision=p)) for p in ("fp32", "bf16")}, 1, 1,
              torch.device("cpu"))
    print(f"  emulated bf16 at {size} px: {t['bf16']['median']:.2f}s vs fp32 {t['fp32']['median']:.3f}s", flush=True)
    return {"size": size, "fp32_s": t["fp32"], "bf16_s": t["bf16"], "slowdown": t["bf16"]["median"] / t["fp32"]["median"]}


# ---- the app end to end ---------------------------------------------------------------------------

def bench_app(requests: int, warmup: int = 2, extra_env: dict | None = None) -> dict:
    """`python app.py` in a subprocess, driven through gradio_client: latency of /translate for one
    client and for 4 concurrent ones, and the model time the app itself reports in its summary."""
    # Imported here, not at the top: the GPU machine (scripts/gpu_check.sh) has no gradio or selenium.
    from gradio_client import Client, handle_file
    sys.path.insert(0, str(ROOT / "scripts"))
    from screenshot import serve_app

    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "horse.jpg"
        photo(256, 256).save(image, quality=95)
        start = time.perf_counter()
        with serve_app(**(extra_env or {})) as url:
            startup = time.perf_counter() - start

            def one(client) -> tuple[float, float]:
                t0 = time.perf_counter()
                *_, summary = client.predict(handle_file(str(image)), "A2B", True, api_name="/translate")
                latency = time.perf_counter() - t0
                return latency, float(re.search(r"([0-9.]+) s\s*$", summary).group(1))

            client = Client(url, verbose=False)
            for _ in range(warmup):
                one(client)
            single = [one(client) for _ in range(requests)]

            clients = [Client(url, verbose=False) for _ in range(4)]
            barrier, results, lock = threading.Barrier(4), [], threading.Lock()

            def worker(c) -> None:
                barrier.wait()
                for _ in range(requests // 4):
                    r = one(c)
                    with lock:
                        results.append(r)
            threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0

    def summary(pairs, wall=None) -> dict:
        out = {"requests": len(pairs), "latency_s": stats([p[0] for p in pairs]),
               "model_s": stats([p[1] for p in pairs]), "overhead_s": stats([p[0] - p[1] for p in pairs])}
        if wall:
            out["throughput_per_s"] = len(pairs) / wall
        return out
    return {"image": "256x256 JPEG, A2B with identity checkpoint (bundled preview model), cycle = 2 generator calls",
            "environment": extra_env or {}, "startup_s": startup, "one_client": summary(single), "four_clients": summary(results, wall)}


# ---- a large photo ---------------------------------------------------------------------------------

def big_photo_child(model_name: str, device: str, width: int, height: int) -> None:
    """Runs in a fresh process so that its peak resident memory is the translation's alone."""
    model = CycleGAN(ModelConfig()).init_weights(0) if model_name == "default" else CycleGAN.from_pretrained(PREVIEW)
    model = model.to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        photo(width, height).save(path, quality=90)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        start = time.perf_counter()
        out = model.translate(path, "A2B")  # the library's defaults: tiles above 1024 px, precision "auto"
        sync(torch.device(device))
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
    result = {"model": model_name, "input": [width, height], "output": list(out.size), "seconds": seconds,
              "peak_rss_gb": peak, "rss_before_translate_gb": rss_before}
    if device.startswith("cuda"):
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result))


def bench_big_photo(model_name: str, device: torch.device, width: int = 4096, height: int = 3072) -> dict:
    result = subprocess.run([sys.executable, __file__, "--big-photo-child", model_name, "--device", device.type,
                             "--threads", str(torch.get_num_threads()), "--size", f"{width}x{height}"],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- training ---------------------------------------------------------------------------------------

def naive_train_step(trainer: Trainer, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The maths of Trainer.train_step written the plain way: six separate generator calls (no
    batching of G(x) with the identity G(y)), the discriminators left trainable during the
    generator update, real and fake images through D in separate calls, float32, no autocast."""
    c, m = trainer.config, trainer.model
    real_A, real_B = batch["A"].to(trainer.device), batch["B"].to(trainer.device)
    trainer.opt_G.zero_grad()
    fake_B, fake_A = m.G_AB(real_A), m.G_BA(real_B)
    rec_A, rec_B = m.G_BA(fake_B), m.G_AB(fake_A)
    losses = {"G_AB": adversarial_loss(m.D_B(fake_B), True), "G_BA": adversarial_loss(m.D_A(fake_A), True),
              "cycle_A": c.lambda_cycle * cycle_loss(real_A, rec_A),
              "cycle_B": c.lambda_cycle * cycle_loss(real_B, rec_B)}
    if c.lambda_identity > 0:
        idt_B, idt_A = m.G_AB(real_B), m.G_BA(real_A)
        losses["idt_A"] = c.lambda_cycle * c.lambda_identity * identity_loss(real_A, idt_A)
        losses["idt_B"] = c.lambda_cycle * c.lambda_identity * identity_loss(real_B, idt_B)
    loss_G = sum(losses.values())
    if not torch.isfinite(loss_G).item():
        raise FloatingPointError(f"generator loss {loss_G.item()}")
    loss_G.backward()
    trainer.opt_G.step()
    trainer.opt_D.zero_grad()
    pooled_A, pooled_B = trainer.pool_A.query(fake_A.detach()), trainer.pool_B.query(fake_B.detach())
    losses["D_A"] = discriminator_loss(m.D_A(real_A), m.D_A(pooled_A))
    losses["D_B"] = discriminator_loss(m.D_B(real_B), m.D_B(pooled_B))
    loss_D = losses["D_A"] + losses["D_B"]
    if not torch.isfinite(loss_D).item():
        raise FloatingPointError(f"discriminator loss {loss_D.item()}")
    loss_D.backward()
    trainer.opt_D.step()
    trainer.step += 1
    return {k: v.detach() for k, v in losses.items()}


def bench_training(device: torch.device, setups: list[tuple[int, int, int]], repeats: int) -> list[dict]:
    rows = []
    for ngf, n_blocks, size in setups:
        model_config = ModelConfig(ngf=ngf, n_blocks=n_blocks)
        g = torch.Generator().manual_seed(0)
        batch = {"A": torch.rand(1, 3, size, size, generator=g) * 2 - 1, "B": torch.rand(1, 3, size, size, generator=g) * 2 - 1}
        naive = Trainer(TrainConfig(amp="none"), model_config, device)
        naive.model.to(memory_format=torch.contiguous_format)
        optimised = Trainer(TrainConfig(), model_config, device)
        unchecked = Trainer(TrainConfig(), model_config, device)
        unchecked._check_finite = lambda loss, what: True  # how much the per-step NaN check costs
        variants = {"naive loop": lambda: naive_train_step(naive, batch),
                    "train_step (default)": lambda: optimised.train_step(batch),
                    "train_step without NaN check": lambda: unchecked.train_step(batch)}
        trainers = [naive, optimised, unchecked]
        if device.type == "cuda":  # the default there is bf16 autocast: fp32 beside it, and bf16 compiled
            trainers.append(Trainer(TrainConfig(amp="none"), model_config, device))
            variants["train_step --amp none (fp32)"] = lambda fp32=trainers[-1]: fp32.train_step(batch)
            compiled = Trainer(TrainConfig(compile=True), model_config, device)
            trainers.append(compiled)
            variants["train_step + torch.compile"] = lambda: compiled.train_step(batch)
        else:  # bf16 autocast is opt-in on the CPU (the default there is fp32)
            trainers.append(Trainer(TrainConfig(amp="bf16"), model_config, device))
            variants["train_step --amp bf16"] = lambda: trainers[-1].train_step(batch)
        for t in trainers:
            t.model.train()
        t = timed(variants, repeats, 2 if device.type == "cuda" else 1, device)
        base = t["naive loop"]["median"]
        for name, s in t.items():
            rows.append({"config": f"ngf {ngf}, {n_blocks} blocks, {size} px", "loop": name, "step_s": s,
                         "images_per_s": 2 / s["median"], "speedup": base / s["median"],
                         "projected_200_epochs_h": s["median"] * STEPS_PER_EPOCH * EPOCHS / 3600})
            print(f"  {rows[-1]['config']}, {name}: {s['median']:.3f} s/step (x{rows[-1]['speedup']:.2f})", flush=True)
    return rows


def bench_data_loading(workers: list[int], batches: int) -> list[dict]:
    """Images/s the data pipeline (decode, resize to 286, crop 256, flip) delivers, without any model."""
    from torch.utils.data import DataLoader

    from cyclegan.data import UnpairedDataset
    root = next((p.parent for p in PHOTOS if p.is_dir() and (p.parent / "trainA").is_dir()), None)
    if root is None:
        return []
    dataset = UnpairedDataset(root, "train", "resize_and_crop", 286, 256, True, 0)
    rows = []
    for n in workers:
        loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=n)
        it, start = iter(loader), None
        for i in range(batches + 2):
            next(it)
            if i == 1:  # from the second batch on: the workers have started
                start = time.perf_counter()
        rows.append({"workers": n, "pairs_per_s": batches / (time.perf_counter() - start)})
    return rows


# ---- report -----------------------------------------------------------------------------------------

def psnr(c: dict) -> str:
    return f"{'identical' if c['psnr_db'] == float('inf') else format(c['psnr_db'], '.1f')} / {c['max_levels']}"


def ms(s: dict) -> str:
    return f"{s['min'] * 1000:.0f} / {s['median'] * 1000:.0f}"


def table(title: str, columns: list[str], rows: list[str]) -> list[str]:
    """A report section: its title, a markdown table of `rows` (already formatted) and a blank line."""
    return [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows, ""]


def report(r: dict) -> str:
    m = r["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), native bf16 "
             f"{'yes' if m['native_bf16'] else 'no'}, torch {m['torch']}, {m['threads']} threads; load average "
             f"{m['load_average_at_start'][0]:.2f} at start, {r['load_average_at_end'][0]:.2f} at end.", ""]
    if r.get("generator"):
        lines += table("Generator forward as translate() runs it, one image (ms, min / median); 8-bit PSNR against "
                       "fp32 (dB) / largest difference in levels of 255:",
                       ["model", "size", "fp32", "default precision", "default", "speed-up", "default vs fp32",
                        "bf16 vs fp32" + (" (simulated)" if not m["native_bf16"] else "")],
                       [f"| {x['model']} | {x['size']} | {ms(x['fp32_s'])} | {x['default_precision']} | {ms(x['auto_s'])} | "
                        f"{x['speedup']:.2f}x | {psnr(x['auto_vs_fp32'])} | {psnr(x['bf16_vs_fp32'])} |"
                        for x in r["generator"]])
    if r.get("emulated_bf16"):
        e = r["emulated_bf16"]
        lines += [f"precision='bf16' on this CPU (emulated), preview model at {e['size']} px: {e['bf16_s']['median']:.2f} s "
                  f"against {e['fp32_s']['median'] * 1000:.0f} ms in fp32 ({e['slowdown']:.0f}x slower).", ""]
    a = r.get("accuracy")
    if a and a.get("models"):
        how = "simulated by Bf16Rounding" if a["simulated"] else "autocast"
        lines += table(f"bf16 ({how}) against fp32 on {a['photos']} test photos at {a['size']} px, 8-bit output:",
                       ["model", "PSNR min / median / max (dB)", "largest difference (levels)", "pixels within 1 level (worst photo)"],
                       [f"| {x['model']} | {x['psnr_min_db']:.1f} / {x['psnr_median_db']:.1f} / {x['psnr_max_db']:.1f} | "
                        f"{x['max_levels']} | {x['within_1_level_min'] * 100:.1f}% |" for x in a["models"]])
        if a.get("check_96px"):
            c = a["check_96px"]
            lines += [f"The simulation against the real (emulated) bf16 path, preview model, one photo at 96 px: PSNR "
                      f"against fp32 {c['simulated_psnr_db']:.1f} dB simulated, {c['real_bf16_psnr_db']:.1f} dB real.", ""]
    if r.get("app"):
        a = r["app"]
        rows = [f"| {n} | {a[name]['requests']} | {a[name]['latency_s']['median'] * 1000:.0f} | "
                f"{a[name]['latency_s']['p95'] * 1000:.0f} | {a[name]['model_s']['median'] * 1000:.0f} | "
                f"{a[name]['overhead_s']['median'] * 1000:.0f} | {a[name]['overhead_s']['p95'] * 1000:.0f} | "
                f"{a[name]['throughput_per_s']:.2f}/s |" if "throughput_per_s" in a[name] else
                f"| {n} | {a[name]['requests']} | {a[name]['latency_s']['median'] * 1000:.0f} | "
                f"{a[name]['latency_s']['p95'] * 1000:.0f} | {a[name]['model_s']['median'] * 1000:.0f} | "
                f"{a[name]['overhead_s']['median'] * 1000:.0f} | {a[name]['overhead_s']['p95'] * 1000:.0f} | |"
                for name, n in (("one_client", 1), ("four_clients", 4))]
        lines += table(f"App end to end through gradio_client ({a['image']}; app started in {a['startup_s']:.1f} s; "
                       "overhead = request latency - the model time the app reports), ms:",
                       ["clients", "requests", "latency p50", "latency p95", "model p50", "overhead p50",
                        "overhead p95", "throughput"], rows)
    if r.get("big_photo"):
        lines += table("A 4096x3072 photo through CycleGAN.translate(photo) with its defaults, fresh process:",
                       ["model", "seconds", "peak RSS (GB)", "RSS before translate (GB)", "output size"],
                       [f"| {x['model']} | {x['seconds']:.1f} | {x['peak_rss_gb']:.2f} | "
                        f"{x['rss_before_translate_gb']:.2f} | {x['output'][0]}x{x['output'][1]} |" for x in r["big_photo"]])
    if r.get("training"):
        rows = []
        for x in r["training"]:
            h = x["projected_200_epochs_h"]
            duration = f"{h / 24:.1f} days" if h > 48 else f"{h:.1f} h"
            rows.append(f"| {x['config']} | {x['loop']} | {x['step_s']['min']:.3f} / {x['step_s']['median']:.3f} | "
                        f"{x['images_per_s']:.2f} | {x['speedup']:.2f}x | {duration} |")
        lines += table("Training, batch 1 (s/step min / median; images/s counts A and B; projection: 200 epochs of "
                       "1334 steps):", ["config", "loop", "s/step", "images/s", "speed-up vs naive", "200 epochs"], rows)
    if r.get("data_loading"):
        lines += ["Data loading alone (horse2zebra, 286 -> 256 crops): " + ", ".join(
            f"{x['workers']} workers {x['pairs_per_s']:.0f} pairs/s" for x in r["data_loading"]), ""]
    if r.get("targets"):
        lines += ["Targets:", ""] + [f"- {k}: {v}" for k, v in r["targets"].items()]
    return "\n".join(lines)


def check_targets(r: dict) -> dict:
    targets = {}
    for row in r.get("generator", []):  # issue 13: on a CPU with native bf16 (elsewhere "auto" is fp32)
        if row["model"].startswith("default") and row["size"] == 256:
            ok = row["speedup"] >= 1.6 and row["auto_vs_fp32"]["psnr_db"] >= 45
            targets["default generator 256 px, default precision >= 1.6x fp32 at PSNR >= 45 dB"] = (
                f"{row['default_precision']}: {row['speedup']:.2f}x, PSNR {psnr(row['auto_vs_fp32'])}: "
                f"{'met' if ok else 'NOT met'}")
    if r.get("app"):
        p50 = r["app"]["one_client"]["overhead_s"]["median"] * 1000
        targets["app overhead p50 < 150 ms"] = f"{p50:.0f} ms: {'met' if p50 < 150 else 'NOT met'}"
    for row in r.get("big_photo", []):
        ok = row["peak_rss_gb"] <= 3 and row["output"] == row["input"]
        targets[f"4096x3072 peak memory <= 3 GB ({row['model']})"] = (
            f"{row['peak_rss_gb']:.2f} GB, output {row['output'][0]}x{row['output'][1]}: {'met' if ok else 'NOT met'}")
    for row in r.get("training", []):
        if row["loop"] == "train_step (default)":
            ok = row["speedup"] >= 1.2
            targets[f"training step >= 1.2x naive ({row['config']})"] = f"{row['speedup']:.2f}x: {'met' if ok else 'NOT met'}"
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes, photos and repeats (~3 min on 2 cores)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    parser.add_argument("--only", default="", help="comma-separated sections: generator,accuracy,app,big,training,data")
    parser.add_argument("--tiny", action="store_true",
                        help="training: an 8-channel, 2-block model at 32 px, once (scripts/gpu_check.sh --dry-run)")
    parser.add_argument("--big-photo-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="4096x3072", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.big_photo_child:
        big_photo_child(args.big_photo_child, args.device, *map(int, args.size.split("x")))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    sections = set(args.only.split(",")) if args.only else {"generator", "accuracy", "app", "big", "training", "data"}
    quick = args.quick
    r: dict = {"command": " ".join(["python benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])]),
               "quick": quick, "device": device.type, "machine": machine_info()}
    print(f"{r['machine']['cpu']}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {r['machine']['load_average_at_start']}", flush=True)
    started = time.perf_counter()
    if "generator" in sections:
        print("generator latency, fp32 against the default precision...", flush=True)
        sizes = [256, 512] if quick else [256, 512, 1024]
        r["generator"] = bench_generators(device, sizes, {256: 3 if quick else 10, 512: 2 if quick else 5, 1024: 3}, quick)
        if device.type == "cpu" and not r["machine"]["native_bf16"] and not quick:
            r["emulated_bf16"] = bench_emulated_bf16()
    if "accuracy" in sections and device.type == "cpu":
        print("bf16 against fp32 on test photos...", flush=True)
        r["accuracy"] = bench_precision_accuracy(4 if quick else 12)
    if "app" in sections and device.type == "cpu":
        print("app through gradio_client...", flush=True)
        r["app"] = bench_app(8 if quick else 20)
    if "big" in sections:
        print("4096x3072 photo...", flush=True)
        r["big_photo"] = [bench_big_photo(name, device) for name in (["default"] if quick else ["preview", "default"])
                          if name == "default" or PREVIEW.is_dir()]
    if "training" in sections:
        print("training steps...", flush=True)
        setups = [(32, 6, 128)] if quick else [(32, 6, 128), (64, 9, 256)]
        if device.type == "cuda":  # the paper's model at 256 px, also when quick
            setups = [(64, 9, 256)] if quick else [(32, 6, 128), (64, 9, 256)]
        if args.tiny:
            setups = [(8, 2, 32)]
        r["training"] = bench_training(device, setups, 1 if args.tiny else 2 if quick else 4)
    if "data" in sections:
        r["data_loading"] = bench_data_loading([0, 2], 20 if quick else 100)
    r["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    r["seconds"] = time.perf_counter() - started
    r["targets"] = check_targets(r)
    print("\n" + report(r))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(r, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out} ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
