"""Shared fixtures: tiny generated datasets and models, so every test runs the real code on CPU."""
from __future__ import annotations

import http.server
import importlib.util
import io
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan import CycleGAN, ModelConfig

TINY = ModelConfig(ngf=8, ndf=8, n_blocks=2, n_layers=2, domain_A="horse", domain_B="zebra")
TINY_FLAGS = ["--ngf", "8", "--ndf", "8", "--n-blocks", "2", "--n-layers", "2", "--load-size", "36",
              "--crop-size", "32", "--device", "cpu", "--workers", "0", "--amp", "none"]
# (--amp none: runs compared with each other must not depend on what "auto" measures on this CPU)
ROOT = Path(__file__).resolve().parents[1]


IN_CI = bool(os.environ.get("CI"))  # .ci/run sets it


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """The fast path's compiled packages (cyclegan/backends.py) of this session, the processes it starts
    included, in a folder of its own: never the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CYCLEGAN_COMPILE_CACHE", str(tmp_path_factory.mktemp("compile-cache")))
        yield


def require(missing: list[str], hint: str) -> None:
    """Skip the calling test module when something it needs is missing (`missing` names it), except in
    CI, where .ci/run installs everything: there the module fails to load, naming what is missing."""
    if missing:
        message = f"{' and '.join(missing)} missing: {hint}"
        if IN_CI:
            raise RuntimeError(message)
        pytest.skip(message, allow_module_level=True)


def missing_modules(*names: str) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


def missing_tools(*tools: str) -> list[str]:
    """The commands (names on PATH, or paths) that are not there or not executable."""
    return [tool for tool in tools if shutil.which(tool) is None]


def levels(x) -> np.ndarray:
    """8-bit levels of a PIL image, a uint8 array, or a tensor in [-1, 1] (the levels that to_image()
    would write), as float64."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().cpu().numpy()
    return np.asarray(x, np.float64)


def psnr(a, b) -> float:
    """PSNR in dB of two 8-bit images (anything levels() takes)."""
    mse = np.mean((levels(a) - levels(b)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def max_level_difference(a, b) -> int:
    """The largest difference, in 8-bit levels, between two images' pixels (anything levels() takes)."""
    return int(np.abs(levels(a) - levels(b)).max())


def run_python(args: list[str], **kw) -> subprocess.CompletedProcess:
    """`python ARGS` in the repository, one torch thread, output captured (e.g. ["train.py", ...])."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, **kw)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_images(folder: Path, n: int, size: tuple[int, int] = (40, 36), seed: int = 0, color=(200, 60, 40)) -> list[Path]:
    """`n` noisy images around `color`, of slightly varying sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = size[0] + 4 * (i % 3), size[1] + 4 * (i % 2)
        pixels = np.clip(np.array(color)[None, None] + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def dataroot(tmp_path: Path) -> Path:
    """trainA (reddish, 5 images), trainB (bluish, 7 images), testA/testB (2 each)."""
    root = tmp_path / "data"
    make_images(root / "trainA", 5, seed=1, color=(200, 60, 40))
    make_images(root / "trainB", 7, seed=2, color=(40, 60, 200))
    make_images(root / "testA", 2, seed=3, color=(200, 60, 40))
    make_images(root / "testB", 2, seed=4, color=(40, 60, 200))
    return root


@pytest.fixture
def tiny_model() -> CycleGAN:
    torch.manual_seed(0)
    random.seed(0)
    return CycleGAN(TINY).init_weights(seed=0).eval()


@pytest.fixture
def zip_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tiny.zip (official layout), big.zip (the same with a 270 kB
    image) and broken.zip; supports Range (416 past the end), except below /norange/, where it always
    sends the whole file; below /slow/ at 100 kB/s."""
    served = tmp_path / "served"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for folder in ("trainA", "trainB", "testA", "testB"):
            image = io.BytesIO()
            Image.new("RGB", (8, 8), (9, 9, 9)).save(image, "PNG")
            zf.writestr(f"tiny/{folder}/0.png", image.getvalue())
    served.mkdir()
    (served / "tiny.zip").write_bytes(buf.getvalue())
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    shutil.copy(served / "tiny.zip", served / "big.zip")
    with zipfile.ZipFile(served / "big.zip", "a") as zf:
        image = io.BytesIO()
        noise.save(image, "PNG")
        zf.writestr("big/trainA/1.png", image.getvalue())
        for name in zf.namelist():
            if name.startswith("tiny/"):
                zf.writestr(name.replace("tiny/", "big/", 1), zf.read(name))
    (served / "broken.zip").write_bytes(b"PK\x03\x04 this is not really a zip" * 10)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append((self.path, self.headers.get("Range")))
            name = self.path.removeprefix("/norange").removeprefix("/slow").lstrip("/")
            data = (served / name).read_bytes() if (served / name).exists() else None
            if data is None:
                self.send_error(404)
                return
            ranged = self.headers.get("Range") and not self.path.startswith("/norange/")
            start = int(self.headers["Range"].split("=")[1].rstrip("-")) if ranged else 0
            if start >= len(data) > 0:
                self.send_error(416)
                return
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            slow = self.path.startswith("/slow/")
            pace = 2048 if slow else len(data)
            try:
                for at in range(start, len(data), pace):
                    self.wfile.write(data[at:at + pace])
                    self.wfile.flush()
                    if slow:
                        time.sleep(0.02)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", buf.getvalue(), requests
    server.shutdown()


# What the session's app may translate per video: 8 frames of 64×48 pass, 16 do not.
TEST_VIDEO_PIXELS = 8 * 64 * 48 * 3 // 2


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`python app.py` as a user runs it, on a free 127.0.0.1 port and offline (bundled weights); its URL.
    It also lists the authors' horse2zebra, whose download fails (a closed port, an empty cache).
    One server for the session: the gradio_client tests and the browser test share it."""
    from scripts.screenshot import serve_app
    # Eager: the fast path's compiles would take the test run's cores (tests/test_backends.py tests it).
    with serve_app(CYCLEGAN_MAX_SIDE="256", CYCLEGAN_MODELS="authors:horse2zebra", CYCLEGAN_BACKEND="eager",
                   CYCLEGAN_AUTHORS_URL=f"http://127.0.0.1:{free_port()}",
                   XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")),
                   CYCLEGAN_MAX_VIDEO_PIXELS=str(TEST_VIDEO_PIXELS)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    """A gradio_client of the session's app server (test_app.py, test_reliability.py)."""
    from gradio_client import Client
    return Client(server, verbose=False)


def measured_precision(monkeypatch, fp32_s: float, bf16_s: float | None) -> list:
    """Make precision "auto" on the CPU see these timings (seconds a call of float32 and of bf16;
    bf16_s=None: a CPU without bf16 in hardware). Returns the list of the networks timed."""
    import cyclegan.inference as inference
    timed = []

    def time_precisions(net, training=False, *args, **kwargs):
        timed.append((type(net).__name__, training))
        return fp32_s, bf16_s

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: bf16_s is not None)
    monkeypatch.setattr(inference, "time_precisions", time_precisions)
    monkeypatch.setattr(inference, "_choices", {})
    return timed
