"""The fast path (cyclegan/backends.py) and ZeroGPU (cyclegan/zerogpu.py): a compiled generator computes what
eager computes; a compile never blocks a call; a failed compile leaves eager with one warning; "auto" keeps
the compiled generator only where it was measured faster. One real compile (a tiny generator, one class
of shapes); the rest swaps torch.compile for stand-ins. Speed is measured by benchmarks/, never here."""
from __future__ import annotations

import re
import threading
import types
import warnings

import pytest
import torch

from cyclegan import CycleGAN, ModelConfig, backends, zerogpu
from cyclegan.inference import run_any_size
from tests.conftest import psnr


@pytest.fixture
def nets():
    model = CycleGAN(ModelConfig(ngf=4, ndf=4, n_blocks=1, n_layers=1)).init_weights(seed=0).eval()
    yield [model.G_AB, model.G_BA]
    backends.stop([model.G_AB, model.G_BA])


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


def test_compiled_generator_translates_odd_sizes_as_eager_does(nets):
    G = nets[0]
    x = image()  # 37×50: padded to 40×52 and cropped back, as eager does
    eager = run_any_size(G, x, precision="fp32")
    lines = []
    assert backends.start([G], "compile", precision="fp32", blocking=True, size=32, log=lines.append) == "compile"
    assert lines[0].startswith("fast path ready: torch.compile, ") and "1 generators" in lines[0], lines
    compiled = run_any_size(G, x, precision="fp32")
    assert compiled.shape == eager.shape
    assert psnr(compiled, eager) >= 45
    assert backends.FAST_PATHS[G].seen == {(1, 3, 32, 32), (1, 3, 40, 52)}


def stand_in(monkeypatch, compiled):
    """torch.compile replaced by `compiled(fn)`; dynamo's replay by the eager function itself."""
    monkeypatch.setattr(backends.torch, "compile", lambda fn, **_: compiled(fn))
    monkeypatch.setattr(backends.torch._dynamo, "run", lambda fn: fn)
    monkeypatch.setattr(backends, "_warned", set())


def test_a_failed_compile_leaves_eager_with_one_warning(nets, monkeypatch):
    def broken(fn):
        def run(x):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run
    stand_in(monkeypatch, broken)
    eager = [run_any_size(G, image(), precision="fp32") for G in nets]
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backends.start(nets, "compile", precision="fp32", blocking=True, size=16, log=lines.append)
        outputs = [run_any_size(G, image(), precision="fp32") for G in nets]
    assert [str(w.message) for w in caught] == [
        "fast path off, translating eager: torch.compile failed: InvalidCxxCompiler: No working C++ compiler found"]
    assert len(lines) == 1 and re.fullmatch(r"fast path: eager \(torch\.compile failed: InvalidCxxCompiler: No working "
                                            r"C\+\+ compiler found\), after \d+ s", lines[0]), lines
    assert all(torch.equal(a, b) for a, b in zip(outputs, eager))


@pytest.mark.parametrize("compiled_s, kept", [(0.5, True), (0.99, False)])
def test_auto_keeps_the_compiled_generator_only_where_measured_faster(nets, monkeypatch, compiled_s, kept):
    stand_in(monkeypatch, lambda fn: fn)
    monkeypatch.setattr(backends, "time_call", lambda fast, shape: (1.0, compiled_s))
    lines = []
    backends.start(nets, "auto", precision="fp32", blocking=True, size=16, log=lines.append)
    assert all((backends.FAST_PATHS[G].off is None) == kept for G in nets)
    expected = (r"fast path ready: torch\.compile, \d+ s \(2 generators; 500 ms against eager's 1000 ms a 16 px call\)"
                if kept else
                r"fast path: eager \(torch\.compile took 990 ms against eager's 1000 ms a 16 px call\), decided in \d+ s")
    assert len(lines) == 1 and re.fullmatch(expected, lines[0]), lines


def test_a_compile_in_the_background_never_blocks_a_call(nets, monkeypatch):
    started, finish = threading.Event(), threading.Event()

    def slow(fn):  # a compile that takes until the test lets it finish
        def run(x):
            started.set()
            assert finish.wait(60)
            return fn(x)
        return run
    stand_in(monkeypatch, slow)
    G, lines, done = nets[0], [], threading.Event()
    eager = run_any_size(G, image(), precision="fp32")
    backends.start([G], "compile", precision="fp32", size=16, log=lambda line: (lines.append(line), done.set()))
    assert started.wait(60)
    out = run_any_size(G, image(), precision="fp32")  # eager at once, while the compile holds the generator
    assert torch.equal(out, eager) and lines == []
    finish.set()
    assert done.wait(60) and lines[0].startswith("fast path ready: torch.compile")


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
