"""The app end to end (`python app.py` served, called through gradio_client) beside its floors: the
smallest Gradio image app and the model alone in a plain process; then 4 concurrent clients against one
(bench.py's section app). Gradio is imported only when the section runs: the GPU machine has none."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.core import PREVIEW, ROOT, ms, sample_photo, stats, table

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


def plain_env(policy: str) -> dict:
    """The plain process's environment: torch's thread count here, and the OpenMP wait policy `policy`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return {**env, "OMP_NUM_THREADS": str(torch.get_num_threads()),
            **({"OMP_WAIT_POLICY": policy} if policy != "default" else {})}


def connect(url: str):
    """A gradio_client Client of the server at `url`."""
    # Imported here, not at the top: the GPU machine (scripts/gpu_check.sh) has no gradio or selenium.
    from gradio_client import Client

    # Without ssl_verify=False gradio_client loads a CA bundle for each HTTP connection it makes (the
    # upload, the queue, one per output file), plain http:// too: ~75 ms each here, the client's cost.
    return Client(url, verbose=False, ssl_verify=False)


class AppServers:
    """What the section measures, started in `stack`: `python app.py`, MINIMAL_APP and CYCLE_ALONE once per
    wait policy, on 256x256 photos written to `tmp`; `endpoints` names each endpoint's (server, api name,
    the arguments after the image)."""

    def __init__(self, stack: contextlib.ExitStack, tmp: Path, data: Path):
        sys.path.insert(0, str(ROOT / "scripts"))
        from screenshot import serve_app

        # One file per concurrent client: Gradio rewrites an output's cache file in place when another request
        # makes the same one, and a client that is reading it then gets an empty file.
        self.images, minimal = [tmp / f"horse-{i}.jpg" for i in range(4)], tmp / "minimal_app.py"
        for i, path in enumerate(self.images):
            sample_photo(data, 256, 256).save(path, quality=95 - i)
        minimal.write_text(MINIMAL_APP)
        start = time.perf_counter()
        self.app_url = stack.enter_context(serve_app())
        self.startup = time.perf_counter() - start
        self.minimal_url = stack.enter_context(serve_app(script=minimal))
        self.alone = {policy: stack.enter_context(subprocess.Popen(
            [sys.executable, "-c", CYCLE_ALONE, str(PREVIEW), str(self.images[0])], cwd=ROOT, env=plain_env(policy),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)) for policy in WAIT_POLICIES}
        # The image, then each parameter's default (the direction A2B, the identity checkpoint): an undocumented
        # endpoint such as /show gets no defaults from gradio_client.
        url = f"{self.app_url}/gradio_api/info?all_endpoints=true"
        info = json.load(urllib.request.urlopen(url))["named_endpoints"]
        defaults = {name: tuple(p["parameter_default"] for p in info[name]["parameters"][1:])
                    for name in ("/translate", "/show") if name in info}
        self.endpoints = {"minimal app": (self.minimal_url, "/identity", ()),
                          "/translate": (self.app_url, "/translate", defaults["/translate"]),
                          **({"/show (the page)": (self.app_url, "/show", defaults["/show"])}
                             if "/show" in defaults else {})}

    @contextlib.contextmanager
    def running(self, url):
        """Only the server at `url` (or none) runs; the other is stopped meanwhile."""
        others = [s for s in (self.app_url, self.minimal_url) if s != url]
        for server in others:
            server.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            for server in others:
                server.process.send_signal(signal.SIGCONT)

    @staticmethod
    def model_alone(worker: subprocess.Popen) -> float:
        worker.stdin.write("\n")
        worker.stdin.flush()
        return float(worker.stdout.readline())

    def call(self, client, name: str, image: Path | None = None) -> tuple[float, float | None]:
        """Seconds of one request, and the model's seconds the app reports in its summary (if any)."""
        from gradio_client import handle_file

        _, api_name, args = self.endpoints[name]
        image = image or self.images[0]
        start = time.perf_counter()
        result = client.predict(handle_file(str(image)), *args, api_name=api_name)
        seconds = time.perf_counter() - start
        found = re.search(r"([0-9.]+) s\s*$", result[-1]) if isinstance(result, (list, tuple)) else None
        return seconds, float(found.group(1)) if found else None


def one_client_rounds(servers: AppServers, clients: dict, requests: int) -> tuple[dict, dict]:
    """`requests` rounds (after two that warm up) of one request to each endpoint, its server alone, then one
    cycle() in each plain process with no server running: each endpoint's call() results, and stats() of
    the model alone by wait policy."""
    one: dict[str, list[tuple[float, float | None]]] = {name: [] for name in servers.endpoints}
    alone_s: dict[str, list[float]] = {policy: [] for policy in servers.alone}
    for _ in range(requests + 2):
        for name, client in clients.items():
            with servers.running(servers.endpoints[name][0]):
                one[name].append(servers.call(client, name))
        with servers.running(None):
            for policy, worker in servers.alone.items():
                alone_s[policy].append(servers.model_alone(worker))
    return ({name: pairs[2:] for name, pairs in one.items()},
            {policy: stats(times[2:]) for policy, times in alone_s.items()})


def four_clients(servers: AppServers, clients: dict, requests: int) -> tuple[dict, dict]:
    """Requests/s: 4 concurrent clients, in two batches that alternate with batches of one client, so that
    a change in the machine's load reaches both alike. Each endpoint's call() results with 4 clients, and
    the wall seconds of its batches by number of clients."""
    four, walls = {}, {}
    for name, (url, _, _) in servers.endpoints.items():
        each, four[name], walls[name] = [connect(url) for _ in range(4)], [], {1: 0.0, 4: 0.0}
        with servers.running(url):
            for _ in range(2):
                start = time.perf_counter()
                for _ in range(requests // 2):
                    servers.call(clients[name], name)
                walls[name][1] += time.perf_counter() - start
                start = time.perf_counter()
                with ThreadPoolExecutor(4) as pool:
                    four[name] += [p for ps in pool.map(lambda c, i: [servers.call(c, name, i)
                                                                      for _ in range(requests // 8)],
                                                        each, servers.images) for p in ps]
                walls[name][4] += time.perf_counter() - start
    return four, walls


def summary(latencies: list[float], model_p50: float, per_s: float, in_app: list[float]) -> dict:
    return {"requests": len(latencies), "latency_s": stats(latencies),
            "overhead_s": stats([t - model_p50 for t in latencies]), "throughput_per_s": per_s,
            **({"model_in_app_s": stats(in_app)} if in_app else {})}


def app_results(one: dict, four: dict, walls: dict, by_policy: dict, requests: int, startup: float) -> dict:
    """The section's record: each endpoint's summary() with one client and with four, against the faster
    wait policy's p50 alone (the minimal app against nothing), and what the app adds beyond the minimal app."""
    policy = min(by_policy, key=lambda p: by_policy[p]["median"])
    model_s = by_policy[policy]

    def runs(name: str) -> dict:
        floor = 0 if name == "minimal app" else model_s["median"]
        latencies, pairs = [p[0] for p in one[name]], four[name]
        return {"one_client": summary(latencies, floor, requests // 2 * 2 / walls[name][1],
                                      [p[1] for p in one[name] if p[1] is not None]),
                "four_clients": summary([p[0] for p in pairs], floor, len(pairs) / walls[name][4],
                                        [p[1] for p in pairs if p[1] is not None])}

    results = {name: runs(name) for name in one}
    out = {"image": "256x256 JPEG, A2B with identity checkpoint (bundled preview model), cycle = 2 generator calls",
           "startup_s": startup, "model_alone_s": model_s, "model_alone_wait_policy": policy,
           "model_alone_by_wait_policy": by_policy, "minimal_app": results.pop("minimal app"),
           **results.pop("/translate"), **({"page": results.pop("/show (the page)")} if results else {})}
    minimal_p50 = out["minimal_app"]["one_client"]["latency_s"]["median"]
    out["adds_minus_minimal_app_s"] = {name: s["one_client"]["overhead_s"]["median"] - minimal_p50
                                       for name, s in (("/translate", out), ("/show", out.get("page"))) if s}
    return out


def print_app(out: dict) -> None:
    """app_results()'s record as a table, and what the app adds."""
    alone_text = ", ".join(f"{p} {ms(s, 'median')}" for p, s in out["model_alone_by_wait_policy"].items())
    row = table(f"App end to end through gradio_client ({out['image']}; app started in {out['startup_s']:.1f} s), "
                f"interleaved with the smallest Gradio image app and cycle() alone in a plain process (p50 by OpenMP "
                f"wait policy: {alone_text} ms); the app adds = latency - the faster p50 alone, ms:",
                ["endpoint", "clients", "requests", "latency p50 / p95", "model in the app p50", "app adds p50 / p95",
                 "requests/s"])
    for name, s in (("minimal app", out["minimal_app"]), ("/translate", out), ("/show (the page)", out.get("page"))):
        for n in (1, 4) if s else ():
            c = s["one_client" if n == 1 else "four_clients"]
            row(name, n, c["requests"], ms(c["latency_s"], "median", "p95"),
                ms(c["model_in_app_s"], "median") if "model_in_app_s" in c else "",
                "" if name == "minimal app" else ms(c["overhead_s"], "median", "p95"), f"{c['throughput_per_s']:.2f}")
    minimal_p50 = out["minimal_app"]["one_client"]["latency_s"]["median"]
    print(f"\nWhat the app adds (p50) beyond the minimal app's p50 ({minimal_p50 * 1000:.0f} ms): "
          + ", ".join(f"{name} {v * 1000:+.0f} ms" for name, v in out["adds_minus_minimal_app_s"].items()))


def bench_app(data: Path, requests: int) -> dict:
    """The app end to end beside its floors, interleaved request by request: the smallest Gradio image app
    (MINIMAL_APP), `python app.py`'s /translate (the API: six outputs, PNG) and the page's own event /show
    (where the app has one), through gradio_client, and cycle() of the same image in a plain process
    (CYCLE_ALONE, the faster of two OpenMP wait policies). What the app adds = its latency minus the
    model's p50 alone, set beside the minimal app's latency. Then 4 concurrent clients of each:
    requests/s against one client's. Each server runs alone while it is measured: an idle Gradio server
    still wakes every millisecond (its queue's loop), which takes the cores from the one measured."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        servers = AppServers(stack, Path(tmp), data)
        clients = {name: connect(url) for name, (url, _, _) in servers.endpoints.items()}
        one, by_policy = one_client_rounds(servers, clients, requests)
        four, walls = four_clients(servers, clients, requests)
    out = app_results(one, four, walls, by_policy, requests, servers.startup)
    print_app(out)
    return out
