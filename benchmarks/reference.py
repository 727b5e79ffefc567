"""What benchmarks/bench.py (and tests/test_perf.py) measure the package against: bf16 autocast
simulated at float32 speed for CPUs that emulate bf16, Trainer.train_step's maths written plainly, and an
independent plain training loop (PlainLoop) for bench.py --profile."""
from __future__ import annotations

import math
import random

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from cyclegan.losses import adversarial_loss, cycle_loss, discriminator_loss, identity_loss
from cyclegan.inference import cpu_has_native_bf16, run_any_size
from cyclegan.model import ModelConfig
from cyclegan.networks import Discriminator, Generator, init_weights
from cyclegan.training import Trainer, TrainConfig


def _round_bf16(t):
    return t.bfloat16().float() if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t


class Bf16Rounding(TorchDispatchMode):
    """bf16 autocast's arithmetic at float32 speed, for CPUs that emulate bf16: convolutions take
    inputs, weights and bias rounded to bf16, and every result is rounded to bf16, as autocast's bf16
    tensors are (it then flows through instance norm, ReLU and the residual sums in bf16)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            args = tree_map(_round_bf16, args)
        return tree_map(_round_bf16, func(*args, **(kwargs or {})))


def simulated_bf16(device: torch.device) -> bool:
    return device.type == "cpu" and not cpu_has_native_bf16()


def bf16_output(net, x: torch.Tensor) -> torch.Tensor:
    """`net`(x) in bf16: the real autocast path where the CPU has native bf16 (or on CUDA), else simulated."""
    if not simulated_bf16(x.device):
        return run_any_size(net, x, max_side=None, precision="bf16")
    with torch.inference_mode(), Bf16Rounding():
        return run_any_size(net, x, max_side=None, precision="fp32")


def naive_train_step(trainer: Trainer, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The maths of Trainer.train_step written the plain way: six separate generator calls (no
    batching of G(x) with the identity G(y)), the discriminators left trainable during the
    generator update, real and fake images through D in separate calls, float32, no autocast."""
    c, m = trainer.config, trainer.model
    real_A, real_B = batch["A"].to(trainer.device), batch["B"].to(trainer.device)
    trainer.opt_G.zero_grad()
    fake_B, fake_A = m.G_AB(real_A), m.G_BA(real_B)
    rec_A, rec_B = m.G_BA(fake_B), m.G_AB(fake_A)
    losses = {"G_AB": adversarial_loss(m.D_B(fake_B), True), "G_BA": adversarial_loss(m.D_A(fake_A), True),
              "cycle_A": c.lambda_cycle * cycle_loss(real_A, rec_A),
              "cycle_B": c.lambda_cycle * cycle_loss(real_B, rec_B)}
    if c.lambda_identity > 0:
        idt_B, idt_A = m.G_AB(real_B), m.G_BA(real_A)
        losses["idt_A"] = c.lambda_cycle * c.lambda_identity * identity_loss(real_A, idt_A)
        losses["idt_B"] = c.lambda_cycle * c.lambda_identity * identity_loss(real_B, idt_B)
    loss_G = sum(losses.values())
    if not torch.isfinite(loss_G).item():
        raise FloatingPointError(f"generator loss {loss_G.item()}")
    loss_G.backward()
    trainer.opt_G.step()
    trainer.opt_D.zero_grad()
    pooled_A, pooled_B = trainer.pool_A.query(fake_A.detach()), trainer.pool_B.query(fake_B.detach())
    losses["D_A"] = discriminator_loss(m.D_A(real_A), m.D_A(pooled_A))
    losses["D_B"] = discriminator_loss(m.D_B(real_B), m.D_B(pooled_B))
    loss_D = losses["D_A"] + losses["D_B"]
    if not torch.isfinite(loss_D).item():
        raise FloatingPointError(f"discriminator loss {loss_D.item()}")
    loss_D.backward()
    trainer.opt_D.step()
    trainer.step += 1
    return {k: v.detach() for k, v in losses.items()}


class PlainLoop:
    """A CycleGAN training step written independently of Trainer, the way the authors' code runs it,
    for bench.py --profile to measure Trainer's host overhead against: its own networks, torch's
    default Adam, image pools drawn with Python's `random`, six generator calls, the
    discriminators' real and fake images in separate calls, float32. It shares nothing with
    Trainer but the network classes (with torch's
    own InstanceNorm2d put back) and the loss functions."""

    def __init__(self, config: ModelConfig, device: torch.device, lambda_cycle: float = 10.0,
                 lambda_identity: float = 0.5, pool_size: int = 50, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.lambda_cycle, self.lambda_identity, self.pool_size = lambda_cycle, lambda_identity, pool_size
        self.G_AB, self.G_BA = (Generator(config.ngf, config.n_blocks).to(device) for _ in range(2))
        self.D_A, self.D_B = (Discriminator(config.ndf, config.n_layers).to(device) for _ in range(2))
        for net in (self.G_AB, self.G_BA, self.D_A, self.D_B):
            init_weights(net)
            for module in list(net.modules()):  # torch's own instance norm, as in the authors' networks
                for name, child in module.named_children():
                    if isinstance(child, nn.InstanceNorm2d):
                        setattr(module, name, nn.InstanceNorm2d(child.num_features, affine=child.affine))
        betas = (0.5, 0.999)
        self.opt_G = torch.optim.Adam([*self.G_AB.parameters(), *self.G_BA.parameters()], lr=2e-4, betas=betas)
        self.opt_D = torch.optim.Adam([*self.D_A.parameters(), *self.D_B.parameters()], lr=2e-4, betas=betas)
        self.pools: dict[str, list[torch.Tensor]] = {"A": [], "B": []}
        self.random = random.Random(seed)

    def query(self, domain: str, images: torch.Tensor) -> torch.Tensor:
        pool, out = self.pools[domain], []
        for image in images:
            image = image[None]
            if len(pool) < self.pool_size:
                pool.append(image)
                out.append(image)
            elif self.random.uniform(0, 1) > 0.5:
                i = self.random.randint(0, self.pool_size - 1)
                out.append(pool[i].clone())
                pool[i] = image
            else:
                out.append(image)
        return torch.cat(out)

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor, lr: float = 2e-4) -> dict[str, torch.Tensor]:
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                group["lr"] = lr
        for D in (self.D_A, self.D_B):
            D.requires_grad_(False)
        self.opt_G.zero_grad()
        fake_B, fake_A = self.G_AB(real_A), self.G_BA(real_B)
        rec_A, rec_B = self.G_BA(fake_B), self.G_AB(fake_A)
        idt_B, idt_A = self.G_AB(real_B), self.G_BA(real_A)
        weight = self.lambda_cycle * self.lambda_identity
        losses = {"G_AB": adversarial_loss(self.D_B(fake_B), True), "G_BA": adversarial_loss(self.D_A(fake_A), True),
                  "cycle_A": self.lambda_cycle * cycle_loss(real_A, rec_A),
                  "cycle_B": self.lambda_cycle * cycle_loss(real_B, rec_B),
                  "idt_A": weight * identity_loss(real_A, idt_A), "idt_B": weight * identity_loss(real_B, idt_B)}
        sum(losses.values()).backward()
        self.opt_G.step()
        for D in (self.D_A, self.D_B):
            D.requires_grad_(True)
        self.opt_D.zero_grad()
        pooled_A, pooled_B = self.query("A", fake_A.detach()), self.query("B", fake_B.detach())
        losses["D_A"] = discriminator_loss(self.D_A(real_A), self.D_A(pooled_A))
        losses["D_B"] = discriminator_loss(self.D_B(real_B), self.D_B(pooled_B))
        (losses["D_A"] + losses["D_B"]).backward()
        self.opt_D.step()
        return {k: v.detach() for k, v in losses.items()}


def graphs_against_eager(device: torch.device, config: ModelConfig, steps: int = 50, size: int = 64,
                         amp: str = "none", memory_format: str = "channels_last") -> dict:
    """Trainer with --cuda-graphs against the same Trainer without (same seed and batches, a pool of 2,
    float32 unless `amp` says otherwise, in `memory_format`): the largest relative difference of the losses at the first
    replayed step (the third: the pools fill first), G_AB's output on a fixed image after `steps` as
    8-bit PSNR, whether the step was captured at all (Trainer falls back to the eager step when the
    capture fails), and whether a learning rate set to 0 after capture leaves the weights alone (the
    graph reads the lr tensor). `ok`: float32 within 1e-4 and 40 dB (issue 26); bf16, whose rounding
    turns any difference into more, within 1e-2 and 30 dB."""
    g = torch.Generator().manual_seed(0)
    batches = [{d: (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device) for d in "AB"} for _ in range(steps)]
    probe = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device)
    trainers = {graphs: Trainer(TrainConfig(amp=amp, pool_size=2, cuda_graphs=graphs, memory_format=memory_format),
                                 config, device)
                for graphs in (False, True)}
    first = {}
    for i, batch in enumerate(batches):
        losses = {graphs: t.train_step(batch) for graphs, t in trainers.items()}
        if i == 2:
            first = {k: abs(losses[True][k].item() - v.item()) / max(abs(v.item()), 1e-8) for k, v in losses[False].items()}
    with torch.no_grad():
        out = {graphs: t.model.G_AB(probe).clamp(-1, 1).add(1).mul(127.5).round() for graphs, t in trainers.items()}
    mse = (out[True] - out[False]).pow(2).mean().item()
    graphed = trainers[True]
    before = [p.clone() for p in graphed.model.G_AB.parameters()]
    graphed.set_lr(0.0)
    graphed.train_step(batches[0])
    frozen = all(torch.equal(a, b) for a, b in zip(before, graphed.model.G_AB.parameters()))
    psnr = float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    worst = max(first.values())
    captured = graphed.graph is not None and graphed.graph.graph is not None
    rel, db = (1e-4, 40) if amp == "none" else (1e-2, 30)
    return {"amp": amp, "memory_format": memory_format, "captured": captured,
            "first_replayed_step_max_rel_loss_diff": worst, "psnr_after_steps_db": psnr, "steps": steps, "lr_zero_keeps_weights": frozen,
            "ok": captured and worst <= rel and psnr >= db and frozen}
