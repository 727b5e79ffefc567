"""Export models as a static web page that translates in the visitor's browser with ONNX Runtime Web:
`python -m cyclegan.export_web weights/horse2zebra-identity weights/horse2zebra-no-identity --out site`,
then `python -m http.server -d site` (or any static host). The folder needs nothing outside itself."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .cli import prog
from .export_onnx import export, half_weights
from .files import move_into_place, one_line, write_atomic
from .model import CycleGAN

WEB = Path(__file__).resolve().parent / "web"  # index.html, page.js, package.json, package-lock.json (in the wheel too)
PAGE_FILES = ("index.html", "page.js")
# ONNX Runtime Web's files for each backend: the loader and the WASM binary it imports from beside itself.
RUNTIME = {"wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
           "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs",
                      "ort-wasm-simd-threaded.asyncify.wasm")}
MAX_SIDE = 1024  # the page scales larger images down to this, as the app tiles above it
MIN_FP16_PSNR = 50.0  # 8-bit PSNR of float16 weights against float32 on a test image; below it, float32 is kept


def runtime_folder(web: Path = WEB) -> Path:
    """Where npm installs ONNX Runtime Web: beside the page in a checkout (git-ignored), else, for an
    installed package, in the user's cache, one folder per package-lock.json (site-packages may be
    read-only, and `pip uninstall` would leave a node_modules behind there)."""
    if (web.parent.parent / "pyproject.toml").is_file():
        return web
    lock = hashlib.sha256((web / "package-lock.json").read_bytes()).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cyclegan-kit" / f"onnxruntime-web-{lock[:12]}"


def install_runtime(web: Path = WEB) -> Path:
    """`npm ci` of `web`'s package-lock.json in runtime_folder(web) (once per lock file); returns
    onnxruntime-web's dist folder."""
    folder = runtime_folder(web)
    dist = folder / "node_modules" / "onnxruntime-web" / "dist"
    stamp = folder / "node_modules" / ".cyclegan-lock-sha256"
    lock = hashlib.sha256((web / "package-lock.json").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == lock and dist.is_dir():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: it installs ONNX Runtime Web (apt-get install nodejs npm)")
    if folder != web:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(web / name, folder / name)
    # --ignore-scripts: the runtime's files are plain downloads; no package needs to run code here.
    done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=folder,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"npm ci in {folder} failed: {(done.stderr or done.stdout)[-800:]}")
    stamp.write_text(lock)
    return dist


def folder_name(source: str) -> str:
    """A folder name for a model folder or Hub repo id: its last part ('user/repo' -> 'user--repo')."""
    path = Path(source)
    name = path.resolve().name if path.is_dir() else source.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "model"


def psnr_8bit(reference: Path, candidate: Path, size: int = 128) -> float | None:
    """8-bit PSNR of `candidate`'s output against `reference`'s on a smooth test image with noise,
    or None without onnxruntime."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        return None
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    x = np.stack([yy, xx, (yy + xx) / 2])[None] * 2 - 1 + np.random.default_rng(0).normal(0, 0.1, (1, 3, size, size))
    x = x.clip(-1, 1).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    to_8bit = [np.round((np.clip(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                                 .run(None, {"image": x})[0], -1, 1) + 1) * 127.5) for path in (reference, candidate)]
    mse = float(((to_8bit[0] - to_8bit[1]) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def export_generators(source: str, folder: Path, fp16: bool) -> tuple[dict, list[str]]:
    """Both generators of `source` as folder/A2B.onnx and folder/B2A.onnx; (its entry in models.json, notes)."""
    model = CycleGAN.from_pretrained(source)
    folder.mkdir(parents=True)
    notes, weights = [], "fp32"
    for direction in ("A2B", "B2A"):
        path = folder / f"{direction}.onnx"
        export(source, str(path), direction)
        if fp16:
            half = path.with_name(f"{direction}.fp16.onnx")
            shutil.copyfile(path, half)
            half_weights(str(half))
            psnr = psnr_8bit(path, half)
            if psnr is not None and psnr < MIN_FP16_PSNR:
                notes.append(f"{path}: float16 weights give {psnr:.1f} dB (< {MIN_FP16_PSNR:.0f}); kept float32")
                half.unlink()
            else:
                move_into_place(half, path)
                weights = "fp16"
                check = ("not checked (no onnxruntime)" if psnr is None else "the same output as float32"
                         if psnr == float("inf") else f"{psnr:.1f} dB against float32")
                notes.append(f"{path}: float16 weights, {check}")
    training = model.info.get("training", {})
    entry = {"name": folder.name, "domains": {"A": model.config.domain_A, "B": model.config.domain_B},
             "identity": float(training.get("lambda_identity", 0) or 0) > 0, "weights": weights,
             "ngf": model.config.ngf, "n_blocks": model.config.n_blocks,
             "generators": {d: f"models/{folder.name}/{d}.onnx" for d in ("A2B", "B2A")}}
    return entry, notes


def export_web(sources: list[str], out: str | os.PathLike, fp16: bool = True, webgpu: bool = True,
               max_side: int = MAX_SIDE) -> Path:
    """Write the page, the generators of every model in `sources` and ONNX Runtime Web into `out`.
    The folder is built beside `out` and renamed into place, replacing an earlier export there."""
    out = Path(out)
    if out.exists() and not (out / "models.json").exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not an exported page; choose an empty or new folder")
    names = [folder_name(s) for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"two models would share a folder name: {', '.join(names)}")
    dist = install_runtime()
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        models = []
        for source, name in zip(sources, names):
            entry, notes = export_generators(source, build / "models" / name, fp16)
            models.append(entry)
            for note in notes:
                print(note.replace(str(build), str(out)), file=sys.stderr)
        (build / "ort").mkdir()
        for backend in ("wasm", "webgpu") if webgpu else ("wasm",):
            for file in RUNTIME[backend]:
                shutil.copyfile(dist / file, build / "ort" / file)
        for file in PAGE_FILES:
            shutil.copyfile(WEB / file, build / file)
        manifest = {"models": models, "max_side": max_side, "webgpu": webgpu,
                    "runtime": f"onnxruntime-web {json.loads((dist.parent / 'package.json').read_text())['version']}"}
        write_atomic(build / "models.json", (json.dumps(manifest, indent=2) + "\n").encode())
        build.chmod(0o755)  # mkdtemp's 0700 would hide the page from a web server running as another user
        move_into_place(build, out)  # an earlier export is kept until the new one is in
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("python -m cyclegan.export_web"), description=__doc__)
    parser.add_argument("sources", nargs="+", metavar="MODEL",
                        help="model folder or Hub repo id; with two (with and without identity loss) the page "
                             "offers the identity-loss toggle")
    parser.add_argument("--out", required=True, help="folder to write (replaced if it holds an earlier export)")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights (default: float16 weights where "
                                                             f"they measure at least {MIN_FP16_PSNR:.0f} dB)")
    parser.add_argument("--no-webgpu", action="store_true",
                        help="WASM only: leaves out the 27 MB WebGPU build of the runtime")
    parser.add_argument("--max-side", type=int, default=MAX_SIDE, help="larger images are scaled down in the page")
    args = parser.parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        out = export_web(args.sources, args.out, fp16=not args.fp32, webgpu=not args.no_webgpu,
                         max_side=args.max_side)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out} ({size / 1e6:.1f} MB): serve it with `python -m http.server -d {out}` and open index.html")
    return 0


if __name__ == "__main__":  # a missing extra is a one-line message, as for the console command
    from .cli import run
    run("export_web")
