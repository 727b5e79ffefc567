"""The fast paths compute what the plain ones do: NNPACK convolutions against PyTorch's, the cases
that fall back to PyTorch's, and Trainer.train_step's batched calls against separate ones
(benchmarks/bench.py's naive loop)."""
import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from cyclegan import CycleGAN, ModelConfig
from cyclegan.model import _channels_last, run_any_size, run_padded
from cyclegan.networks import FastConv2d, Generator
from cyclegan.training import Trainer, TrainConfig

from .conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
PREVIEW = ROOT / "weights" / "horse2zebra-identity"
TOLERANCE = 1e-3  # on the generator's [-1, 1] output scale; measured differences are ~1e-5

needs_nnpack = pytest.mark.skipif(not torch.backends.nnpack.is_available(), reason="NNPACK is not available")


def plain_copy(model: CycleGAN) -> CycleGAN:
    return copy.deepcopy(model).set_fast(False)


def image(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth images with some texture, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.nn.functional.interpolate(torch.rand(n, 3, h // 8 + 1, w // 8 + 1, generator=g), size=(h, w),
                                          mode="bilinear", align_corners=False)
    return (0.8 * low + 0.2 * torch.rand(n, 3, h, w, generator=g)) * 2 - 1


@pytest.fixture
def passive_openmp(monkeypatch):
    """The setting app.py makes, under which FastConv2d uses NNPACK with several threads."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


def nnpack_calls(monkeypatch) -> list:
    calls = []
    original = torch._nnpack_spatial_convolution

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counting)
    return calls


@needs_nnpack
@pytest.mark.parametrize("case", ["tiny 36x44", "preview 128x128", "mid 96x80"])
def test_fast_generator_matches_plain(case, monkeypatch, passive_openmp):
    if case.startswith("preview"):
        if not PREVIEW.is_dir():
            pytest.skip("bundled preview weights are missing")
        model = CycleGAN.from_pretrained(PREVIEW)  # trained weights: realistic activations
    elif case.startswith("tiny"):
        model = CycleGAN(TINY).init_weights(seed=1).eval()
    else:
        model = CycleGAN(ModelConfig(ngf=32, n_blocks=3)).init_weights(seed=1).eval()
    h, w = map(int, case.split()[1].split("x"))
    x = image(2, h, w)
    plain = plain_copy(model)
    calls = nnpack_calls(monkeypatch)
    with torch.inference_mode():
        fast_out, plain_out = model.G_AB(x), plain.G_AB(x)
    n_fast = 2 * model.config.n_blocks + 2  # stem, the blocks' convolutions, head
    assert len(calls) == 2 * n_fast and all(shape[0] == 1 for shape in calls)  # one image per NNPACK call
    diff = (fast_out - plain_out).abs().max().item()
    assert 0 < diff < TOLERANCE  # not bit-identical: NNPACK really ran
    assert fast_out.shape == plain_out.shape == x.shape


@needs_nnpack
def test_translate_and_cycle_use_the_fast_path_by_default(passive_openmp):
    model = CycleGAN(TINY).init_weights(seed=2).eval()
    assert model.fast and all(m.fast for m in model.modules() if isinstance(m, FastConv2d))
    from PIL import Image
    picture = Image.fromarray((image(1, 30, 50)[0].permute(1, 2, 0).add(1).mul(127.5)).byte().numpy())
    fast_fake, fast_rec = model.cycle(picture)
    plain_fake, plain_rec = plain_copy(model).cycle(picture)
    for a, b in ((fast_fake, plain_fake), (fast_rec, plain_rec)):
        assert a.size == b.size == picture.size
        pixels = (torch.tensor(list(a.getdata())) - torch.tensor(list(b.getdata()))).abs()
        assert pixels.max() <= 1  # at most a rounding step of 8-bit output


@needs_nnpack
def test_tiled_batches_match_plain(passive_openmp):
    model = CycleGAN(TINY).init_weights(seed=3).eval()
    x = image(1, 72, 100)
    with torch.inference_mode():
        fast = run_any_size(model.G_AB, x, max_side=48, tile=40, overlap=8)
        plain = run_any_size(plain_copy(model).G_AB, x, max_side=48, tile=40, overlap=8)
    assert fast.shape == x.shape and (fast - plain).abs().max() < TOLERANCE


@needs_nnpack
def test_nnpack_only_where_it_pays(monkeypatch):
    """Several threads and OpenMP's default spinning: plain path; one thread, or passive waiting: NNPACK."""
    model = CycleGAN(TINY).init_weights(seed=5).eval()
    x = image(1, 32, 32)
    calls = nnpack_calls(monkeypatch)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with torch.inference_mode():
        assert torch.equal(model.G_AB(x), plain_copy(model).G_AB(x)) and not calls
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        model.G_AB(x)
        assert len(calls) == 2 * TINY.n_blocks + 2
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
        monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
        model.G_AB(x)
        assert len(calls) == 2 * (2 * TINY.n_blocks + 2)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_fallbacks_give_exactly_the_plain_result(monkeypatch, passive_openmp):
    model = CycleGAN(TINY).init_weights(seed=4).eval()
    plain = plain_copy(model)
    x = image(2, 32, 40)
    # autograd (training): NNPACK has no backward
    assert torch.equal(model.G_BA(x), plain.G_BA(x))
    x_grad = x.clone().requires_grad_()
    y = model.G_BA(x_grad)
    assert torch.equal(y, plain.G_BA(x))
    y.mean().backward()
    assert x_grad.grad is not None and model.G_BA.blocks[0].conv1.weight.grad is not None
    with torch.inference_mode():
        expected = plain.G_BA(x)
        # float64: NNPACK is float32 only
        assert torch.equal(copy.deepcopy(model).double().G_BA(x.double()), copy.deepcopy(plain).double().G_BA(x.double()))
        # switched off
        assert torch.equal(copy.deepcopy(model).set_fast(False).G_BA(x), expected)
        # NNPACK unavailable (no AVX2, or a build without it)
        with monkeypatch.context() as m:
            m.setattr(torch.backends.nnpack, "is_available", lambda: False)
            assert torch.equal(model.G_BA(x), expected)
        # NNPACK failing on some input
        with monkeypatch.context() as m:
            def fail(*args, **kwargs):
                raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")
            m.setattr(torch, "_nnpack_spatial_convolution", fail)
            assert torch.equal(model.G_BA(x), expected)
    # channels_last on the CPU (the CUDA path's layout) still gives the same translation
    with torch.inference_mode():
        assert (run_padded(_channels_last(model.G_BA), x) - expected).abs().max() < TOLERANCE
    # tracing for export records PyTorch's own convolution, never NNPACK's
    with torch.no_grad():
        traced = torch.jit.trace(model.G_BA, x[:1], check_trace=False)
    assert "nnpack" not in str(traced.inlined_graph)


def test_state_dict_is_unchanged():
    fast = Generator(8, 2)
    assert isinstance(fast.blocks[0].conv1, FastConv2d) and isinstance(fast.blocks[0].conv1, nn.Conv2d)
    keys = list(fast.state_dict())
    plain = copy.deepcopy(fast)
    for parent in plain.modules():  # the same network built from plain nn.Conv2d
        for name, child in parent.named_children():
            if isinstance(child, FastConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding)
                conv.load_state_dict(child.state_dict())
                setattr(parent, name, conv)
    assert list(plain.state_dict()) == keys
    plain.load_state_dict(fast.state_dict(), strict=True)
    model = CycleGAN(TINY)
    before = list(model.state_dict())
    assert list(model.set_fast(False).state_dict()) == before == list(model.set_fast(True).state_dict())
    if PREVIEW.is_dir():
        from safetensors.torch import load_file
        assert set(load_file(PREVIEW / "model.safetensors")) == set(CycleGAN(ModelConfig(ngf=32, n_blocks=6)).state_dict())


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_matches_the_naive_loop():
    """Trainer.train_step (G(x) batched with the identity G(y), D frozen, real and fake through D in
    one call) against benchmarks/bench.py's naive loop: the same losses and gradients."""
    naive_train_step = load_bench().naive_train_step
    config = TrainConfig(lambda_identity=0.5)
    optimised, naive = Trainer(config, TINY), Trainer(config, TINY)
    for step in range(2):
        # Both start from the same state: otherwise Adam, whose first steps are about lr * sign(grad),
        # turns rounding-level differences of near-zero gradients into visible weight differences.
        naive.load_state_dict(optimised.state_dict())
        batch = {"A": image(2, 32, 32, seed=10 + step), "B": image(2, 32, 32, seed=20 + step)}
        got, want = optimised.train_step(batch), naive_train_step(naive, batch)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6), (step, k, got[k], want[k])
        for (name, p), q in zip(optimised.model.named_parameters(), naive.model.parameters()):
            error = (p.grad - q.grad).abs().max().item()
            # relative to the tensor's scale; the absolute term covers the pure-noise bias gradients
            assert error <= 1e-4 * q.grad.abs().max().item() + 1e-5, (step, name, error)
