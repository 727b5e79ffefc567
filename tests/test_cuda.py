"""The CUDA paths against the CPU: the training step in fp32, bf16 and fp16 (GradScaler), channels_last
and torch.compile, checkpoints moving between the GPU and the CPU, translate/cycle, and DDP over
NCCL. Skipped where there is no CUDA device; scripts/gpu_check.sh runs them on a GPU machine."""
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cyclegan import CycleGAN, ModelConfig
from cyclegan.inference import autocast_dtype
from cyclegan.training import Trainer, TrainConfig, load_checkpoint, save_checkpoint, train
from tests.conftest import TINY, TINY_FLAGS, free_port, psnr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parents[1]
PREVIEW = ROOT / "weights" / "horse2zebra-identity"
SMALL = ModelConfig(ngf=16, ndf=16, n_blocks=3, n_layers=3)  # big enough for cuDNN's real kernels at 64 px
NETS = ("G_AB", "G_BA", "D_A", "D_B")

# Tolerances. fp32 with TF32 off: the same arithmetic in another order, so losses agree to 1e-4 and each
# network's gradient to 1e-2 (relative L2 distance; the gradients of a GAN's summed losses cancel, and
# merely reordering the sums, as torch.compile did on the CPU, moved G_AB's by 4e-3; a wrong gradient
# is off by order 1). bf16/fp16 autocast: losses within 5% (or 0.02) of fp32, as tests/test_training.py
# asks of bf16 on the CPU. Images: 8-bit PSNR of what to_image() writes; bf16 against fp32 measured
# 54.6 dB on the CPU (preview model), and TF32 has 3 more bits than bf16.
LOSS_RTOL, GRAD_RTOL = 1e-4, 1e-2
HALF_RTOL, HALF_ATOL = 0.05, 0.02
PSNR_FP32, PSNR_BF16 = 50.0, 45.0


@pytest.fixture
def exact_fp32():
    """float32 convolutions without TF32 (on by default for cuDNN), so that CUDA and the CPU compute alike."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def batch(seed: int = 0, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.rand(1, 3, size, size, generator=g) * 2 - 1, "B": torch.rand(1, 3, size, size, generator=g) * 2 - 1}


def gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Each network's gradient from the step just taken (train_step leaves them in .grad), flattened."""
    return {name: torch.cat([p.grad.detach().float().cpu().flatten() for p in getattr(trainer.model, name).parameters()])
            for name in NETS}


def assert_same_step(losses: dict, reference: dict, grads: dict | None = None, reference_grads: dict | None = None,
                     rtol: float = LOSS_RTOL, atol: float = 1e-6, grad_rtol: float = GRAD_RTOL) -> None:
    assert set(losses) == set(reference)
    for name, value in losses.items():
        assert value.item() == pytest.approx(reference[name].item(), rel=rtol, abs=atol), name
    for name in grads or {}:
        distance = (grads[name] - reference_grads[name]).norm() / reference_grads[name].norm()
        assert distance < grad_rtol, f"{name}: gradient differs by {distance:.2e} (relative L2)"


def two_steps_alike(reference: Trainer, trainer: Trainer) -> None:
    """Two steps of each, from the same weights; the second from Adam-updated weights and a non-empty pool,
    copied from `reference` first. (Without the copy the second gradients differ by up to 1.5e-2, as measured
    on an H100: Adam's first step moves each weight by +-lr whatever its gradient's size, so a gradient
    component near zero that differs in its last bits flips the weight by 2 lr.)"""
    for step in range(2):
        if step:
            trainer.load_state_dict(reference.state_dict())
        expected, got = reference.train_step(batch(step)), trainer.train_step(batch(step))
        assert all(v.device.type == trainer.device.type for v in got.values())
        assert_same_step(got, expected, gradients(trainer), gradients(reference))


def test_fp32_step_on_cuda_matches_the_cpu(exact_fp32):
    cpu = Trainer(TrainConfig(amp="none"), SMALL, "cpu")
    cuda = Trainer(TrainConfig(amp="none"), SMALL, "cuda")
    assert cuda.precision == "fp32" and cuda.memory_format == torch.channels_last
    two_steps_alike(cpu, cuda)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_half_precision_steps_are_finite_and_close_to_fp32(amp, exact_fp32):
    reference = Trainer(TrainConfig(amp="none"), SMALL, "cuda")
    trainer = Trainer(TrainConfig(amp=amp), SMALL, "cuda")
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert (trainer.scaler is not None) == (amp == "fp16")
    dtypes = set()
    trainer.model.G_AB.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    losses = trainer.train_step(batch())
    assert dtypes == {trainer.amp_dtype}
    for name, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    assert_same_step(losses, reference.train_step(batch()), rtol=HALF_RTOL, atol=HALF_ATOL)
    for step in range(1, 4):  # a few more, so that GradScaler updates its scale
        assert all(torch.isfinite(v) for v in trainer.train_step(batch(step)).values())
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # the weights stay fp32
    assert sum(not torch.equal(before[k], v) for k, v in after.items()) > len(after) // 2  # steps were taken
    if trainer.scaler is not None:
        assert 0 < trainer.scaler.get_scale() < math.inf
        assert "scaler" in trainer.state_dict()


def test_auto_amp_on_cuda_is_bf16_in_channels_last():
    trainer = Trainer(TrainConfig(ema_decay=0.9), TINY, "cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert trainer.amp_dtype == expected
    assert trainer.memory_format == torch.channels_last
    for model in (trainer.model, trainer.ema):  # the average in the weights' layout too
        convs = [p for p in model.parameters() if p.ndim == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def test_channels_last_gives_the_same_step(exact_fp32):
    channels_last = Trainer(TrainConfig(amp="none"), SMALL, "cuda")
    contiguous = Trainer(TrainConfig(amp="none", memory_format="nchw"), SMALL, "cuda")
    assert contiguous.memory_format == torch.contiguous_format
    assert all(p.is_contiguous() for p in contiguous.model.parameters())
    two_steps_alike(contiguous, channels_last)


def test_compile_gives_the_same_step(exact_fp32):
    eager = Trainer(TrainConfig(amp="none"), SMALL, "cuda")
    compiled = Trainer(TrainConfig(amp="none", compile=True), SMALL, "cuda")
    assert compiled.G_AB is not compiled.model.G_AB  # the step calls the compiled wrappers
    two_steps_alike(eager, compiled)
    # what is saved is the plain modules' state: no "_orig_mod." prefixes
    assert all(not k.startswith("_orig_mod") for k in compiled.state_dict()["G_AB"])


@pytest.mark.parametrize("first,then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_resumes_on_the_other_device(first, then, tmp_path, exact_fp32):
    """Two steps on one device, saved and loaded as train.py does; the third step on the other device
    equals the third step taken where the first two were."""
    a = Trainer(TrainConfig(amp="none"), SMALL, first)
    for step in range(2):
        a.train_step(batch(step))
    save_checkpoint(a.state_dict(), tmp_path / "checkpoint.pt")
    state = load_checkpoint(tmp_path)
    assert all(v.device.type == "cpu" for v in state["G_AB"].values())  # loaded onto the CPU whatever wrote it
    assert ("rng_cuda" in state) == (first == "cuda")
    b = Trainer(TrainConfig(amp="none"), SMALL, then)
    b.load_state_dict(state, source=str(tmp_path))
    assert b.step == 2 and all(p.device.type == then for p in b.model.parameters())
    assert all(v.device.type == then for group in b.opt_G.state.values() for k, v in group.items() if k != "step")
    expected = a.train_step(batch(2))
    got = b.train_step(batch(2))
    assert_same_step(got, expected, gradients(b), gradients(a))


def test_train_resumes_across_devices(dataroot, tmp_path):
    """The whole loop: 2 steps on the GPU (bf16, pinned memory), 2 more on the CPU, 2 more on the GPU."""
    from tests.test_training import config_for

    out = tmp_path / "run"
    for device, steps in (("cuda", 2), ("cpu", 4), ("cuda", 6)):
        state = load_checkpoint(out) if out.exists() else None
        config = config_for(dataroot, out, max_steps=steps, resume=str(out) if state else "")
        train(dataclasses.replace(config, device=device), TINY, state)
        state = load_checkpoint(out)
        assert state["step"] == steps and state["train_config"]["device"] == device
    model = CycleGAN.from_pretrained(out / "model")
    assert model.info["steps"] == 6
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


@pytest.fixture(scope="module")
def models() -> dict[str, CycleGAN]:
    """The bundled preview model (trained weights), on the CPU and on CUDA."""
    model = CycleGAN.from_pretrained(PREVIEW) if PREVIEW.is_dir() else CycleGAN(TINY).init_weights(0).eval()
    return {"cpu": model, "cuda": CycleGAN.from_pretrained(PREVIEW, device="cuda") if PREVIEW.is_dir()
            else CycleGAN(TINY).init_weights(0).eval().cuda()}


@pytest.fixture(scope="module")
def horse() -> Image.Image:
    """A real photo: the first input of the README's grid (256 x 256 below a 24 px label)."""
    return Image.open(ROOT / "docs" / "grid.jpg").convert("RGB").crop((0, 24, 256, 280))


@pytest.mark.parametrize("precision,minimum", [("fp32", PSNR_FP32), ("auto", PSNR_BF16), ("bf16", PSNR_BF16)])
def test_translate_and_cycle_on_cuda_match_the_cpu(models, horse, precision, minimum):
    assert autocast_dtype("auto", "cuda") == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    for direction in ("A2B", "B2A"):
        expected = models["cpu"].cycle(horse, direction, precision="fp32")
        got = models["cuda"].cycle(horse, direction, precision=precision)
        for name, e, g in zip(("G(x)", "F(G(x))"), expected, got):
            assert g.size == e.size == horse.size
            assert psnr(g, e) >= minimum, f"{direction} {name} in {precision}: {psnr(g, e):.1f} dB"


def test_tiled_translation_on_cuda_matches_the_cpu(models, horse):
    big = horse.resize((700, 520), Image.BICUBIC)  # above max_side: 256 px tiles, blended on the GPU
    expected = models["cpu"].translate(big, max_side=512, tile=256, overlap=32, precision="fp32")
    got = models["cuda"].translate(big, max_side=512, tile=256, overlap=32, precision="fp32")
    assert got.size == big.size
    assert psnr(got, expected) >= PSNR_FP32


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs")
def test_ddp_with_nccl_on_two_gpus(dataroot, tmp_path):
    out = tmp_path / "run"
    flags = [f if f != "cpu" else "cuda" for f in TINY_FLAGS]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "train.py"),
                             "--dataroot", str(dataroot), "--output", str(out), "--max-steps", "4",
                             "--log-every", "1", *flags], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(out)["step"] == 4
    assert "training on cuda:0" in result.stderr


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_cuda_graphs_step_as_the_eager_one(amp):
    """--cuda-graphs (captured once the pools are full) against the eager step: captured, the same
    losses at the first replayed step, G's output within 40 dB after 50 steps with a pool of 2 (bf16:
    1e-2 and 30 dB), and a learning rate set after capture still read by the graph
    (benchmarks/reference.graphs_against_eager, which gpu_check.sh runs first and falls back from)."""
    from benchmarks.reference import graphs_against_eager
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    r = graphs_against_eager(torch.device("cuda"), SMALL, amp=amp)
    assert r["captured"], r
    rel, db = (1e-4, 40) if amp == "none" else (1e-2, 30)
    assert r["first_replayed_step_max_rel_loss_diff"] <= rel and r["psnr_after_steps_db"] >= db, r
    assert r["lr_zero_keeps_weights"] and r["ok"]


@pytest.mark.parametrize("preprocess, benchmark", [("resize_and_crop", True), ("scale_width", False)])
def test_cudnn_times_its_algorithms_where_every_batch_has_one_shape(preprocess, benchmark, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    Trainer(TrainConfig(preprocess=preprocess, amp="none"), SMALL, "cuda")
    assert torch.backends.cudnn.benchmark is benchmark
