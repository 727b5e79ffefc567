"""The fast path of long-lived processes (the app, videos, large folders): each generator compiled ahead
of time by AOTInductor (torch.export, then Inductor's C++ in a shared library) where that is measured
faster than eager on this machine. The compile takes 25-50 s a generator (2 cores) and runs in a child process at
the lowest priority, so the process that serves never runs a compiler (nor imports Inductor): it serves
eager until the package is ready, then loads it in milliseconds. Packages are cached on disk under a key
of everything the compiled code depends on, so a restart loads them at once.

    python -m cyclegan.backends WEIGHTS.safetensors PACKAGE.pt2 [...]   # the child: compile, time, write
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import aoti, networks
from .files import locked, move_into_place, one_line
from .inference import FAST_PATHS, autocast_dtype, in_precision
from .networks import Generator

BACKENDS = ("auto", "eager", "compile")
ENV = "CYCLEGAN_BACKEND"
NAME = "AOTInductor"
MEASURE_SIZE = 256  # px: the app's usual size; the choice is made on one such image
MARGIN = 0.95  # "auto" keeps a package only where its call takes at most this fraction of eager's time
MAX_SIDE = 4096  # a package takes (1, C, H, W), H and W multiples of 4 from 8 to MAX_SIDE
KEEP = 16  # packages the cache keeps, the most recently used
CACHE_ENV = "CYCLEGAN_COMPILE_CACHE"  # the packages' folder; by default in the user's cache folder


def backend_setting(value: str | None = None) -> str:
    """`value`, else CYCLEGAN_BACKEND, else "auto"; a ValueError naming the choices for anything else."""
    value = (value or os.environ.get(ENV) or "auto").strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"{ENV}={value!r}: choose one of {', '.join(BACKENDS)}")
    return value


class FastPath:
    """One generator and, once its package is loaded, its compiled twin in one precision (dtype None:
    float32), which `run_any_size` calls instead of the generator. Until then, for a shape the package
    does not take, on another device, or where it is off (`off` says why), the call runs eager."""

    def __init__(self, net: nn.Module, dtype: torch.dtype | None) -> None:
        self.net, self.dtype = net, dtype
        self.eager = net if dtype is None else in_precision(net, "cpu", dtype)
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.off: str | None = None

    def runner(self, dtype: torch.dtype | None) -> Callable[[torch.Tensor], torch.Tensor]:
        if dtype == self.dtype:
            return self
        return self.net if dtype is None else in_precision(self.net, "cpu", dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        compiled = self.compiled
        if compiled is None or not self.takes(x):
            return self.eager(x)
        # The compiled code indexes a contiguous tensor and checks neither its strides nor its shape. It
        # takes one image (a dynamic batch cost 5 % at 256 px); instance norm is per image, so a batch
        # (run_tiled's tiles) runs one image at a time and gives what it gives whole.
        x = x.contiguous()
        return torch.cat([compiled(image) for image in x.split(1)]) if len(x) > 1 else compiled(x)

    def takes(self, x: torch.Tensor) -> bool:
        if x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        n, c, h, w = x.shape
        return (n >= 1 and c == self.net.init_args["in_channels"]
                and all(8 <= side <= MAX_SIDE and side % 4 == 0 for side in (h, w)))


def start(nets: list[nn.Module], backend: str | None = None, precision: str = "auto", blocking: bool = False,
          log: Callable[[str], object] = print) -> str:
    """Put `nets` (generators on the CPU) on the fast path `backend` (see `backend_setting`) for
    `precision`. Returns the backend: "eager" does nothing; "compile" loads a package for each net,
    compiling the missing ones; "auto" does so and keeps a package only where it was measured faster
    than eager. In a background thread unless `blocking`; `log` gets a line when a compile starts and
    one when the choice is made, naming it and how long it took."""
    backend = backend_setting(backend)
    if backend == "eager" or not nets:
        return "eager"
    if stranger := next((net for net in nets if not isinstance(net, Generator)), None):
        raise TypeError(f"the fast path compiles cyclegan Generators, not {type(stranger).__name__}")
    paths = [FastPath(net, autocast_dtype(precision, "cpu", net)) for net in nets]
    for net, fast in zip(nets, paths):
        FAST_PATHS[net] = fast
    if blocking:
        prepare(paths, backend, log)
    else:
        threading.Thread(target=prepare, args=(paths, backend, log), name="fast-path", daemon=True).start()
    return backend


def prepare(paths: list[FastPath], backend: str, log: Callable[[str], object]) -> None:
    """Load (compiling where missing) each path's package, keep it where `backend` says to, log one line.
    Whatever fails (no C++ compiler, an unusable cache folder, a bad file) leaves that path eager."""
    start_time = time.perf_counter()
    packages: dict[FastPath, Path] = {}
    for fast in paths:
        try:
            packages[fast] = package_path(fast)
        except Exception as e:  # e.g. networks.py unreadable
            turn_off(fast, e)
    failed: Exception | None = None
    if missing := {package: fast for fast, package in packages.items() if not cached(package)}:
        log(f"fast path: compiling {len(missing)} generator{'s' * (len(missing) > 1)} with {NAME} in a child "
            f"process (once: cached in {cache_dir()})")
        try:
            compile_missing(missing)
        except Exception as e:  # the packages it did not make stay eager, saying why
            failed = e
    kept = []
    for fast, package in packages.items():
        try:
            if failed is not None and not cached(package):
                raise failed
            timing = json.loads(package.with_suffix(".json").read_text())
            if backend == "auto" and timing["compiled_ms"] > MARGIN * timing["eager_ms"]:
                fast.off = f"{NAME} was not faster here ({describe(timing)})"
                continue
            fast.compiled = load(package)
            kept.append(timing)
        except Exception as e:
            turn_off(fast, e)
    took = time.perf_counter() - start_time
    if kept:
        log(f"fast path ready: {NAME}, {took:.0f} s ({len(kept)} generator{'s' * (len(kept) > 1)}; "
            f"{describe(kept[0])})")
    else:
        log(f"fast path: eager ({paths[0].off}), after {took:.0f} s")


def turn_off(fast: FastPath, error: Exception) -> None:
    fast.off = f"{NAME} failed: {one_line(error, 300)}"
    warn_once(f"fast path off, translating eager: {fast.off}")


def cached(package: Path) -> bool:
    try:
        return package.with_suffix(".json").exists() and package.exists()
    except OSError:  # an unreadable cache folder: the compile then says why
        return False


def ready(nets: list[nn.Module], precision: str = "auto") -> bool:
    """Whether every net of `nets` has its package in the cache for `precision`: loading one costs
    milliseconds, where a compile costs most of a minute a generator."""
    try:
        return all(cached(package_path(FastPath(net, autocast_dtype(precision, "cpu", net)))) for net in nets)
    except Exception:  # e.g. an unreadable cache folder: `start` then says why
        return False


def compile_missing(missing: dict[Path, FastPath]) -> None:
    """Compile the packages of `missing` (package -> its path) that are still missing, all in one child
    process (the compiler's headers are built once for all of them). Under a lock on each package, so
    that two processes never compile one at once: the second waits, then finds it made."""
    with contextlib.ExitStack() as locks:
        for package in sorted(missing):
            locks.enter_context(locked(package.with_suffix(".lock")))
        if todo := {package: fast for package, fast in missing.items() if not cached(package)}:
            compile_in_child(todo)


def load(package: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The compiled generator in `package`. Straight through torch's loader: `aoti_load_package` would
    import Inductor (1.1 s of the interpreter lock) and probe the CPU's vector instructions by compiling
    with g++ (1.2 s here, 12 s with an empty temp folder) in the serving process, to log a warning that
    the cache key (`package_path`) already rules out. Called through the library's C entry points where
    it can be (aoti.NativeModel: without the interpreter lock), else through the loader, which holds it.
    A package that fails to load is deleted, so that the next start compiles it again."""
    try:
        run = aoti.NativeModel(package)
    except (OSError, ValueError, RuntimeError, AttributeError) as e:  # AttributeError: an entry point missing
        warn_once(f"fast path: packages called through torch's loader, which holds the interpreter lock "
                  f"during a pass ({one_line(e, 200)})")
        try:
            loader = torch._C._aoti.AOTIModelPackageLoader(str(package), "model", False, 1, -1)
        except RuntimeError:
            with locked(package.with_suffix(".lock")):
                for path in (package, package.with_suffix(".json")):
                    path.unlink(missing_ok=True)
            raise
        run = lambda x: loader.run([x])[0]  # noqa: E731
    with contextlib.suppress(OSError):  # a read-only cache serves as well
        os.utime(package)  # recently used: the last the cache forgets
    return run


def load_package(fast: FastPath) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """`fast`'s compiled generator and its timing, compiled first where missing (for benchmarks/)."""
    package = package_path(fast)
    compile_missing({package: fast})
    return load(package), json.loads(package.with_suffix(".json").read_text())


def describe(timing: dict) -> str:
    return (f"{timing['compiled_ms']:.0f} ms against eager's {timing['eager_ms']:.0f} ms "
            f"a {timing['size']} px call")


def package_path(fast: FastPath) -> Path:
    """Where `fast`'s package is cached: a key of everything the compiled code depends on: the code that
    defines the network and how it is exported (networks.py and this file), the architecture and
    weights, the precision, the thread count (Inductor writes it into the kernels when it is not the
    number of cores), torch, Python, and the CPU's model and instruction sets (a package built for
    AVX-512 must not run where there is none)."""
    digest = hashlib.sha256()
    parts = [torch.__version__, sys.version, platform.machine(), cpu_description(),
             torch.backends.cpu.get_cpu_capability(), str(torch.get_num_threads()), str(fast.dtype),
             json.dumps(fast.net.init_args, sort_keys=True), f"{MAX_SIDE} {MEASURE_SIZE}"]
    for part in parts:
        digest.update(part.encode() + b"\0")
    for source in (networks.__file__, __file__):
        digest.update(Path(source).read_bytes())
    for name, tensor in sorted(fast.net.state_dict().items()):
        digest.update(f"{name} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().contiguous().numpy())  # hashed in place, without the GIL
    return cache_dir() / f"{digest.hexdigest()[:32]}.pt2"


def cache_dir() -> Path:
    if folder := os.environ.get(CACHE_ENV):
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cyclegan-kit" / "aoti"


def cpu_description() -> str:
    """The CPU's model name and flags (Linux), else what `platform` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [next((line for line in lines if line.startswith(field)), "") for field in ("model name", "flags")]
    return "\n".join(wanted)


def compile_in_child(packages: dict[Path, FastPath]) -> None:
    """Compile each generator for its precision into its package, and its timing into the .json beside
    it, in one child process (`main`) at the lowest priority. A RuntimeError with the child's last line
    if it fails (the packages made before stay)."""
    folder = next(iter(packages)).parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".compile-") as tmp:
        jobs = []
        for i, (package, fast) in enumerate(packages.items()):
            weights = Path(tmp) / f"generator-{i}.safetensors"
            save_file({k: v.detach().float().contiguous() for k, v in fast.net.state_dict().items()}, weights,
                      metadata={"init_args": json.dumps(fast.net.init_args), "dtype": dtype_name(fast.dtype),
                                "threads": str(torch.get_num_threads())})
            jobs += [str(weights), str(package)]
        here = str(Path(__file__).resolve().parents[1])  # cyclegan's own copy, installed or not
        # Inductor's caches, its precompiled headers (~300 MB) and CPU probes included, in the temp folder.
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor"), TMPDIR=tmp,
                   PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
        # In a process group of its own, which ends whole (the compilers it started included) with this call.
        child = subprocess.Popen([sys.executable, "-m", "cyclegan.backends", *jobs], env=env, text=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 start_new_session=True)
        try:
            _, stderr = child.communicate()
        except BaseException:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise
    if child.returncode != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1].strip() if lines else f"the compiler's process ended with {child.returncode}")
    forget_old(folder)


def forget_old(folder: Path, keep: int = KEEP) -> None:
    """Delete all but the `keep` most recently used packages in `folder` (each retrained model adds one),
    and the temp folders of compiles that were killed more than a day ago."""
    packages = sorted(folder.glob("*.pt2"), key=lambda p: p.stat().st_mtime, reverse=True)
    for package in packages[keep:]:
        for path in (package, package.with_suffix(".json"), package.with_suffix(".lock")):
            path.unlink(missing_ok=True)
    for tmp in folder.glob(".compile-*"):
        with contextlib.suppress(OSError):
            if time.time() - tmp.stat().st_mtime > 86400:
                shutil.rmtree(tmp, ignore_errors=True)


def dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype or torch.float32).removeprefix("torch.")


class InPrecision(nn.Module):
    """`net` computing in `dtype` on float32 images, as `in_precision` runs it, as a module to export."""

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.dtype, cache_enabled=False):
            return self.net(x).float()


def compile_package(net: nn.Module, dtype: torch.dtype | None, package: Path) -> Path:
    """torch.export `net` (in `dtype`) for one image with dynamic sides that are multiples of 4, then
    compile it with AOTInductor into `package`."""
    module = (net if dtype is None else InPrecision(net, dtype)).eval()
    height, width = (torch.export.Dim(side, min=2, max=MAX_SIDE // 4) for side in ("height4", "width4"))
    x = sample((1, net.init_args["in_channels"], 64, 64))
    with torch.no_grad():
        program = torch.export.export(module, (x,), dynamic_shapes={"x": {2: 4 * height, 3: 4 * width}})
    return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(package)))


def sample(shape: tuple) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1


@torch.inference_mode()
def time_calls(eager: Callable, compiled: Callable, shape: tuple, rounds: int = 3) -> tuple[float, float]:
    """Seconds a call of `eager` and of `compiled` on one image of `shape`, best of `rounds` interleaved
    rounds after one warm-up each."""
    x, best = sample(shape), [math.inf, math.inf]
    for round_ in range(rounds + 1):
        for i, run in enumerate((eager, compiled)):
            start = time.perf_counter()
            run(x)
            if round_:
                best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)


def stop(nets: list[nn.Module]) -> None:
    """Take `nets` off the fast path (eager again)."""
    for net in nets:
        FAST_PATHS.pop(net, None)


def lowest_priority() -> None:
    """This process at the lowest CPU priority, and ended with the compilers it started when its parent
    ends, however it ends (Linux: the parent's death sends SIGTERM, which kills this process group)."""
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cyclegan.backends",
                                     description="Compile generators with AOTInductor (the fast path's child).")
    parser.add_argument("jobs", nargs="+", metavar="WEIGHTS PACKAGE",
                        help="pairs: a generator (safetensors with init_args, dtype and threads) and the .pt2 to "
                             "write; its timing goes to the .json beside it")
    args = parser.parse_args(argv)
    if len(args.jobs) % 2:
        parser.error("give WEIGHTS PACKAGE pairs")
    lowest_priority()
    for weights, package in zip(args.jobs[::2], args.jobs[1::2]):
        compile_one(Path(weights), Path(package))
    return 0


def compile_one(weights: Path, package: Path) -> None:
    """The child's work for one generator: build it, compile it beside `weights`, time it against eager,
    then move the package and its timing into place (the timing last: the parent takes it as done)."""
    with safe_open(weights, "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    net = Generator(**json.loads(meta["init_args"]))
    net.load_state_dict(state)
    net.eval()
    torch.set_num_threads(int(meta["threads"]))  # the parent's: the kernels may be written for it
    dtype = None if meta["dtype"] == "float32" else getattr(torch, meta["dtype"])
    start = time.perf_counter()
    tmp = compile_package(net, dtype, weights.with_suffix(".pt2"))
    compile_s = time.perf_counter() - start
    eager = net if dtype is None else in_precision(net, "cpu", dtype)
    eager_s, compiled_s = time_calls(eager, load(tmp), (1, net.init_args["in_channels"], MEASURE_SIZE, MEASURE_SIZE))
    timing = {"eager_ms": eager_s * 1000, "compiled_ms": compiled_s * 1000, "size": MEASURE_SIZE,
              "compile_s": compile_s, "dtype": meta["dtype"], "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    tmp.with_suffix(".json").write_text(json.dumps(timing, indent=1))
    move_into_place(tmp, package)
    move_into_place(tmp.with_suffix(".json"), package.with_suffix(".json"))


if __name__ == "__main__":
    sys.exit(main())
