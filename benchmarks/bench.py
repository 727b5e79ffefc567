"""Speed, memory and accuracy of cyclegan-kit on this machine, one table per section as it goes, and
benchmarks/results.json: generator latency in float32 and in translate()'s default precision, bf16's
8-bit PSNR against float32 on photos, the app end to end, a 4096x3072 photo through translate()
(benchmarks/peak_memory.py, in a fresh process), training steps beside a naive loop, data loading.

    python benchmarks/bench.py            # everything (~10 min on 2 idle CPU cores)
    python benchmarks/bench.py --quick    # fewer sizes, photos and repeats (~3 min)
    python benchmarks/bench.py --device cuda --only generator,training

Timings are wall-clock, after warm-up, over interleaved repeats (a change in machine load hits all
variants alike): min and median; speed-ups are ratios of medians. Where the CPU emulates bf16 (~100x
slower than float32), bf16's error is measured by reference.py's Bf16Rounding, checked on one image.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.peak_memory import photo  # noqa: E402
from benchmarks.reference import bf16_output, naive_train_step, simulated_bf16  # noqa: E402
from cyclegan import CycleGAN, ModelConfig  # noqa: E402
from cyclegan.data import UnpairedDataset, load_rgb, to_tensor  # noqa: E402
from cyclegan.files import write_atomic  # noqa: E402
from cyclegan.inference import autocast_dtype, cpu_has_native_bf16, run_any_size  # noqa: E402
from cyclegan.training import Trainer, TrainConfig  # noqa: E402

PREVIEW = ROOT / "weights" / "horse2zebra-identity"
PREVIEWS = {"preview, identity": PREVIEW, "preview, no identity": ROOT / "weights" / "horse2zebra-no-identity"}
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cyclegan-kit"
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


def psnr(c: dict) -> str:
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
            "native_bf16": cpu_has_native_bf16(), "git_commit": commit.stdout.strip(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            **({"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {})}


def photos(data: Path, split: str = "testA") -> list[Path]:
    return sorted((data / split).glob("*.jpg"))


def sample_photo(data: Path, width: int, height: int) -> Image.Image:
    """The first test photo resized, or a synthetic image where there is none."""
    return photo(width, height, next(iter(photos(data)), None))


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


def compare_8bit(y: torch.Tensor, ref: torch.Tensor) -> dict:
    """8-bit PSNR (dB; inf when identical), largest difference in levels, share of pixels within 1 level."""
    y8, ref8 = (t.float().clamp(-1, 1).add(1).mul(127.5).round() for t in (y, ref))  # as to_image() writes
    d = (y8 - ref8).abs()
    mse = d.pow(2).mean().item()
    return {"psnr_db": float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse),
            "max_levels": int(d.max().item()), "within_1_level": (d <= 1).float().mean().item()}


def bench_generators(device: torch.device, data: Path, repeats: dict[int, int]) -> list[dict]:
    """One image through a generator as translate() runs it (run_any_size, one pass): float32 against
    the precision "auto" picks here, with the 8-bit PSNR between them and of bf16 against float32."""
    default = autocast_dtype("auto", device)
    auto = "fp32" if default is None else "auto"  # where "auto" is float32 it is the same path, timed once
    precision = str(default or torch.float32).split(".")[-1]
    nets = {label: G.to(device) for label, G in generators(data, both_previews=False).items()}
    row = table("Generator forward as translate() runs it, one image (ms, min / median); 8-bit PSNR against "
                "fp32 (dB) / largest difference in levels of 255:",
                ["model", "size", "fp32", "default precision", "default", "speed-up", "default vs fp32",
                 "bf16 vs fp32" + (" (simulated)" if simulated_bf16(device) else "")])
    rows = []
    for label, G in nets.items():
        for size, n in repeats.items():
            x = to_tensor(sample_photo(data, size, size)).unsqueeze(0).to(device)
            run = {p: (lambda p=p: run_any_size(G, x, max_side=None, precision=p)) for p in ("fp32", auto)}
            t, ref = timed(run, n, 1, device), run["fp32"]()
            rows.append(r := {"model": label, "size": size, "default_precision": precision, "fp32_s": t["fp32"],
                              "auto_s": t[auto], "speedup": t["fp32"]["median"] / t[auto]["median"],
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


def bench_app(data: Path, requests: int) -> dict:
    """`python app.py` in a subprocess, driven through gradio_client: latency of /translate for one
    client and for 4 concurrent ones, and the model time the app itself reports in its summary."""
    # Imported here, not at the top: the GPU machine (scripts/gpu_check.sh) has no gradio or selenium.
    from gradio_client import Client, handle_file
    sys.path.insert(0, str(ROOT / "scripts"))
    from screenshot import serve_app

    def one(client) -> tuple[float, float]:
        start = time.perf_counter()
        *_, summary = client.predict(handle_file(str(image)), "A2B", True, api_name="/translate")
        return time.perf_counter() - start, float(re.search(r"([0-9.]+) s\s*$", summary).group(1))

    def summary(pairs: list[tuple[float, float]]) -> dict:
        return {"requests": len(pairs), "latency_s": stats([p[0] for p in pairs]),
                "model_s": stats([p[1] for p in pairs]), "overhead_s": stats([p[0] - p[1] for p in pairs])}

    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "horse.jpg"
        sample_photo(data, 256, 256).save(image, quality=95)
        start = time.perf_counter()
        with serve_app() as url:
            startup = time.perf_counter() - start
            client = Client(url, verbose=False)
            single = [one(client) for _ in range(requests + 2)][2:]  # after two that warm up
            clients = [Client(url, verbose=False) for _ in range(4)]
            start = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                four = [p for ps in pool.map(lambda c: [one(c) for _ in range(requests // 4)], clients) for p in ps]
            wall = time.perf_counter() - start
    out = {"image": "256x256 JPEG, A2B with identity checkpoint (bundled preview model), cycle = 2 generator calls",
           "startup_s": startup, "one_client": summary(single),
           "four_clients": {**summary(four), "throughput_per_s": len(four) / wall}}
    row = table(f"App end to end through gradio_client ({out['image']}; app started in {startup:.1f} s; "
                "overhead = request latency - the model time the app reports), ms:",
                ["clients", "requests", "latency p50 / p95", "model p50", "overhead p50 / p95", "throughput"])
    for n, s in ((1, out["one_client"]), (4, out["four_clients"])):
        row(n, s["requests"], ms(s["latency_s"], "median", "p95"), ms(s["model_s"], "median"),
            ms(s["overhead_s"], "median", "p95"), f"{s['throughput_per_s']:.2f}/s" if "throughput_per_s" in s else "")
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


def check_targets(r: dict) -> dict[str, str]:
    """The issues' targets: what this run measured, and whether that meets them."""
    p50 = [r["app"]["one_client"]["overhead_s"]["median"] * 1000] if r.get("app") else []
    checks = [("default generator 256 px, default precision >= 1.6x fp32 at PSNR >= 45 dB",  # issue 13
               f"{x['default_precision']}: {x['speedup']:.2f}x, PSNR {psnr(x['auto_vs_fp32'])}",
               x["speedup"] >= 1.6 and x["auto_vs_fp32"]["psnr_db"] >= 45)
              for x in r.get("generator", []) if x["model"].startswith("default") and x["size"] == 256]
    checks += [("app overhead p50 < 150 ms", f"{v:.0f} ms", v < 150) for v in p50]
    checks += [(f"4096x3072 peak memory <= 3 GB ({x['model']})", f"{x['peak_rss_gb']:.2f} GB, output "
                f"{x['output'][0]}x{x['output'][1]}", x["peak_rss_gb"] <= 3 and x["output"] == x["input"])
               for x in r.get("big_photo", [])]
    checks += [(f"training step >= 1.2x naive ({x['config']})", f"{x['speedup']:.2f}x", x["speedup"] >= 1.2)
               for x in r.get("training", []) if x["loop"] == "train_step (default)"]
    return {name: f"{text}: {'met' if ok else 'NOT met'}" for name, text, ok in checks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes, photos and repeats (~3 min on 2 cores)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--data", type=Path, default=ROOT / "datasets" / "horse2zebra",
                        help="horse2zebra (trainA, testA); without it a synthetic image (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--only", default="", help="comma-separated sections: generator,accuracy,app,big,training,data")
    parser.add_argument("--tiny", action="store_true",
                        help="training: an 8-channel, 2-block model at 32 px, once (scripts/gpu_check.sh --dry-run)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each row shows in a log file as it comes
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device, quick, data = torch.device(args.device), args.quick, args.data
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    sections = set(args.only.split(",")) if args.only else {"generator", "accuracy", "app", "big", "training", "data"}
    r: dict = {"command": " ".join(["python benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])]),
               "quick": quick, "device": device.type, "machine": (m := machine_info())}
    print(f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), native bf16 {m['native_bf16']}, "
          f"torch {m['torch']}, {m['threads']} threads, load average {m['load_average_at_start'][0]:.2f} at start.")
    started = time.perf_counter()
    if "generator" in sections:
        r["generator"] = bench_generators(device, data, {256: 3, 512: 2} if quick else {256: 10, 512: 5, 1024: 3})
        if simulated_bf16(device) and not quick and PREVIEW.is_dir():
            r["emulated_bf16"] = bench_emulated_bf16(data)
    if "accuracy" in sections and device.type == "cpu":
        r["accuracy"] = bench_precision_accuracy(data, 4 if quick else 12)
    if "app" in sections and device.type == "cpu":
        r["app"] = bench_app(data, 8 if quick else 20)
    if "big" in sections:
        preview = {"preview": str(PREVIEW)} if PREVIEW.is_dir() and not quick else {}
        r["big_photo"] = bench_big_photo(device, data, {**preview, "default": "default"})
    if "training" in sections:  # --quick: the paper's model at 256 px on CUDA, a smaller one on the CPU
        setups = [(8, 2, 32)] if args.tiny else [(32, 6, 128), (64, 9, 256)]
        if quick and not args.tiny:
            setups = setups[1:] if device.type == "cuda" else setups[:1]
        r["training"] = bench_training(device, setups, 1 if args.tiny else 2 if quick else 4)
    if "data" in sections:
        r["data_loading"] = bench_data_loading(data, [0, 2], 20 if quick else 100)
    r["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    r["seconds"] = time.perf_counter() - started
    r["targets"] = check_targets(r)
    targets = [f"- {k}: {v}" for k, v in r["targets"].items()]
    print(f"\nLoad average {r['load_average_at_end'][0]:.2f} at end.", *(["Targets:", *targets] if targets else []),
          sep="\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, (json.dumps(r, indent=2) + "\n").encode())
    print(f"\nwrote {args.out} ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
