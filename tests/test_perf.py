"""Inference precision and size: each precision against float32 on a generator with trained
statistics, the choice "auto" makes, tiling by default for large inputs, and Trainer.train_step's
batched calls against benchmarks/reference.py's naive loop."""
from pathlib import Path

import pytest
import torch
from PIL import Image

import cyclegan.inference
from benchmarks.reference import Bf16Rounding, naive_train_step
from cyclegan import CycleGAN, ModelConfig
from cyclegan.inference import (autocast_dtype, cpu_has_native_bf16, cpu_precision, run_any_size, run_padded,
                                time_precisions)
from cyclegan.networks import Generator
from cyclegan.training import Trainer, TrainConfig

from .conftest import TINY, measured_precision, psnr

ROOT = Path(__file__).resolve().parent.parent
PREVIEW = ROOT / "weights" / "horse2zebra-identity"
# 8-bit PSNR of bf16 against float32 for the small trained generator below: measured 55.6-57.4 dB
# (49 dB with random weights, whose near-noise activations exaggerate bf16's error).
BF16_MIN_PSNR = 50.0


def image(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth images with some texture, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.nn.functional.interpolate(torch.rand(n, 3, h // 8 + 1, w // 8 + 1, generator=g), size=(h, w),
                                          mode="bilinear", align_corners=False)
    return (0.8 * low + 0.2 * torch.rand(n, 3, h, w, generator=g)) * 2 - 1


@pytest.fixture(scope="module")
def trained() -> Generator:
    """A small generator trained for a few seconds to map images to a recoloured, brightened copy."""
    torch.manual_seed(0)
    G = Generator(ngf=8, n_blocks=2)
    opt = torch.optim.Adam(G.parameters(), lr=2e-3)
    for step in range(60):
        x = image(4, 32, 32, seed=step)
        loss = (G(x) - (0.8 * x[:, [2, 0, 1]] + 0.1)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2  # it learned something
    return G.eval()


def conv_dtypes(net: torch.nn.Module) -> list:
    """The dtypes the convolutions of `net` compute in, recorded as it runs."""
    seen = []
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(lambda mod, inputs, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("precision,bf16_s", [("fp32", None), ("bf16", None), ("auto", None), ("auto", 1.2),
                                              ("auto", 0.5)])
def test_each_precision_against_fp32(trained, precision, bf16_s, monkeypatch):
    measured_precision(monkeypatch, 1.0, bf16_s)  # "auto" sees bf16 absent, slower or twice as fast
    x = image(1, 40, 52, seed=99)
    reference = run_any_size(trained, x, precision="fp32")
    assert reference.dtype == torch.float32
    G = Generator(ngf=8, n_blocks=2).eval()
    G.load_state_dict(trained.state_dict())
    seen = conv_dtypes(G)
    out = run_any_size(G, x, precision=precision)
    assert out.dtype == torch.float32 and out.shape == x.shape
    if precision == "fp32" or (precision == "auto" and bf16_s != 0.5):
        assert set(seen) == {torch.float32} and torch.equal(out, reference)
    else:  # really computed in bf16, and close to fp32 in what an 8-bit image shows
        assert set(seen) == {torch.bfloat16}
        assert not torch.equal(out, reference)
        assert psnr(out, reference) >= BF16_MIN_PSNR


def test_auto_picks_bf16_only_where_measured_faster(monkeypatch):
    G = Generator(ngf=4, n_blocks=1)
    timed = measured_precision(monkeypatch, 1.0, None)  # no bf16 hardware: float32, nothing timed
    assert autocast_dtype("auto", "cpu", G) is None and timed == []
    assert str(cpu_precision(G)) == "fp32 (this CPU has no bf16 in hardware)"
    assert autocast_dtype("bf16", "cpu", G) == torch.bfloat16  # an explicit request stands
    for bf16_s, expected in ((0.5, torch.bfloat16), (0.95, None), (1.0, None), (1.4, None)):  # a tie is float32
        timed = measured_precision(monkeypatch, 1.0, bf16_s)
        assert autocast_dtype("auto", "cpu", G) == expected, bf16_s
        assert autocast_dtype("auto", "cpu", G) == expected and timed == [("Generator", False)]  # timed once
    choice = cpu_precision(G)
    assert (choice.name, choice.fp32_ms, choice.bf16_ms) == ("fp32", 1000.0, 1400.0)
    assert str(choice) == "fp32 (measured at 128 px: fp32 1000 ms, bf16 1400 ms a call)"
    cpu_precision(Generator(ngf=4, n_blocks=2))  # another shape is timed on its own
    cpu_precision(G, training=True)  # and so is training
    assert timed == [("Generator", False), ("Generator", False), ("Generator", True)]
    assert autocast_dtype("auto", "cpu") is None  # no network to time: float32
    assert autocast_dtype("fp32", "cpu", G) is None
    # CUDA keeps half precision in "auto"; "fp32" is float32 there too
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert autocast_dtype("auto", "cuda") == torch.float16 and autocast_dtype("fp32", "cuda") is None
    assert autocast_dtype("auto", "meta") is None
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("fp16", "cpu")


def test_the_timing_leaves_the_network_and_the_random_state_alone():
    G = Generator(ngf=4, n_blocks=1)
    weights = {k: v.clone() for k, v in G.state_dict().items()}
    rng = torch.get_rng_state()
    for training in (False, True):
        fp32_s, bf16_s = time_precisions(G, training, size=32, repeats=1)
        assert 0 < fp32_s < 10 and 0 < bf16_s < 100
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(weights[k], v) for k, v in G.state_dict().items())
    assert all(p.grad is None for p in G.parameters()) and G.training


def test_translate_in_auto_on_a_cpu_without_bf16_is_fp32(monkeypatch):
    measured_precision(monkeypatch, 1.0, None)
    model = CycleGAN(TINY).init_weights(seed=2).eval()
    picture = Image.new("RGB", (30, 20), (90, 140, 60))
    seen = conv_dtypes(model.G_AB)
    assert list(model.translate(picture).getdata()) == list(model.translate(picture, precision="fp32").getdata())
    assert set(seen) == {torch.float32}


def test_native_bf16_is_what_torch_reports(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_has_native_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_has_native_bf16() is True


def test_run_padded_stays_fp32(monkeypatch):
    """cyclegan.evaluate calls run_padded directly: its FID numbers must not move with the CPU."""
    measured_precision(monkeypatch, 1.0, 0.1)
    G = Generator(ngf=4, n_blocks=1).eval()
    seen = conv_dtypes(G)
    with torch.no_grad():
        out = run_padded(G, image(2, 30, 34))
    assert out.dtype == torch.float32 and set(seen) == {torch.float32}


def test_large_inputs_are_tiled_by_default(monkeypatch):
    calls = []
    original = cyclegan.inference.run_tiled

    def spy(net, x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return original(net, x, *args, **kwargs)
    monkeypatch.setattr(cyclegan.inference, "run_tiled", spy)
    model = CycleGAN(ModelConfig(ngf=2, n_blocks=0)).init_weights(seed=0).eval()
    wide = Image.new("RGB", (1100, 24), (200, 100, 50))
    assert model.translate(wide).size == (1100, 24) and calls == [(1, 3, 24, 1100)]
    fake, rec = model.cycle(wide)
    assert fake.size == rec.size == (1100, 24) and len(calls) == 3  # both generators tiled
    assert model.translate(wide, max_side=None).size == (1100, 24) and len(calls) == 3  # one pass
    assert model.translate(Image.new("RGB", (1024, 16))).size == (1024, 16) and len(calls) == 3  # not above 1024


def test_domains_name_source_and_target():
    model = CycleGAN(TINY)
    assert model.domains("A2B") == ("horse", "zebra") and model.domains("B2A") == ("zebra", "horse")
    with pytest.raises(ValueError, match="direction"):
        model.domains("sideways")


def test_weights_and_state_dict_keys_are_unchanged():
    """Plain nn.Conv2d layers under the names the bundled folders and old checkpoints use."""
    keys = list(Generator(8, 1).state_dict())
    assert keys[:2] == ["stem.1.weight", "stem.1.bias"] and keys[-2:] == ["head.1.weight", "head.1.bias"]
    assert "blocks.0.conv1.weight" in keys and "blocks.0.conv2.bias" in keys
    from safetensors.torch import load_file
    assert set(load_file(PREVIEW / "model.safetensors")) == set(CycleGAN(ModelConfig(ngf=32, n_blocks=6)).state_dict())
    assert CycleGAN.from_pretrained(PREVIEW).translate(Image.new("RGB", (20, 12))).size == (20, 12)


def test_bench_bf16_simulation_matches_real_bf16(trained):
    """bench.py measures bf16's error by simulation where the CPU emulates bf16 (100x slower): the
    simulation must land where the real path does."""
    x = image(1, 32, 32, seed=7)
    reference = run_any_size(trained, x, precision="fp32")
    real = run_any_size(trained, x, precision="bf16")
    with torch.inference_mode(), Bf16Rounding():
        simulated = run_any_size(trained, x, precision="fp32")
    assert abs(psnr(simulated, reference) - psnr(real, reference)) < 3
    assert psnr(simulated, real) > psnr(real, reference) - 3  # as far from real as real is from fp32


def test_train_step_matches_the_naive_loop():
    """Trainer.train_step (G(x) batched with the identity G(y), D frozen, real and fake through D in
    one call) against benchmarks/reference.py's naive loop: the same losses and gradients."""
    config = TrainConfig(lambda_identity=0.5, amp="none")  # the naive loop is float32
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
