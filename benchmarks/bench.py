"""Speed and memory of cyclegan-kit on this machine: convolution kernels, generator latency (plain
eager PyTorch beside the fast paths), the app end to end, a 4096x3072 photo, and training steps
(a naive loop beside Trainer.train_step). Prints tables and writes benchmarks/results.json.

    python benchmarks/bench.py            # everything (~10 min on 2 CPU cores)
    python benchmarks/bench.py --quick    # fewer sizes and repeats (< 2 min)
    python benchmarks/bench.py --device cuda

Every timing is wall-clock, after warm-up, over interleaved repeats (so that a change in machine
load hits all variants alike), reported as min and median; speed-ups are ratios of medians from
the same run. On the CPU the generator is measured in two fresh processes: one with OpenMP's
default (spinning) wait policy, one with OMP_WAIT_POLICY=PASSIVE, which app.py sets and under
which the NNPACK fast path is on; speed-ups are against the faster of the two plain runs.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
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

from cyclegan import CycleGAN, ModelConfig  # noqa: E402
from cyclegan.data import to_tensor  # noqa: E402
from cyclegan.losses import adversarial_loss, cycle_loss, discriminator_loss, identity_loss  # noqa: E402
from cyclegan.training import Trainer, TrainConfig  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from screenshot import serve_app  # noqa: E402

PREVIEW = ROOT / "weights" / "horse2zebra-identity"
PHOTOS = [ROOT / "datasets" / "horse2zebra" / "testA", ROOT.parent / "shared" / "datasets" / "horse2zebra" / "testA"]
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
        "cpu": cpu, "cores": os.cpu_count(), "simd": [f for f in ("avx2", "avx512f", "avx512_bf16") if f in flags],
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "nnpack": torch.backends.nnpack.is_available(), "git_commit": commit,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def photo(width: int, height: int) -> Image.Image:
    """A real horse photo when the data set is at hand (resized), else a smooth synthetic image."""
    for folder in PHOTOS:
        files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
        if files:
            return Image.open(files[0]).convert("RGB").resize((width, height), Image.BICUBIC)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    rgb = torch.stack([x, y, (x + y) / 2]) * 200 + torch.rand(3, height, width, generator=torch.Generator().manual_seed(0)) * 55
    return Image.fromarray(rgb.permute(1, 2, 0).byte().numpy())


def models() -> dict[str, CycleGAN]:
    default = CycleGAN(ModelConfig()).init_weights(seed=0).eval()
    out = {"default (ngf 64, 9 blocks, random init)": default}
    if PREVIEW.is_dir():
        out["preview (ngf 32, 6 blocks, bundled)"] = CycleGAN.from_pretrained(PREVIEW)
    return out


# ---- convolution kernels ------------------------------------------------------------------

def transposed_as_nnpack(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) handed to NNPACK: one stride-1 3x3
    convolution with 4x the output channels (one per phase of the output pixel grid), then pixel_shuffle."""
    ci, co = w.shape[:2]
    k = w.new_zeros(co, 2, 2, ci, 3, 3)
    taps = {0: {0: 1}, 1: {0: 2, 1: 0}}  # output parity -> {input offset: kernel index}, per axis
    for a, rows in taps.items():
        for c, cols in taps.items():
            for u, ku in rows.items():
                for v, kv in cols.items():
                    k[:, a, c, :, 1 + u, 1 + v] = w[:, :, ku, kv].t()
    y = torch._nnpack_spatial_convolution(x, k.reshape(4 * co, ci, 3, 3), b.repeat_interleave(4), [1, 1])
    return F.pixel_shuffle(y, 2)


def bench_conv_layers(size: int, repeats: int) -> list[dict]:
    """Each kind of convolution in the default generator at `size` px: PyTorch's (oneDNN) kernel
    against NNPACK's, on one image. This is what decides which layers FastConv2d covers."""
    ngf, g = 64, torch.Generator().manual_seed(0)
    layers = [  # name, in, out, kernel, stride, padding, input side, transposed
        ("stem 7x7", 3, ngf, 7, 1, 0, size + 6, False),
        ("down 3x3 stride 2 (1st)", ngf, 2 * ngf, 3, 2, 1, size, False),
        ("down 3x3 stride 2 (2nd)", 2 * ngf, 4 * ngf, 3, 2, 1, size // 2, False),
        ("residual block 3x3", 4 * ngf, 4 * ngf, 3, 1, 0, size // 4 + 2, False),
        ("up 3x3 transposed (1st)", 4 * ngf, 2 * ngf, 3, 2, 1, size // 4, True),
        ("up 3x3 transposed (2nd)", 2 * ngf, ngf, 3, 2, 1, size // 2, True),
        ("head 7x7", ngf, 3, 7, 1, 0, size + 6, False),
    ]
    rows = []
    with torch.inference_mode():
        for name, ci, co, k, s, p, side, transposed in layers:
            x = torch.randn(1, ci, side, side, generator=g)
            w = torch.randn(*((ci, co) if transposed else (co, ci)), k, k, generator=g) * (2 / (ci * k * k)) ** 0.5
            b = torch.randn(co, generator=g) * 0.1
            if transposed:
                plain = lambda: F.conv_transpose2d(x, w, b, 2, 1, 1)  # noqa: E731
                nnpack = lambda: transposed_as_nnpack(x, w, b)  # noqa: E731
            else:
                plain = lambda: F.conv2d(x, w, b, s, p)  # noqa: E731
                nnpack = lambda: torch._nnpack_spatial_convolution(x, w, b, [p, p], [s, s])  # noqa: E731
            t = timed({"pytorch": plain, "nnpack": nnpack}, repeats, 2, torch.device("cpu"))
            ref = plain()
            rows.append({"layer": name, "input": [1, ci, side, side], "pytorch_s": t["pytorch"], "nnpack_s": t["nnpack"],
                         "speedup": t["pytorch"]["median"] / t["nnpack"]["median"],
                         "max_rel_diff": ((nnpack() - ref).abs().max() / ref.abs().max()).item(),
                         "in_fast_path": not transposed and s == 1})
    return rows


# ---- generator latency --------------------------------------------------------------------------

def bench_generators(device: torch.device, sizes: list[int], repeats: dict[int, int],
                     naive_only: bool = False) -> list[dict]:
    """One image through a generator the way translate() runs it: plain eager float32 against the
    fast path (NNPACK on the CPU; bf16 autocast and channels_last on CUDA, and that compiled)."""
    rows = []
    for label, model in models().items():
        fast = model.to(device).set_fast(True)
        naive = copy.deepcopy(model).set_fast(False)
        for size in sizes:
            x = to_tensor(photo(size, size)).unsqueeze(0).to(device)
            variants = {"naive": lambda: naive._run(naive.G_AB, x, None, "tile", 512, 64),
                        "fast": lambda: fast._run(fast.G_AB, x, None, "tile", 512, 64)}
            if naive_only:
                t = timed({"naive": variants["naive"]}, repeats[size], 1, device)
                rows.append({"model": label, "size": size, "naive_s": t["naive"]})
                print(f"  {label} {size}px: naive {t['naive']['median']:.3f}s", flush=True)
                continue
            if device.type == "cuda":
                compiled = torch.compile(fast.G_AB)
                variants["fast+compile"] = lambda: fast._run(compiled, x, None, "tile", 512, 64)
            t = timed(variants, repeats[size], 1, device)
            ref = variants["naive"]().float()
            row = {"model": label, "size": size, "naive_s": t["naive"]}
            for name in variants:
                if name == "naive":
                    continue
                diff = (variants[name]().float() - ref).abs()
                row[f"{name}_s"] = t[name]
                row[f"{name}_speedup"] = t["naive"]["median"] / t[name]["median"]
                row[f"{name}_max_diff"], row[f"{name}_mean_diff"] = diff.max().item(), diff.mean().item()
            rows.append(row)
            print(f"  {label} {size}px: naive {t['naive']['median']:.3f}s, fast {t['fast']['median']:.3f}s "
                  f"(x{row['fast_speedup']:.2f}, max diff {row['fast_max_diff']:.1e})", flush=True)
    return rows


def run_child(args: list[str], omp_wait_policy: str | None) -> dict:
    """This script in a fresh process (OpenMP reads its wait policy once, at start-up); its results."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        subprocess.run([sys.executable, __file__, *args, "--child", "--threads", str(torch.get_num_threads()),
                        "--out", str(out)], check=True, cwd=ROOT, env=env)
        return json.loads(out.read_text())


def generators_under_both_policies(quick: bool) -> tuple[list[dict], list[dict]]:
    """(convolution kernels, generator rows): NNPACK's numbers from the PASSIVE process, plain eager
    from both; the speed-up is against the faster plain run."""
    flags = ["--quick"] if quick else []
    passive = run_child(["--only", "layers,generator", *flags], "PASSIVE")
    spinning = run_child(["--only", "generator", "--naive-only", *flags], None)
    rows = passive["generator"]
    for row, other in zip(rows, spinning["generator"]):
        row["naive_passive_s"] = row.pop("naive_s")
        row["naive_spinning_s"] = other["naive_s"]
        best = min(row["naive_passive_s"]["median"], row["naive_spinning_s"]["median"])
        row["fast_speedup_same_process"] = row["fast_speedup"]
        row["fast_speedup"] = best / row["fast_s"]["median"]
    return passive.get("conv_layers", []), rows


# ---- the app end to end ---------------------------------------------------------------------------

def bench_app(requests: int, warmup: int = 2, extra_env: dict | None = None) -> dict:
    """`python app.py` in a subprocess, driven through gradio_client: latency of /translate for one
    client and for 4 concurrent ones, and the model time the app itself reports in its summary."""
    from gradio_client import Client, handle_file

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
        out = model.translate(path, "A2B", max_side=1024, large="tile")
        sync(torch.device(device))
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
    result = {"model": model_name, "input": [width, height], "output": list(out.size), "seconds": seconds,
              "peak_rss_gb": peak, "rss_before_translate_gb": rss_before}
    if device.startswith("cuda"):
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result))


def bench_big_photo(model_name: str, device: torch.device, width: int = 4096, height: int = 3072) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # as in app.py
    result = subprocess.run([sys.executable, __file__, "--big-photo-child", model_name, "--device", device.type,
                             "--threads", str(torch.get_num_threads()), "--size", f"{width}x{height}"],
                            capture_output=True, text=True, cwd=ROOT, env=env)
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
        if device.type == "cuda":
            compiled = Trainer(TrainConfig(compile=True), model_config, device)
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

def ms(s: dict) -> str:
    return f"{s['min'] * 1000:.0f} / {s['median'] * 1000:.0f}"


def table(title: str, columns: list[str], rows: list[str]) -> list[str]:
    """A report section: its title, a markdown table of `rows` (already formatted) and a blank line."""
    return [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows, ""]


def report(r: dict) -> str:
    m = r["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), torch {m['torch']}, "
             f"{m['threads']} threads, NNPACK {'yes' if m['nnpack'] else 'no'}; load average "
             f"{m['load_average_at_start'][0]:.2f} at start, {r['load_average_at_end'][0]:.2f} at end.", ""]
    if r.get("conv_layers"):
        lines += table("Convolutions of the default generator at 256 px, one image (ms, min / median):",
                       ["layer", "PyTorch (oneDNN)", "NNPACK", "speed-up", "in the fast path"],
                       [f"| {x['layer']} | {ms(x['pytorch_s'])} | {ms(x['nnpack_s'])} | {x['speedup']:.2f}x | "
                        f"{'yes' if x['in_fast_path'] else 'no'} |" for x in r["conv_layers"]])
    if r.get("generator") and "naive_spinning_s" in r["generator"][0]:
        lines += table("Generator forward as translate() runs it, one image (ms, min / median; speed-up against the "
                       "faster plain run; max / mean |fast - plain| on the [-1, 1] output scale):",
                       ["model", "size", "plain eager fp32, OpenMP default", "plain, OMP_WAIT_POLICY=PASSIVE",
                        "fast (NNPACK, PASSIVE)", "speed-up", "max diff", "mean diff"],
                       [f"| {x['model']} | {x['size']} | {ms(x['naive_spinning_s'])} | {ms(x['naive_passive_s'])} | "
                        f"{ms(x['fast_s'])} | {x['fast_speedup']:.2f}x | {x['fast_max_diff']:.1e} | "
                        f"{x['fast_mean_diff']:.1e} |" for x in r["generator"]])
    elif r.get("generator"):
        extra = [k[:-2] for k in r["generator"][0] if k.endswith("_s") and k not in ("naive_s", "fast_s")]
        lines += table("Generator forward as translate() runs it, one image (ms, min / median; max / mean |difference| "
                       "to plain on the [-1, 1] scale):",
                       ["model", "size", "plain eager fp32", "fast", "speed-up", "max diff", "mean diff",
                        *[c for e in extra for c in (e, "speed-up")]],
                       [f"| {x['model']} | {x['size']} | {ms(x['naive_s'])} | {ms(x['fast_s'])} | "
                        f"{x['fast_speedup']:.2f}x | {x['fast_max_diff']:.1e} | {x['fast_mean_diff']:.1e} |"
                        + "".join(f" {ms(x[e + '_s'])} | {x[e + '_speedup']:.2f}x |" for e in extra)
                        for x in r["generator"] if "fast_s" in x])
    if r.get("app"):
        rows = []
        for a in (r["app"], r.get("app_omp_spinning")):
            for name, n in (("one_client", 1), ("four_clients", 4)):
                if a is None:
                    continue
                s = a[name]
                tp = f"{s['throughput_per_s']:.2f}/s" if "throughput_per_s" in s else ""
                env = ("OMP_WAIT_POLICY unset (spinning; NNPACK off)" if a.get("environment")
                       else "as app.py sets it (PASSIVE; NNPACK on)")
                rows.append(f"| {env} | {n} | {s['requests']} | {s['latency_s']['median'] * 1000:.0f} | "
                            f"{s['latency_s']['p95'] * 1000:.0f} | {s['model_s']['median'] * 1000:.0f} | "
                            f"{s['overhead_s']['median'] * 1000:.0f} | {s['overhead_s']['p95'] * 1000:.0f} | {tp} |")
        a = r["app"]
        lines += table(f"App end to end through gradio_client ({a['image']}; app started in {a['startup_s']:.1f} s; "
                       "overhead = request latency - the model time the app reports), ms:",
                       ["app environment", "clients", "requests", "latency p50", "latency p95", "model p50",
                        "overhead p50", "overhead p95", "throughput"], rows)
    if r.get("big_photo"):
        lines += table("A 4096x3072 photo through CycleGAN.translate(max_side=1024, large='tile'), fresh process:",
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
    for row in r.get("generator", []):
        if row["model"].startswith("default") and row["size"] in (256, 512) and "fast_s" in row:
            want = {256: 1.8, 512: 2.0}[row["size"]]
            ok = row["fast_speedup"] >= want and row["fast_max_diff"] <= 1e-3
            targets[f"default generator {row['size']} px >= {want}x, diff <= 1e-3"] = (
                f"{row['fast_speedup']:.2f}x, max diff {row['fast_max_diff']:.1e}: {'met' if ok else 'NOT met'}")
    if r.get("app"):
        p50 = r["app"]["one_client"]["overhead_s"]["median"] * 1000
        targets["app overhead p50 < 150 ms"] = f"{p50:.0f} ms: {'met' if p50 < 150 else 'NOT met'}"
    for row in r.get("big_photo", []):
        ok = row["peak_rss_gb"] < 3 and row["output"] == row["input"]
        targets[f"4096x3072 peak memory < 3 GB ({row['model']})"] = (
            f"{row['peak_rss_gb']:.2f} GB, output {row['output'][0]}x{row['output'][1]}: {'met' if ok else 'NOT met'}")
    for row in r.get("training", []):
        if row["loop"] == "train_step (default)":
            ok = row["speedup"] >= 1.2
            targets[f"training step >= 1.2x naive ({row['config']})"] = f"{row['speedup']:.2f}x: {'met' if ok else 'NOT met'}"
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (< 2 min on 2 cores)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    parser.add_argument("--only", default="", help="comma-separated sections: layers,generator,app,big,training,data")
    parser.add_argument("--big-photo-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--naive-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="4096x3072", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.big_photo_child:
        big_photo_child(args.big_photo_child, args.device, *map(int, args.size.split("x")))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    sections = set(args.only.split(",")) if args.only else {"layers", "generator", "app", "big", "training", "data"}
    quick = args.quick
    r: dict = {"command": " ".join(["python benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])]),
               "quick": quick, "device": device.type, "machine": machine_info()}
    print(f"{r['machine']['cpu']}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {r['machine']['load_average_at_start']}", flush=True)
    started = time.perf_counter()
    in_children = device.type == "cpu" and not args.child and "generator" in sections
    if in_children:
        print("convolution kernels and generator latency, in two processes...", flush=True)
        r["conv_layers"], r["generator"] = generators_under_both_policies(quick)
    if "layers" in sections and not in_children and device.type == "cpu" and torch.backends.nnpack.is_available():
        print("convolution kernels...", flush=True)
        r["conv_layers"] = bench_conv_layers(256, 5 if quick else 15)
    if "generator" in sections and not in_children:
        print(f"generator latency (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})...", flush=True)
        sizes = [256, 512] if quick else [256, 512, 1024]
        r["generator"] = bench_generators(device, sizes, {256: 3 if quick else 10, 512: 2 if quick else 6, 1024: 3},
                                          args.naive_only)
    if "app" in sections and device.type == "cpu":
        print("app through gradio_client...", flush=True)
        r["app"] = bench_app(8 if quick else 20)
        if not quick:  # without app.py's OMP_WAIT_POLICY=PASSIVE: OpenMP spins, NNPACK stays off
            r["app_omp_spinning"] = bench_app(20, extra_env={"OMP_WAIT_POLICY": ""})
    if "big" in sections:
        print("4096x3072 photo...", flush=True)
        r["big_photo"] = [bench_big_photo(name, device) for name in (["preview"] if quick else ["preview", "default"])
                          if name == "default" or PREVIEW.is_dir()]
    if "training" in sections:
        print("training steps...", flush=True)
        setups = [(32, 6, 128)] if quick else [(32, 6, 128), (64, 9, 256)]
        r["training"] = bench_training(device, setups, 2 if quick else 4)
    if "data" in sections:
        r["data_loading"] = bench_data_loading([0, 2], 20 if quick else 100)
    r["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    r["seconds"] = time.perf_counter() - started
    r["targets"] = check_targets(r)
    if not args.child:
        print("\n" + report(r))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(r, indent=2) + "\n")
    os.replace(tmp, out)
    if not args.child:
        print(f"\nwrote {out} ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
