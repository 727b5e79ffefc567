"""The fast path (cyclegan/backends.py) and ZeroGPU (cyclegan/zerogpu.py): a compiled generator computes what
eager computes, odd sizes and tiles included; a package is cached and reused; a compile never blocks a
call; a failed compile leaves eager with one warning; "auto" keeps a package only where it was measured
faster. One real compile (a tiny generator in bf16, in the child process) and one real failed one (no C++
compiler); the rest swaps the packages for stand-ins. Speed is measured by benchmarks/, never here."""
from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import types
import warnings

import pytest
import torch

from cyclegan import CycleGAN, Discriminator, ModelConfig, aoti, backends, zerogpu
from cyclegan.files import locked
from cyclegan.inference import run_any_size
from tests.conftest import ROOT, psnr


def tiny(seed: int = 0) -> CycleGAN:
    return CycleGAN(ModelConfig(ngf=4, ndf=4, n_blocks=1, n_layers=1)).init_weights(seed=seed).eval()


@pytest.fixture
def nets(tmp_path, monkeypatch):
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "_warned", set())
    model = tiny()
    yield [model.G_AB, model.G_BA]
    backends.stop([model.G_AB, model.G_BA])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A tiny generator compiled in bf16 for real (about 25 s), its cache folder and the lines logged."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("cache")
        patch.setenv(backends.CACHE_ENV, str(cache))
        G, lines = tiny().G_AB, []
        assert backends.start([G], "compile", precision="bf16", blocking=True, log=lines.append) == "compile"
        yield G, cache, lines
        backends.stop([G])


def image(h: int = 37, w: int = 50) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_backend_setting(monkeypatch):
    monkeypatch.delenv(backends.ENV, raising=False)
    assert backends.backend_setting() == "auto"
    monkeypatch.setenv(backends.ENV, " Eager ")
    assert backends.backend_setting() == "eager" and backends.backend_setting("compile") == "compile"
    monkeypatch.setenv(backends.ENV, "tensorrt")
    with pytest.raises(ValueError, match=r"^CYCLEGAN_BACKEND='tensorrt': choose one of auto, eager, compile$"):
        backends.backend_setting()


def test_compiled_generator_translates_odd_sizes_and_tiles_as_eager_does(compiled, monkeypatch):
    G, cache, lines = compiled
    assert len(lines) == 2 and lines[0].startswith("fast path: compiling 1 generator with AOTInductor"), lines
    assert re.fullmatch(r"fast path ready: AOTInductor, \d+ s \(1 generator; \d+ ms against eager's \d+ ms a "
                        r"256 px call\)", lines[1]), lines
    fast_path, plain = backends.FAST_PATHS[G], copy.deepcopy(G)  # the copy is not on the fast path: eager
    assert fast_path.dtype == torch.bfloat16 and fast_path.compiled is not None
    package, calls = fast_path.compiled, []
    monkeypatch.setattr(fast_path, "compiled", lambda x: (calls.append(tuple(x.shape)), package(x))[1])
    cases = [(image(), {}), (image(8, 8), {}), (image(5, 3), {}),  # padded to multiples of 4, cropped back
             (image(90, 130), {"max_side": 64, "tile": 48, "overlap": 8})]  # tiles, run four at a time
    for x, options in cases:
        fast = run_any_size(G, x, precision="bf16", **options)
        assert fast.shape == x.shape
        assert psnr(fast, run_any_size(plain, x, precision="fp32", **options)) >= 45, x.shape  # eager float32
        assert psnr(fast, run_any_size(plain, x, precision="bf16", **options)) >= 45, x.shape
    assert calls[:3] == [(1, 3, 40, 52), (1, 3, 8, 8), (1, 3, 8, 8)] and set(calls[3:]) == {(1, 3, 48, 48)}
    first = fast_path(image(36, 52))
    kept = first.clone()
    fast_path(image(36, 52) * 0.5)
    assert torch.equal(first, kept)  # a result is not a buffer the next call (same shape) writes over


def test_a_package_is_cached_by_weights_and_precision(compiled, monkeypatch):
    G, cache, _ = compiled
    (package,) = cache.glob("*.pt2")
    timing = json.loads(package.with_suffix(".json").read_text())
    assert timing["size"] == 256 and timing["dtype"] == "bfloat16" and timing["compiled_ms"] > 0
    monkeypatch.setattr(backends, "compile_in_child", lambda *_: pytest.fail("compiled again"))
    monkeypatch.setattr(backends.os, "utime", lambda *_: exec("raise OSError(30, 'Read-only file system')"))
    lines = []
    backends.start([G], "compile", precision="bf16", blocking=True, log=lines.append)  # a restart, read-only
    assert len(lines) == 1 and lines[0].startswith("fast path ready: AOTInductor, 0 s"), lines
    assert backends.FAST_PATHS[G].compiled is not None
    fast = backends.FAST_PATHS[G]
    other = tiny(seed=1).G_AB
    assert backends.package_path(fast) == package
    assert backends.package_path(backends.FastPath(other, torch.bfloat16)) != package  # other weights
    assert backends.package_path(backends.FastPath(G, None)) != package  # float32
    assert backends.ready([G], "bf16") and not backends.ready([G, other], "bf16")  # what the CLI asks
    assert not backends.ready([G], "fp32")
    monkeypatch.setenv(backends.CACHE_ENV, str(cache / "elsewhere"))
    assert not backends.ready([G], "bf16")


def test_a_package_call_leaves_python_free_to_run(compiled):
    """The package is called through its library's C entry points (cyclegan.aoti), without the interpreter
    lock: another thread's Python runs during the pass, as the server's event loop must (torch's loader
    holds the lock: a page then waited out a 1024 px translation). Compared side by side: the count a
    spinning thread reaches during package calls, through each."""
    G, cache, _ = compiled
    (package,) = cache.glob("*.pt2")
    fast = backends.FAST_PATHS[G]
    assert isinstance(fast.compiled, aoti.NativeModel)
    loader = torch._C._aoti.AOTIModelPackageLoader(str(package), "model", False, 1, -1)
    x = image(768, 1024)
    assert psnr(fast.compiled(x), loader.run([x])[0]) == math.inf  # the same library, the same numbers
    counts = {}
    for name, call in (("native", fast.compiled), ("loader", lambda x: loader.run([x])[0])):
        spinning, count = [True], [0]

        def spin():
            while spinning[0]:
                count[0] += 1
        thread = threading.Thread(target=spin)
        thread.start()
        start, before = time.perf_counter(), count[0]
        for _ in range(3):
            call(x)
        counts[name] = (count[0] - before) / (time.perf_counter() - start)
        spinning[0] = False
        thread.join()
    assert counts["native"] > 4 * counts["loader"], counts


def test_a_restart_loads_the_package_without_inductor(compiled, tmp_path):
    """In a new process, with an empty temp folder: the package is loaded without importing Inductor or
    probing the CPU with a compiler (torch's own loader does both, 2-12 s in the serving process)."""
    _, cache, _ = compiled
    script = "; ".join([
        "import sys", "from cyclegan import CycleGAN, ModelConfig, backends",
        "backends.compile_in_child = lambda *_: sys.exit('compiled again')",
        "G = CycleGAN(ModelConfig(ngf=4, ndf=4, n_blocks=1, n_layers=1)).init_weights(seed=0).eval().G_AB",
        "backends.start([G], 'compile', precision='bf16', blocking=True)",
        "print(backends.FAST_PATHS[G].compiled is not None, 'torch._inductor' in sys.modules)"])
    env = {**os.environ, backends.CACHE_ENV: str(cache), "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ready, flags = result.stdout.splitlines()[-2:]
    assert ready.startswith("fast path ready: AOTInductor, ") and flags == "True False", result.stdout


def test_a_second_process_waits_for_the_compile_and_uses_it(nets, monkeypatch):
    fast = backends.FastPath(nets[0], None)
    package, compiles, done = backends.package_path(fast), [], []
    monkeypatch.setattr(backends, "compile_in_child", lambda *args: compiles.append(args))
    timing = {"eager_ms": 2.0, "compiled_ms": 1.0, "size": 256}
    with locked(package.with_suffix(".lock")):  # another process compiling this package
        waiting = threading.Thread(target=lambda: done.append(backends.compile_missing({package: fast})))
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive() and not done
        package.write_bytes(b"the package")
        package.with_suffix(".json").write_text(json.dumps(timing))
    waiting.join(60)
    assert done == [None] and compiles == []  # it waited, then found the package made


def test_an_unusable_cache_folder_leaves_eager_with_one_warning(nets, tmp_path, monkeypatch):
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "a file" / "cache"))
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backends.start(nets[:1], "compile", precision="fp32", blocking=True, log=lines.append)
    assert re.fullmatch(r"fast path: eager \(AOTInductor failed: .*Not a directory.*\), after \d+ s", lines[-1]), lines
    assert len(caught) == 1 and backends.FAST_PATHS[nets[0]].compiled is None


def test_a_shape_the_package_does_not_take_runs_eager(nets):
    fast = backends.FastPath(nets[0], None)
    fast.compiled = lambda x: pytest.fail(f"compiled code called on {tuple(x.shape)}")
    for x in (image(36, 50), torch.rand(1, 3, 4, 8), torch.rand(1, 3, 8, 4100), image(36, 52).double(),
              torch.rand(3, 36, 52), torch.rand(0, 3, 36, 52)):
        assert not fast.takes(x)
    x = image(36, 52)
    assert fast.takes(x) and fast.takes(x.contiguous(memory_format=torch.channels_last))
    with torch.inference_mode():
        assert torch.equal(fast(image(36, 50)), nets[0](image(36, 50)))


def test_only_generators_go_on_the_fast_path(nets):
    with pytest.raises(TypeError, match="^the fast path compiles cyclegan Generators, not Discriminator$"):
        backends.start([nets[0], Discriminator(4, 1)], "compile", precision="fp32", blocking=True)
    assert nets[0] not in backends.FAST_PATHS


def test_a_failed_compile_leaves_eager_with_one_warning(nets, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")  # the C++ compiler Inductor calls, in the child process
    eager = [run_any_size(G, image(), precision="fp32") for G in nets]
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backends.start(nets[:1], "compile", precision="fp32", blocking=True, log=lines.append)
        outputs = [run_any_size(G, image(), precision="fp32") for G in nets]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("fast path off, translating eager: AOTInductor failed: ")
    assert "/nonexistent/g++" in messages[0] or "compiler" in messages[0].lower(), messages
    assert len(lines) == 2 and re.fullmatch(r"fast path: eager \(AOTInductor failed: .+\), after \d+ s", lines[1]), lines
    assert all(torch.equal(a, b) for a, b in zip(outputs, eager))
    assert list(backends.cache_dir().glob("*.pt2")) == [] and list(backends.cache_dir().glob(".compile-*")) == []


def stand_in(monkeypatch, compiled_ms: float = 500, wait: threading.Event | None = None):
    """Packages replaced by files that load as the identity, "timed" at `compiled_ms` against eager's
    1000 ms; with `wait`, making them takes until that event is set."""
    def compile_missing(missing):
        assert wait is None or wait.wait(60)
        for package in missing:
            package.parent.mkdir(parents=True, exist_ok=True)
            package.write_bytes(b"a stand-in")
            package.with_suffix(".json").write_text(json.dumps({"eager_ms": 1000, "compiled_ms": compiled_ms,
                                                                "size": 256}))
    monkeypatch.setattr(backends, "compile_missing", compile_missing)
    monkeypatch.setattr(backends, "load", lambda package: lambda x: x)


@pytest.mark.parametrize("compiled_ms, kept", [(500, True), (990, False)])
def test_auto_keeps_a_package_only_where_measured_faster(nets, monkeypatch, compiled_ms, kept):
    stand_in(monkeypatch, compiled_ms)
    lines = []
    backends.start(nets, "auto", precision="fp32", blocking=True, log=lines.append)
    assert all((backends.FAST_PATHS[G].compiled is not None) == kept for G in nets)
    expected = (r"fast path ready: AOTInductor, \d+ s \(2 generators; 500 ms against eager's 1000 ms a 256 px call\)"
                if kept else
                r"fast path: eager \(AOTInductor was not faster here \(990 ms against eager's 1000 ms a 256 px "
                r"call\)\), after \d+ s")
    assert re.fullmatch(expected, lines[-1]), lines
    assert lines[0].startswith("fast path: compiling 2 generators with AOTInductor in a child process")


def test_a_compile_in_the_background_never_blocks_a_call(nets, monkeypatch):
    finish = threading.Event()
    stand_in(monkeypatch, wait=finish)
    G, lines, done = nets[0], [], threading.Event()
    eager = run_any_size(G, image(), precision="fp32")
    backends.start([G], "compile", precision="fp32", log=lambda line: (lines.append(line), "ready" in line and done.set()))
    out = run_any_size(G, image(), precision="fp32")  # eager at once, while the package is being made
    assert torch.equal(out, eager) and backends.FAST_PATHS[G].compiled is None
    finish.set()
    assert done.wait(60) and lines[-1].startswith("fast path ready: AOTInductor") and backends.FAST_PATHS[G].compiled is not None


def test_zerogpu_is_a_no_op_off_zerogpu(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    import spaces  # noqa: F401  (requirements-dev.txt installs it: the no-op is tested with the real package)
    assert not zerogpu.active() and zerogpu.device() == "cpu"

    def fn(x):
        return x
    assert zerogpu.gpu(fn, duration=lambda x: 1) is fn


def test_zerogpu_wraps_model_calls_with_a_duration_from_their_pixels(monkeypatch):
    granted = []

    def GPU(duration):
        def decorate(fn):
            def run(*args):
                granted.append(duration(*args))
                return fn(*args)
            return run
        return decorate
    fake = types.SimpleNamespace(GPU=GPU, config=types.SimpleNamespace(Config=types.SimpleNamespace(zero_gpu=True)))
    monkeypatch.setattr(zerogpu, "spaces", fake)  # ZeroGPU itself cannot be had outside a Space
    assert zerogpu.active() and zerogpu.device() == "cuda"
    video = zerogpu.gpu(lambda pixels: pixels * 2, duration=lambda pixels: zerogpu.seconds(pixels))
    assert video(640 * 480 * 250) == 640 * 480 * 500
    assert granted == [zerogpu.BASE_SECONDS + 15]  # 77 million frame pixels at 5 million a second
    assert zerogpu.seconds(1e12) == zerogpu.MAX_SECONDS
