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
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.peak_memory import photo  # noqa: E402
from benchmarks.reference import PlainLoop, bf16_output, graphs_against_eager, naive_train_step, simulated_bf16  # noqa: E402
from cyclegan import CycleGAN, ModelConfig  # noqa: E402
from cyclegan.data import UnpairedDataset, load_rgb, to_tensor  # noqa: E402
from cyclegan.files import write_atomic  # noqa: E402
from cyclegan.inference import autocast_dtype, cpu_has_native_bf16, cpu_precision, run_any_size  # noqa: E402
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
            "native_bf16": cpu_has_native_bf16(), "amx": "amx_bf16" in flags, "git_commit": commit.stdout.strip(),
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
                              "auto_choice": None if choice is None else {"precision": choice.name, "fp32_ms": choice.fp32_ms,
                                                                          "bf16_ms": choice.bf16_ms},
                              "fp32_s": t["fp32"],
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


# The floor the app is measured against: the smallest Gradio image app (one image in, the same image out,
# Gradio's defaults), served in its own process as app.py is.
MINIMAL_APP = """
import os
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr
gr.Interface(lambda image: image, gr.Image(type="pil"), gr.Image(type="pil"), api_name="identity").launch()
"""
# The model alone: cycle() as the app calls it (translate()'s defaults, precision "auto"), in a plain process
# without Gradio, once per line read; prints the seconds.
CYCLE_ALONE = """
import sys, time
from cyclegan import CycleGAN
from cyclegan.data import load_rgb
net, x = CycleGAN.from_pretrained(sys.argv[1]), load_rgb(sys.argv[2])
for _ in sys.stdin:
    start = time.perf_counter()
    net.cycle(x, "A2B")
    print(time.perf_counter() - start, flush=True)
"""
# OpenMP's wait policies for the plain process: its default (spin a while between operations: the fastest
# on idle cores), and PASSIVE (sleep at once: the fastest where other processes want the cores).
WAIT_POLICIES = ("default", "PASSIVE")


def bench_app(data: Path, requests: int) -> dict:
    """The app end to end beside its floors, interleaved request by request: the smallest Gradio image app
    (MINIMAL_APP), `python app.py`'s /translate (the API: six outputs, PNG) and the page's own event /show
    (where the app has one), through gradio_client, and cycle() of the same image in a plain process
    (CYCLE_ALONE, the faster of two OpenMP wait policies). What the app adds = its latency minus the
    model's p50 alone, set beside the minimal app's latency. Then 4 concurrent clients of each:
    requests/s against one client's. Each server runs alone while it is measured: an idle Gradio server
    still wakes every millisecond (its queue's loop), which takes the cores from the one measured."""
    import contextlib
    import signal
    import urllib.request

    # Imported here, not at the top: the GPU machine (scripts/gpu_check.sh) has no gradio or selenium.
    from gradio_client import Client, handle_file
    sys.path.insert(0, str(ROOT / "scripts"))
    from screenshot import serve_app

    def plain_env(policy: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        return {**env, "OMP_NUM_THREADS": str(torch.get_num_threads()),
                **({"OMP_WAIT_POLICY": policy} if policy != "default" else {})}

    def summary(latencies: list[float], model_p50: float, per_s: float, in_app: list[float]) -> dict:
        return {"requests": len(latencies), "latency_s": stats(latencies),
                "overhead_s": stats([t - model_p50 for t in latencies]), "throughput_per_s": per_s,
                **({"model_in_app_s": stats(in_app)} if in_app else {})}

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        # One file per concurrent client: Gradio rewrites an output's cache file in place when another request
        # makes the same one, and a client that is reading it then gets an empty file.
        images, minimal = [Path(tmp) / f"horse-{i}.jpg" for i in range(4)], Path(tmp) / "minimal_app.py"
        for i, path in enumerate(images):
            sample_photo(data, 256, 256).save(path, quality=95 - i)
        image = images[0]
        minimal.write_text(MINIMAL_APP)
        start = time.perf_counter()
        app_url = stack.enter_context(serve_app())
        startup = time.perf_counter() - start
        minimal_url = stack.enter_context(serve_app(script=minimal))
        alone = {policy: stack.enter_context(subprocess.Popen(
            [sys.executable, "-c", CYCLE_ALONE, str(PREVIEW), str(image)], cwd=ROOT, env=plain_env(policy),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)) for policy in WAIT_POLICIES}

        @contextlib.contextmanager
        def running(url: str | None):
            """Only the server at `url` (or none) runs; the other is stopped meanwhile."""
            others = [s for s in (app_url, minimal_url) if s != url]
            for server in others:
                server.process.send_signal(signal.SIGSTOP)
            try:
                yield
            finally:
                for server in others:
                    server.process.send_signal(signal.SIGCONT)

        def model_alone(worker: subprocess.Popen) -> float:
            worker.stdin.write("\n")
            worker.stdin.flush()
            return float(worker.stdout.readline())

        # The image, then each parameter's default (the direction A2B, the identity checkpoint): an undocumented
        # endpoint such as /show gets no defaults from gradio_client.
        info = json.load(urllib.request.urlopen(f"{app_url}/gradio_api/info?all_endpoints=true"))["named_endpoints"]
        defaults = {name: tuple(p["parameter_default"] for p in info[name]["parameters"][1:])
                    for name in ("/translate", "/show") if name in info}
        endpoints = {"minimal app": (minimal_url, "/identity", ()), "/translate": (app_url, "/translate", defaults["/translate"]),
                     **({"/show (the page)": (app_url, "/show", defaults["/show"])} if "/show" in defaults else {})}

        def call(client, name: str, image: Path = image) -> tuple[float, float | None]:
            """Seconds of one request, and the model's seconds the app reports in its summary (if any)."""
            _, api_name, args = endpoints[name]
            start = time.perf_counter()
            result = client.predict(handle_file(str(image)), *args, api_name=api_name)
            seconds = time.perf_counter() - start
            found = re.search(r"([0-9.]+) s\s*$", result[-1]) if isinstance(result, (list, tuple)) else None
            return seconds, float(found.group(1)) if found else None

        def connect(url: str) -> Client:
            # Without ssl_verify=False gradio_client loads a CA bundle for each HTTP connection it makes (the
            # upload, the queue, one per output file), plain http:// too: ~75 ms each here, the client's cost.
            return Client(url, verbose=False, ssl_verify=False)

        clients = {name: connect(url) for name, (url, _, _) in endpoints.items()}
        one: dict[str, list[tuple[float, float | None]]] = {name: [] for name in endpoints}
        alone_s: dict[str, list[float]] = {policy: [] for policy in alone}
        for _ in range(requests + 2):  # rounds of one request each, the first two warm up
            for name, client in clients.items():
                with running(endpoints[name][0]):
                    one[name].append(call(client, name))
            with running(None):
                for policy, worker in alone.items():
                    alone_s[policy].append(model_alone(worker))
        one = {name: pairs[2:] for name, pairs in one.items()}
        by_policy = {policy: stats(times[2:]) for policy, times in alone_s.items()}
        policy = min(by_policy, key=lambda p: by_policy[p]["median"])
        model_s = by_policy[policy]
        # Requests/s: 4 concurrent clients, in two batches that alternate with batches of one client, so that
        # a change in the machine's load reaches both alike.
        four, walls = {}, {}
        for name, (url, _, _) in endpoints.items():
            each, four[name], walls[name] = [connect(url) for _ in range(4)], [], {1: 0.0, 4: 0.0}
            with running(url):
                for _ in range(2):
                    start = time.perf_counter()
                    for _ in range(requests // 2):
                        call(clients[name], name)
                    walls[name][1] += time.perf_counter() - start
                    start = time.perf_counter()
                    with ThreadPoolExecutor(4) as pool:
                        four[name] += [p for ps in pool.map(lambda c, i: [call(c, name, i) for _ in range(requests // 8)],
                                                            each, images) for p in ps]
                    walls[name][4] += time.perf_counter() - start

    def runs(name: str) -> dict:
        floor = 0 if name == "minimal app" else model_s["median"]
        latencies, pairs = [p[0] for p in one[name]], four[name]
        return {"one_client": summary(latencies, floor, requests // 2 * 2 / walls[name][1],
                                      [p[1] for p in one[name] if p[1] is not None]),
                "four_clients": summary([p[0] for p in pairs], floor, len(pairs) / walls[name][4],
                                        [p[1] for p in pairs if p[1] is not None])}

    results = {name: runs(name) for name in endpoints}
    out = {"image": "256x256 JPEG, A2B with identity checkpoint (bundled preview model), cycle = 2 generator calls",
           "startup_s": startup, "model_alone_s": model_s, "model_alone_wait_policy": policy,
           "model_alone_by_wait_policy": by_policy, "minimal_app": results.pop("minimal app"),
           **results.pop("/translate"), **({"page": results.pop("/show (the page)")} if results else {})}
    minimal_p50 = out["minimal_app"]["one_client"]["latency_s"]["median"]
    out["adds_minus_minimal_app_s"] = {name: s["one_client"]["overhead_s"]["median"] - minimal_p50
                                       for name, s in (("/translate", out), ("/show", out.get("page"))) if s}
    alone_text = ", ".join(f"{p} {ms(s, 'median')}" for p, s in by_policy.items())
    row = table(f"App end to end through gradio_client ({out['image']}; app started in {startup:.1f} s), interleaved "
                f"with the smallest Gradio image app and cycle() alone in a plain process (p50 by OpenMP wait "
                f"policy: {alone_text} ms); the app adds = latency - the faster p50 alone, ms:",
                ["endpoint", "clients", "requests", "latency p50 / p95", "model in the app p50", "app adds p50 / p95",
                 "requests/s"])
    for name, s in (("minimal app", out["minimal_app"]), ("/translate", out), ("/show (the page)", out.get("page"))):
        for n in (1, 4) if s else ():
            c = s["one_client" if n == 1 else "four_clients"]
            row(name, n, c["requests"], ms(c["latency_s"], "median", "p95"),
                ms(c["model_in_app_s"], "median") if "model_in_app_s" in c else "",
                "" if name == "minimal app" else ms(c["overhead_s"], "median", "p95"), f"{c['throughput_per_s']:.2f}")
    print(f"\nWhat the app adds (p50) beyond the minimal app's p50 ({minimal_p50 * 1000:.0f} ms): "
          + ", ".join(f"{name} {v * 1000:+.0f} ms" for name, v in out["adds_minus_minimal_app_s"].items()))
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


SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def in_fused_adam(event) -> bool:
    """Whether a profiler event runs inside the fused Adam kernel: the CPU's reads its own CPU step
    counters (memory reads, not syncs: the CUDA kernel has none)."""
    while event is not None and not event.name.startswith("aten::_fused_adam"):
        event = event.cpu_parent
    return event is not None


def profile_counts(step, steps: int, device: torch.device) -> dict:
    """Per step of `step()`, from torch.profiler over `steps` steps: ATen calls, scalar reads
    (`aten::_local_scalar_dense`; on the CPU also those of the fused CPU Adam kernel, which reads its
    own CPU step counters), kernel launches, host-device synchronisations and the device's busy time."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    step()
    sync()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    events = prof.events()

    reads = [e for e in events if e.name == "aten::_local_scalar_dense"]
    device_us = sum(e.device_time for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                    and e.name not in LAUNCH_CALLS and not e.name.startswith(("Memcpy", "Memset")))
    return {"aten_calls": sum(e.name.startswith("aten::") for e in events) / steps,
            "scalar_reads": len(reads) / steps,
            "scalar_reads_outside_fused_adam": sum(not in_fused_adam(e) for e in reads) / steps,
            "kernel_launches": sum(e.name in LAUNCH_CALLS for e in events) / steps,
            "syncs": sum(e.name in SYNC_CALLS for e in events) / steps,
            "device_ms": device_us / 1000 / steps}


def bench_profile(device: torch.device, steps: int, graphs: tuple[str, ...] = (), profiled: int = 5) -> list[dict]:
    """Where a training step's time goes: Trainer (the loop's per-step work: set_lr and train_step)
    beside benchmarks/reference.py's PlainLoop (independent networks, default Adam), `steps`
    interleaved steps of each timed, then `profiled` of each profiled (their counts are per step). On the CPU the host-bound proxy (width
    4, 32 px, one thread, fp32: almost no arithmetic, the step is dispatch); on CUDA the real sizes at
    256 px, Trainer in its default precision in both layouts (FAST_PATHS) and, in the `graphs` layouts
    (those whose graphs_against_eager passed), with --cuda-graphs, timed once its pools are full."""
    threads = torch.get_num_threads()
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)
        setups = {"previews' layout, width 4, 32 px": (ModelConfig(ngf=4, ndf=4, n_blocks=6), 32),
                  "paper's layout, width 4, 32 px": (ModelConfig(ngf=4, ndf=4, n_blocks=9), 32)}
    else:
        setups = {"previews' model, 256 px": (ModelConfig(ngf=32, n_blocks=6), 256),
                  "paper's model, 256 px": (ModelConfig(), 256)}
    configs = {"Trainer": TrainConfig(amp="none")}
    if cuda:
        configs = {label: config for label in FAST_PATHS
                   if not (config := train_config(label)).cuda_graphs or config.memory_format in graphs}
    row = table(f"Profile of one training step, batch 1, {torch.get_num_threads()} thread(s) (per step: wall ms min / "
                "median; scalar reads outside the fused Adam kernel in brackets):",
                ["setup", "loop", "wall ms", "ATen calls", "scalar reads", "kernel launches", "syncs", "device ms",
                 "plain / this"])
    rows = []
    for name, (model_config, size) in setups.items():
        g = torch.Generator().manual_seed(0)
        batch = {d: torch.rand(1, 3, size, size, generator=g).mul(2).sub(1).to(device) for d in "AB"}
        plain = PlainLoop(model_config, device)
        loops = {"plain loop (reference.PlainLoop)": lambda: plain.step(batch["A"], batch["B"])}
        for label, config in configs.items():
            trainer = Trainer(config, model_config, device)
            for _ in range(config.pool_size + 2 if config.cuda_graphs else 0):  # past the pools' fill and the capture
                trainer.train_step(batch)
            if config.cuda_graphs and trainer.graph is None:  # the capture failed here (e.g. out of memory)
                print(f"({name}, {label}: the capture failed, so it is not timed)")
                continue
            loops[label] = lambda t=trainer: (t.set_lr(1.0), t.train_step(batch))
        wall = timed(loops, steps, 3, device)  # interleaved: a change of load hits all alike
        base = wall["plain loop (reference.PlainLoop)"]["median"]
        for loop, fn in loops.items():
            m = {"wall_ms": {k: v * 1000 if k != "n" else v for k, v in wall[loop].items()},
                 **profile_counts(fn, profiled, device)}
            rows.append(r := {"setup": name, "loop": loop, **m, "plain_over_this": base / wall[loop]["median"]})
            row(name, loop, f"{m['wall_ms']['min']:.1f} / {m['wall_ms']['median']:.1f}", f"{m['aten_calls']:.0f}",
                f"{m['scalar_reads']:.0f} ({m['scalar_reads_outside_fused_adam']:.0f})", f"{m['kernel_launches']:.0f}",
                f"{m['syncs']:.0f}", f"{m['device_ms']:.2f}", f"{r['plain_over_this']:.2f}x")
    torch.set_num_threads(threads)
    return rows


# The training step's variants that bench_profile times on CUDA, as TrainConfig fields: the layout, and
# the step replayed as a CUDA graph (only where check_graphs passed for that layout).
FAST_PATHS = {"Trainer": {}, "Trainer, NCHW": {"memory_format": "nchw"},
              "Trainer + CUDA graphs": {"cuda_graphs": True},
              "Trainer + CUDA graphs, NCHW": {"cuda_graphs": True, "memory_format": "nchw"}}


def train_config(label: str, **kw) -> TrainConfig:
    """The TrainConfig of a FAST_PATHS variant."""
    return TrainConfig(**FAST_PATHS[label], **kw)


def train_flags(label: str) -> list[str]:
    """train.py's flags for a FAST_PATHS variant."""
    fields = FAST_PATHS[label]
    return ((["--cuda-graphs"] if fields.get("cuda_graphs") else [])
            + (["--memory-format", fields["memory_format"]] if "memory_format" in fields else []))


def graph_checks(device: str, layout: str) -> dict:
    """--cuda-graphs against the eager step (reference.graphs_against_eager) in one layout, in float32
    and, where the GPU has it, in bf16 autocast (what --amp auto trains in); a failure is recorded, not
    raised. `ok` when every case passed."""
    r: dict = {}
    for amp in ("none", "bf16") if torch.cuda.is_bf16_supported() else ("none",):
        try:
            r[amp] = graphs_against_eager(torch.device(device), ModelConfig(ngf=16, ndf=16, n_blocks=3), amp=amp,
                                          memory_format=layout)
        except Exception as e:  # a capture that fails on this torch or GPU: the eager step stands
            r[amp] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    r["ok"] = all(x["ok"] for x in r.values())
    return r


def _send_graph_checks(device: str, layout: str, conn) -> None:
    conn.send(graph_checks(device, layout))


def check_graphs(device: torch.device, timeout: float = 120) -> dict:
    """graph_checks for each layout in a process of its own, so that a graph that faults the GPU (a
    sticky CUDA error, which would fail every later CUDA call) or hangs it, or a capture CUDA refused
    midway, takes only that process down; the benchmark goes on without graphs in that layout, as
    when a check disagrees."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")  # CUDA is already initialised here: no fork
    r = {}
    for layout in ("channels_last", "nchw"):
        receive, send = spawn.Pipe(duplex=False)
        process = spawn.Process(target=_send_graph_checks, args=(str(device), layout, send), daemon=True)
        process.start()
        send.close()
        try:
            if not receive.poll(timeout):
                raise TimeoutError(f"no answer in {timeout:g} s")
            r[layout] = receive.recv()
        except (EOFError, OSError, TimeoutError) as e:  # it died (EOF) or hung
            r[layout] = {"ok": False, "error": f"the check's process ended: {type(e).__name__}: {e or 'it died'}"}
        finally:
            process.kill()
            process.join()
    print(f"\nCUDA graphs against the eager step: {json.dumps(r)}")
    return r


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
    fast = min(measured, key=lambda label: sum(median_s(m, label) / median_s(m, "Trainer") for m in ("paper", "previews")))
    return {**figures(fast), "fast_path": fast, "train_flags": train_flags(fast),
            "cuda_graphs": FAST_PATHS[fast].get("cuda_graphs", False),
            "plain": figures("plain loop (reference.PlainLoop)"),
            "variants": {label: figures(label) for label in measured}}


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes, photos and repeats (~3 min on 2 cores)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--data", type=Path, default=ROOT / "datasets" / "horse2zebra",
                        help="horse2zebra (trainA, testA); without it a synthetic image (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--only", default="",
                        help="comma-separated sections: generator,accuracy,app,big,training,profile,batches,data")
    parser.add_argument("--profile", action="store_true",
                        help="only where a training step's time goes (the profile section; --only profile)")
    parser.add_argument("--tiny", action="store_true",
                        help="training: an 8-channel, 2-block model at 32 px, once (scripts/gpu_check.sh --dry-run)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each row shows in a log file as it comes
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device, quick, data = torch.device(args.device), args.quick, args.data
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    sections = set(args.only.split(",")) if args.only else {"generator", "accuracy", "app", "big", "training",
                                                             "profile", "data"}
    if args.profile:
        sections = {"profile"}
    r: dict = {"command": " ".join(["python benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])]),
               "quick": quick, "device": device.type, "machine": (m := machine_info())}
    print(f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), native bf16 {m['native_bf16']}, "
          f"torch {m['torch']}, {m['threads']} threads, load average {m['load_average_at_start'][0]:.2f} at start.")
    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after each section: a run stopped by a time limit keeps what it measured
        write_atomic(args.out, (json.dumps(r, indent=2) + "\n").encode())

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
