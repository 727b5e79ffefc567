"""The fast path where it serves (cyclegan/backends.py): `python app.py` with the default backend beside
CYCLEGAN_BACKEND=eager and beside a model-less Gradio app with the same six outputs
(benchmarks/modelless_app.py), one client, requests alternated, 256 px inputs varied, after the fast path
is ready; another visitor's page loads beside a long translation; each app's first request and its
time to the fast path from a cold and a warm compile cache;
and a 640×480 video's frames per second, eager against the fast path. Prints markdown tables and writes
benchmarks/serving.json.

    python benchmarks/serving.py --data ../shared/datasets/horse2zebra             # the preview model
    python benchmarks/serving.py --data ../shared/datasets/horse2zebra --paper     # ngf 64, 9 blocks
    python benchmarks/serving.py --only video
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

from benchmarks.backends import CpuShare, UNDER_LOAD  # noqa: E402
from benchmarks.core import PREVIEW, compare_8bit, machine_info, photos, sample_photo, stats, table  # noqa: E402
from benchmarks.sections.inference import trained_briefly  # noqa: E402
from cyclegan import CycleGAN, backends, translate  # noqa: E402
from cyclegan.data import load_rgb, to_tensor  # noqa: E402
from cyclegan.files import write_atomic  # noqa: E402
from cyclegan.inference import run_any_size  # noqa: E402
from cyclegan.translate import translate_video  # noqa: E402

READY = re.compile(r"^fast path(?: ready: |: eager ).*$", re.M)  # the choice made, not "compiling"


def inputs(data: Path, folder: Path, n: int = 8) -> list[Path]:
    """`n` different 256 px test photos (the synthetic image where there are none)."""
    files = photos(data)[:n]
    paths = []
    for i in range(n):
        path = folder / f"input-{i}.jpg"
        image = load_rgb(files[i]).resize((256, 256)) if i < len(files) else sample_photo(data, 256, 256 - 4 * i)
        image.save(path, quality=95)
        paths.append(path)
    return paths


def wait_for(log: Path, pattern: re.Pattern, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := pattern.search(log.read_text()):
            return found.group(0)
        time.sleep(0.2)
    raise TimeoutError(f"no line matching {pattern.pattern!r} in {log} after {timeout:.0f} s")


@contextlib.contextmanager
def app(name: str, folder: Path, script: str = "app.py", **env: str):
    """A served app whose output goes to folder/NAME.log; yields (url, log, seconds to start)."""
    from screenshot import serve_app
    log = folder / f"{name}.log"
    start = time.perf_counter()
    with serve_app(script=script, log_file=log, **env) as url:
        yield url, log, time.perf_counter() - start


def call(client, image: Path) -> tuple[float, float | None]:
    """Seconds of one /translate request, and the model's seconds that its summary reports."""
    from gradio_client import handle_file
    start = time.perf_counter()
    result = client.predict(handle_file(str(image)), "A2B", True, api_name="/translate")
    seconds = time.perf_counter() - start
    found = re.search(r"([0-9.]+) s\s*$", result[-1])
    return seconds, float(found.group(1)) if found else None


def connect(url: str):
    from gradio_client import Client
    return Client(url, verbose=False, ssl_verify=False)  # a CA bundle per connection costs the client ~75 ms


# OpenMP's own default between operations (spin ~3 ms, then sleep) instead of the app's PASSIVE (sleep at
# once): libgomp's GOMP_SPINCOUNT overrides the wait policy's spin count.
SPIN = {"GOMP_SPINCOUNT": "300000"}


def bench_requests(env: dict, images: list[Path], folder: Path, rounds: int, spin: bool = False) -> dict:
    """The default app, the eager app and the model-less app (with `spin`, the first two again with
    OpenMP spinning), requests alternated after the fast path is ready; each server runs alone while it
    answers (an idle Gradio server wakes every millisecond)."""
    variants = {"default": env, "CYCLEGAN_BACKEND=eager": {"CYCLEGAN_BACKEND": "eager", **env}}
    if spin:
        variants.update({f"{name}, OpenMP spinning": {**v, **SPIN} for name, v in variants.items()})
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(app(f"app{i}", folder, **v)) for i, (name, v) in enumerate(variants.items())}
        servers["model-less Gradio app"] = stack.enter_context(app("modelless", folder, "benchmarks/modelless_app.py"))
        ready = "; ".join(wait_for(log, READY) for name, (_, log, _) in servers.items() if "eager" not in name
                          and "model-less" not in name)
        print(f"default app: {ready}")
        clients = {name: connect(url) for name, (url, _, _) in servers.items()}
        times: dict[str, list[tuple[float, float | None]]] = {name: [] for name in servers}
        for i in range(rounds + 1):  # the first round warms up
            order = list(servers)[i % len(servers):] + list(servers)[:i % len(servers)]
            for name in order:
                others = [s[0].process for n, s in servers.items() if n != name]
                for p in others:
                    p.send_signal(signal.SIGSTOP)
                try:
                    t = call(clients[name], images[i % len(images)])
                finally:
                    for p in others:
                        p.send_signal(signal.SIGCONT)
                if i:
                    times[name].append(t)
    out = {}
    for name, ts in times.items():
        total = stats([t for t, _ in ts])
        model = stats([m for _, m in ts]) if all(m is not None for _, m in ts) else None
        out[name] = {"latency_s": total, "model_s": model,
                     "own_s": stats([t - (m or 0) for t, m in ts])}
    out["ready"] = ready
    return out


def bench_visitors(env: dict, data: Path, folder: Path, loads: int = 40) -> dict:
    """Another visitor during a long translation: one client translates a 1024×1024 photo again and
    again while another fetches the page's /config every 0.2 s; its latency, default app against eager
    (each alone). A pass that held Python's interpreter lock kept the page waiting for seconds."""
    import threading
    import urllib.request
    from gradio_client import handle_file
    photo = folder / "photo-1024.png"
    sample_photo(data, 1024, 1024).save(photo)
    out = {}
    for name, extra in (("default", {}), ("CYCLEGAN_BACKEND=eager", {"CYCLEGAN_BACKEND": "eager"})):
        with app(f"visitors-{len(out)}", folder, **env, **extra) as (url, log, _):
            if not extra:
                wait_for(log, READY)
            client, running, translations, page = connect(url), [True], [], []
            client.predict(handle_file(str(photo)), "A2B", True, api_name="/translate")  # warm

            def translate():
                while running[0]:
                    translations.append(call(client, photo)[0])
            worker = threading.Thread(target=translate)
            worker.start()
            time.sleep(1)
            for _ in range(loads):
                start = time.perf_counter()
                urllib.request.urlopen(f"{url}/config", timeout=60).read()
                page.append(time.perf_counter() - start)
                time.sleep(0.2)
            running[0] = False
            worker.join()
        out[name] = {"page_s": {**stats(page), "max": max(page)}, "translation_1024_s": stats(translations)}
        print(f"{name}: /config p50 {out[name]['page_s']['median'] * 1000:.0f} ms, p95 "
              f"{out[name]['page_s']['p95'] * 1000:.0f}, max {max(page) * 1000:.0f} ms beside 1024 px translations "
              f"of {out[name]['translation_1024_s']['median']:.2f} s")
    return out


def bench_first_requests(env: dict, image: Path, folder: Path, rounds: int) -> dict:
    """Each app's first request, right after it answers its page (the default's fast path compiling
    meanwhile, from an empty compile cache: the longest it competes), fresh processes alternated."""
    firsts: dict[str, list[float]] = {"default": [], "CYCLEGAN_BACKEND=eager": []}
    for i in range(rounds):
        for name in (list(firsts) if i % 2 == 0 else list(firsts)[::-1]):
            extra = ({"CYCLEGAN_BACKEND": "eager"} if name != "default" else
                     {backends.CACHE_ENV: str(folder / f"first-cache-{i}")})
            with app(f"first-{i}", folder, **env, **extra) as (url, _, _):
                firsts[name].append(call(connect(url), image)[0])
    return {name: stats(v) for name, v in firsts.items()}


def bench_restarts(env: dict, folder: Path) -> dict:
    """Seconds from `python app.py` to its fast-path line: with an empty compile cache, then again."""
    cache = folder / "compile-cache"
    out = {}
    for kind in ("cold", "warm"):
        start = time.perf_counter()
        with app(f"restart-{kind}", folder, **{backends.CACHE_ENV: str(cache)}, **env) as (_, log, _):
            line = wait_for(log, READY)
            out[kind] = {"seconds_to_line": time.perf_counter() - start, "line": line}
            print(f"{kind} cache: {out[kind]['seconds_to_line']:.0f} s to `{line}`")
    return out


def bench_video(model: CycleGAN, data: Path, folder: Path, frames: int, rounds: int) -> dict:
    """Frames per second of translate_video on a 640×480 clip of `frames` frames, eager against the fast
    path (compiled first, from an empty cache), alternated; the fast path's 8-bit PSNR against eager fp32
    on a frame; and when the compile repays itself: after how many frames, and how many seconds of eager
    work that is by the estimate `python -m cyclegan.translate` decides on (its PAYS_AFTER)."""
    import av
    clip = folder / "clip.mp4"
    photo = sample_photo(data, 640 + frames * 8, 480)
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for i in range(frames):  # a pan across the photo
            frame = av.VideoFrame.from_image(photo.crop((i * 8, 0, i * 8 + 640, 480)))
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    G = model.G_AB
    x = to_tensor(photo.crop((0, 0, 640, 480))).unsqueeze(0)
    estimate = translate.eager_seconds_a_pixel(G, "auto") * 640 * 480  # an eager frame's model time, estimated
    with torch.inference_mode(), mock.patch.dict(os.environ, {backends.CACHE_ENV: str(folder / "video-cache")}):
        ref = G(x)  # eager fp32
        start = time.perf_counter()
        backends.start([G], "compile", blocking=True, log=print)
        compile_s = time.perf_counter() - start
        fast = backends.FAST_PATHS.pop(G)
    fps: dict[str, list[float]] = {"eager": [], "fast path": []}
    for i in range(rounds):
        for name in (list(fps) if i % 2 == 0 else list(fps)[::-1]):
            if name == "fast path":
                backends.FAST_PATHS[G] = fast
            start = time.perf_counter()
            translate_video(model, clip, folder / f"out-{name}.mp4")
            fps[name].append(frames / (time.perf_counter() - start))
            backends.FAST_PATHS.pop(G, None)
    backends.FAST_PATHS[G] = fast
    accuracy = compare_8bit(run_any_size(G, x), ref)
    backends.FAST_PATHS.pop(G)
    eager_auto = compare_8bit(run_any_size(G, x), ref)
    saved = 1 / statistics.median(fps["eager"]) - 1 / statistics.median(fps["fast path"])  # seconds a frame
    repaid = compile_s / saved if saved > 0 else math.inf
    return {"frames": frames, "fps": {k: stats(v) for k, v in fps.items()},
            "psnr_vs_eager_fp32": {"fast path": accuracy, "eager (precision auto)": eager_auto},
            "compile_s": compile_s, "repaid_after_frames": repaid,
            "repaid_after_eager_s_estimated": repaid * estimate, "cli_pays_after_s": translate.PAYS_AFTER}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "datasets" / "horse2zebra")
    parser.add_argument("--paper", action="store_true", help="the paper-size model (ngf 64, 9 blocks) instead of the preview")
    parser.add_argument("--only", default="requests,visitors,first,restarts,video",
                        help="comma-separated parts (default: all)")
    parser.add_argument("--rounds", type=int, default=12, help="request rounds (default: %(default)s)")
    parser.add_argument("--spin", action="store_true", help="also both apps with OpenMP's default spinning")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "serving.json")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(os.cpu_count() or 1)
    parts, share, started = args.only.split(","), CpuShare(), time.perf_counter()
    m = machine_info()
    print(f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), torch {m['torch']}, "
          f"load average {m['load_average_at_start'][0]:.2f} at start.")
    model = trained_briefly(args.data) if args.paper else CycleGAN.from_pretrained(PREVIEW)
    label = "paper size (ngf 64, 9 blocks)" if args.paper else "preview (ngf 32, 6 blocks)"
    r: dict = {"command": " ".join(["python benchmarks/serving.py", *(argv if argv is not None else sys.argv[1:])]),
               "machine": m, "model": label}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {}
        if args.paper:  # the paper-size model first: the app's default
            model.save_pretrained(folder / "paper")
            env["CYCLEGAN_MODELS"] = str(folder / "paper")
        images = inputs(args.data, folder)
        if "requests" in parts:
            r["requests"] = q = bench_requests(env, images, folder, args.rounds, args.spin)
            row = table(f"/translate, 256 px, {label}, {args.rounds} requests each, alternated (ms p50 / min; the "
                        "model's time the summary reports; the rest is the app's own):",
                        ["app", "latency p50 / min", "model p50", "app's own p50"])
            for name, s in [(n, s) for n, s in q.items() if n != "ready"]:
                row(name, f"{s['latency_s']['median'] * 1000:.0f} / {s['latency_s']['min'] * 1000:.0f}",
                    f"{s['model_s']['median'] * 1000:.0f}" if s["model_s"] else "–", f"{s['own_s']['median'] * 1000:.0f}")
            q["speedup_p50"] = q["CYCLEGAN_BACKEND=eager"]["latency_s"]["median"] / q["default"]["latency_s"]["median"]
            print(f"default against eager: {q['speedup_p50']:.2f}x at p50")
            if args.spin:
                spin = q["CYCLEGAN_BACKEND=eager, OpenMP spinning"]["latency_s"]["median"] / q["default, OpenMP spinning"]["latency_s"]["median"]
                print(f"both spinning, default against eager: {spin:.2f}x at p50")
        if "visitors" in parts:
            r["visitors"] = bench_visitors(env, args.data, folder)
        if "first" in parts:
            r["first_request"] = f = bench_first_requests(env, images[0], folder, 2)
            print("first request (s, median of fresh starts): "
                  + ", ".join(f"{k} {v['median']:.2f}" for k, v in f.items()))
        if "restarts" in parts:
            r["restarts"] = bench_restarts(env, folder)
        if "video" in parts:
            r["video"] = v = bench_video(model, args.data, folder, frames=12, rounds=2)
            print(f"640×480 video, {label}: " + ", ".join(f"{k} {s['median']:.2f} frames/s" for k, s in v["fps"].items())
                  + f"; fast path {v['psnr_vs_eager_fp32']['fast path']['psnr_db']:.1f} dB against eager fp32")
            print(f"a compile from an empty cache took {v['compile_s']:.0f} s and was repaid after "
                  f"{v['repaid_after_frames']:.0f} frames, {v['repaid_after_eager_s_estimated']:.0f} s of eager work "
                  f"by the CLI's estimate (it compiles from {translate.PAYS_AFTER} s)")
    others = share.others()
    r.update(load_average_at_end=[round(x, 2) for x in os.getloadavg()], others_cpu_share=round(others, 3),
             under_load=others > UNDER_LOAD, seconds=time.perf_counter() - started)
    print(f"\nLoad average {r['load_average_at_end'][0]:.2f} at end; other processes used {others:.0%} of the cores"
          + (" -- UNDER LOAD: these timings compare nothing." if r["under_load"] else " (idle)."))
    write_atomic(args.out, (json.dumps(r, indent=2) + "\n").encode())
    print(f"wrote {args.out} ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
