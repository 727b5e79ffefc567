"""What benchmarks/bench.py (and tests/test_perf.py) measure the package against: bf16 autocast
simulated at float32 speed for CPUs that emulate bf16, and Trainer.train_step's maths written plainly."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from cyclegan.losses import adversarial_loss, cycle_loss, discriminator_loss, identity_loss
from cyclegan.inference import cpu_has_native_bf16, run_any_size
from cyclegan.training import Trainer


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
