"""The fast path of long-lived processes (the app, videos, large folders): generators compiled with
torch.compile where that is measured faster than eager on this machine. A compile takes 10-30 s, so
in the app it runs in a background thread at the lowest priority while eager serves; its kernels are
cached on disk, so a restart only traces the model again."""
from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.fx.experimental import _config as fx_config

from .files import one_line
from .inference import FAST_PATHS, autocast_dtype, in_precision

BACKENDS = ("auto", "eager", "compile")
ENV = "CYCLEGAN_BACKEND"
MEASURE_SIZE = 256  # px: the app's usual size; the choice is made on one such image
SWITCH_INTERVAL = 0.0005  # s: the GIL's turns while the fast path compiles (Python's default: 0.005)
MARGIN = 0.95  # "auto" compiles only when the compiled call takes at most this fraction of eager's time
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cyclegan-kit" / "torchinductor"


def backend_setting(value: str | None = None) -> str:
    """`value`, else CYCLEGAN_BACKEND, else "auto"; a ValueError naming the choices for anything else."""
    value = (value or os.environ.get(ENV) or "auto").strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"{ENV}={value!r}: choose one of {', '.join(BACKENDS)}")
    return value


# One thread at a time in dynamo's code: a replay in one thread while another compiles (any generator)
# waited for that compile, minutes in all, and once never returned. A request that finds it taken runs
# eager rather than wait (with CYCLEGAN_CONCURRENCY > 1, all but one of the requests at a time do).
DYNAMO = threading.Lock()


class FastPath:
    """One generator's compiled twin in one precision (dtype None: float32), which `run_any_size` calls
    instead of the generator. Compiles happen only in `compile_shape`: a call replays the compiled code
    where its guards accept the shape and runs eager where they do not, while (unless `blocking`) that
    shape is compiled in the background. Shapes are dynamic, so one compile covers a class of sizes and
    an image is always translated whole, as eager translates it."""

    def __init__(self, net: nn.Module, dtype: torch.dtype | None, blocking: bool = False) -> None:
        self.net, self.dtype, self.blocking = net, dtype, blocking
        self.eager = net if dtype is None else in_precision(net, "cpu", dtype)
        self.compiled = torch.compile(self.eager, dynamic=True)
        self.replay = torch._dynamo.run(self.eager)  # dynamo's cached code only: never compiles
        self.seen: set[tuple] = set()
        self.off: str | None = None  # why this generator stays eager

    def runner(self, dtype: torch.dtype | None) -> Callable[[torch.Tensor], torch.Tensor]:
        if dtype == self.dtype:
            return self
        return self.net if dtype is None else in_precision(self.net, "cpu", dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.off is not None or x.device.type != "cpu":
            return self.eager(x)
        shape = tuple(x.shape)
        if shape not in self.seen:
            self.seen.add(shape)
            if self.blocking:
                compile_shape(self, shape)
            else:
                background(lambda: compile_shape(self, shape))
        if DYNAMO.acquire(blocking=self.blocking):
            try:
                # The compiled code's guards accept what compile_shape gave it: a contiguous tensor made in
                # inference mode. An image from to_tensor is a channels-last view made outside it, which
                # would run eager: copied instead (0.1 ms at 256 px).
                return self.replay(x.clone(memory_format=torch.contiguous_format))
            finally:
                DYNAMO.release()
        return self.eager(x)


def sample(shape: tuple) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1


@torch.inference_mode()
def compile_shape(fast: FastPath, shape: tuple) -> float:
    """Compile `fast` for `shape` (a first call: a plain pass where the compiled code already covers
    it) and return the seconds it took. A failure turns this generator's fast path off, with one warning."""
    start = time.perf_counter()
    fast.seen.add(shape)
    with DYNAMO, fx_config.patch(use_duck_shape=False):  # H == W must not become a guard
        if fast.off is None:
            try:
                fast.compiled(sample(shape))
            except Exception as e:  # no C++ compiler, an unsupported CPU, an inductor bug: eager stays
                fast.off = f"torch.compile failed: {one_line(e, 300)}"
                warn_once(f"fast path off, translating eager: {fast.off}")
    return time.perf_counter() - start


@torch.inference_mode()
def time_call(fast: FastPath, shape: tuple, rounds: int = 3) -> tuple[float, float]:
    """Seconds a call of eager and of the compiled twin on one image of `shape`, best of `rounds`
    interleaved rounds (the compiled one already warm)."""
    x, best = sample(shape), [math.inf, math.inf]
    for _ in range(rounds):
        for i, run in enumerate((fast.eager, fast.replay)):
            start = time.perf_counter()
            with DYNAMO:
                run(x)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)


_jobs: queue.Queue[Callable[[], object]] = queue.Queue()
_worker: list[threading.Thread] = []


def background(job: Callable[[], object]) -> None:
    """Run `job` in the one background thread, after the jobs before it."""
    if not _worker:
        _worker.append(threading.Thread(target=_work, name="fast-path", daemon=True))
        _worker[0].start()
    _jobs.put(job)


def _work() -> None:
    # The lowest priority for this thread alone (Linux: a thread id is a process id to setpriority),
    # and for the compiler processes it starts: a request's eager pass keeps the cores.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
    interval = sys.getswitchinterval()
    while True:
        job = _jobs.get()
        # A compile is mostly Python (tracing, code generation) and holds the GIL between a request's
        # operations: each of them can wait a switch interval (5 ms) to get it back. Shorter turns while
        # compiling; the default once idle.
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            job()
        finally:
            if _jobs.empty():
                sys.setswitchinterval(interval)


def start(nets: list[nn.Module], backend: str | None = None, precision: str = "auto", blocking: bool = False,
          size: int = MEASURE_SIZE, log: Callable[[str], object] = print) -> str:
    """Put `nets` (generators on the CPU) on the fast path `backend` (see `backend_setting`) for
    `precision`. Returns the backend: "eager" does nothing; "compile" compiles; "auto" compiles and
    keeps the compiled twins only where a `size`-px call is measured faster than eager. In the
    background unless `blocking`; `log` gets one line when the choice is made, naming it and its time."""
    backend = backend_setting(backend)
    if backend == "eager" or not nets:
        return "eager"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE))  # a restart reuses the kernels
    # Each precision, architecture and class of sizes is one entry of dynamo's cache for
    # Generator.forward: room for more than its default of 8.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    paths = [FastPath(net, autocast_dtype(precision, "cpu", net), blocking) for net in nets]
    for net, fast in zip(nets, paths):
        FAST_PATHS[net] = fast
    job = lambda: choose(paths, backend, (1, 3, size, size), log)  # noqa: E731
    if blocking:
        job()
    else:
        background(job)
    return backend


def choose(paths: list[FastPath], backend: str, shape: tuple, log: Callable[[str], object]) -> None:
    """Compile every generator at `shape`, then ("auto") time one of each kind against eager and turn
    the fast path off where it is not faster; log one line."""
    start = time.perf_counter()
    for fast in paths:
        compile_shape(fast, shape)
    took = time.perf_counter() - start
    on = [f for f in paths if f.off is None]
    if not on:
        log(f"fast path: eager ({paths[0].off}), after {took:.0f} s")
        return
    eager_s, compiled_s = time_call(on[0], shape)
    timing = f"{compiled_s * 1000:.0f} ms against eager's {eager_s * 1000:.0f} ms a {shape[-1]} px call"
    if backend == "auto" and compiled_s > MARGIN * eager_s:
        for fast in on:
            fast.off = f"torch.compile was not faster here ({timing})"
        log(f"fast path: eager (torch.compile took {timing}), decided in {took:.0f} s")
        return
    log(f"fast path ready: torch.compile, {took:.0f} s ({len(on)} generators; {timing})")


def stop(nets: list[nn.Module]) -> None:
    """Take `nets` off the fast path (eager again)."""
    for net in nets:
        FAST_PATHS.pop(net, None)
