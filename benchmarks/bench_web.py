"""Time per image of the browser page (`python -m cyclegan.export_web`) in headless Chromium, served from
127.0.0.1: WASM with one thread (a plain static server), then with two threads (the same folder served
with the COOP/COEP headers that allow them), at 256 and 512 px. Prints a table.

    python benchmarks/bench_web.py weights/horse2zebra-identity          # exports it first (a few minutes)
    python benchmarks/bench_web.py --site site                           # an exported folder

The time is that of G(x) alone (one generator, as the app's translate), after a warm-up run, median of
--repeats runs. tests/test_web.py drives the page with the same helpers.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.screenshot import chromium  # noqa: E402

# Headers that make the page cross-origin isolated, which browsers require before WASM may use threads.
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


@contextlib.contextmanager
def serve_folder(folder: str | os.PathLike, isolated: bool = False) -> Iterator[tuple[str, list[str]]]:
    """Serve `folder` on a free 127.0.0.1 port (with COOP/COEP headers if `isolated`); yields its URL and
    the list of paths (without queries) requested so far."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def end_headers(self) -> None:
            for name, value in (ISOLATION.items() if isolated else ()):
                self.send_header(name, value)
            super().end_headers()

        def log_message(self, format: str, *args) -> None:
            requested.append(self.path.split("?")[0])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", requested
    finally:
        server.shutdown()
        server.server_close()


def page_requests(net_log: Path, origin: str) -> list[str]:
    """The URLs requested on behalf of pages of `origin` (http://host:port), by the page or its workers, from a
    Chromium net log. The browser's own traffic (update checks and the like) has another isolation key."""
    log = json.loads(Path(net_log).read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    site = origin.rsplit(":", 1)[0]  # the isolation key names the site: scheme and host, no port
    starts = [e["params"] for e in log["events"] if e["type"] == start_job and "url" in e.get("params", {})]
    return [p["url"] for p in starts
            if p.get("initiator") == origin or p.get("network_isolation_key", "").startswith(site)]


def wait_for(driver: webdriver.Chrome, statuses: tuple[str, ...], timeout: float = 300) -> str:
    """Wait until document.body.dataset.status is one of `statuses`; an "error" fails with the page's message."""
    def status(d: webdriver.Chrome) -> str | bool:
        value = d.execute_script("return document.body.dataset.status")
        if value == "error":
            raise RuntimeError(f"the page reported: {d.find_element(By.ID, 'message').text}")
        return value if value in statuses else False

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(status, f"the page did not reach {statuses}")


def open_page(driver: webdriver.Chrome, url: str, image: Path, timeout: float = 300) -> None:
    """Load the page at `url` (with its query), choose `image` and wait for the first translation."""
    driver.get(url)
    wait_for(driver, ("ready",), timeout)
    driver.find_element(By.ID, "file").send_keys(str(Path(image).resolve()))
    wait_for(driver, ("done",), timeout)


def run_again(driver: webdriver.Chrome, timeout: float = 300) -> float:
    """Click "Run again" and return the page's G(x) time in seconds."""
    driver.execute_script("document.body.dataset.status = 'clicked'")
    driver.find_element(By.ID, "again").click()
    wait_for(driver, ("done",), timeout)
    return float(driver.execute_script("return document.body.dataset.secondsG"))


def canvas_image(driver: webdriver.Chrome, canvas_id: str) -> Image.Image:
    """The pixels of the canvas with id `canvas_id`, losslessly (PNG)."""
    url = driver.execute_script(f"return document.getElementById('{canvas_id}').toDataURL('image/png')")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def make_picture(path: Path, width: int, height: int) -> Path:
    """A width×height PNG with smooth areas, an edge and noise."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    pixels = np.stack([120 + 80 * np.sin(6 * xx), 140 + 60 * yy, 90 + 70 * (xx > yy)], axis=2)
    pixels += np.random.default_rng(width * height).normal(0, 12, pixels.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def onnxruntime_seconds(path: Path, image: Path, repeats: int) -> list[float]:
    """Seconds per run of the ONNX file `path` on `image` in Python's onnxruntime (one thread), after a warm-up."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = {"image": (np.asarray(Image.open(image).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 127.5 - 1)}
    session.run(None, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, x)
        times.append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=str(ROOT / "weights" / "horse2zebra-identity"))
    parser.add_argument("--site", type=Path, help="an exported folder (default: export `model` to a temp folder)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        site = args.site
        if site is None:
            from cyclegan.export_web import export_web
            site = export_web([args.model], Path(tmp) / "site", webgpu=False)
        models = json.loads((site / "models.json").read_text())["models"]
        images = {size: make_picture(Path(tmp) / f"{size}.png", size, size) for size in args.sizes}
        rows = []
        with chromium() as driver:
            for isolated, threads in ((False, 1), (True, 2)):
                with serve_folder(site, isolated) as (url, _):
                    for size, image in images.items():
                        open_page(driver, f"{url}index.html?backend=wasm&threads={threads}", image)
                        got = int(driver.execute_script("return document.body.dataset.threads"))
                        times = [run_again(driver) for _ in range(args.repeats)]
                        rows.append((size, f"WASM, {got} thread{'s' * (got > 1)}"
                                     + (" (COOP/COEP)" if isolated else ""), min(times), statistics.median(times)))
        for size, image in images.items():  # the same ONNX file in Python, for scale
            times = onnxruntime_seconds(site / models[0]["generators"]["A2B"], image, args.repeats)
            rows.append((size, "Python onnxruntime, 1 thread", min(times), statistics.median(times)))
    m = models[0]
    print(f"{m['name']} (ngf {m['ngf']}, {m['n_blocks']} blocks, {m['weights']} weights), headless Chromium "
          f"{driver.capabilities.get('browserVersion', '?')}, {cpu_name()}, {os.cpu_count()} cores, load average "
          f"{load:.1f} at the start; G(x) seconds per image, min and median of {args.repeats} runs after a warm-up\n")
    print("| size | backend | min s | median s |\n|---|---|---|---|")
    for size, backend, best, median in rows:
        print(f"| {size}×{size} | {backend} | {best:.2f} | {median:.2f} |")

if __name__ == "__main__":
    main()
