"""The training step of the paper: the networks, their two Adam optimisers and the discriminators'
image pools, and `Trainer.train_step`, one generator update and one discriminator update."""
from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch
import torch.distributed as dist

from ..data import FIXED_SIZE
from ..losses import ImagePool, adversarial_loss, cycle_loss, discriminator_loss, identity_loss
from ..model import CycleGAN, ModelConfig
from .checkpoints import restore_trainer, trainer_state
from .recipe import TrainConfig, choose_amp
from .tally import LossTally


def make_adam(params, config: TrainConfig, graphs: bool = False) -> tuple[torch.optim.Adam, bool]:
    """Adam as the recipe sets it: fused where torch has it for the parameters' device (one kernel
    for all of them, and the `found_inf` input that skips a step on the device); otherwise torch's
    default. For CUDA graphs, capturable with the learning rate in a device tensor, which a replayed
    graph reads (a float would stay what it was at capture). Returns the optimiser and whether it is fused."""
    params, betas = list(params), (config.beta1, config.beta2)
    if graphs:
        # its steps before the capture (the pools' fill) are meant to run uncaptured: not worth a warning
        warnings.filterwarnings("ignore", r".*capturable=True.*running without CUDA graph capture", UserWarning)
        lr = torch.tensor(config.lr, device=params[0].device)
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True, capturable=True), True
    try:
        return torch.optim.Adam(params, lr=config.lr, betas=betas, fused=True), True
    except (RuntimeError, ValueError):  # torch < 2.4 on the CPU, or a device without the fused kernel
        return torch.optim.Adam(params, lr=config.lr, betas=betas), False


class Trainer:
    """Holds the networks, optimisers and pools, and performs `train_step`s.

    `G_AB`/`G_BA`/`D_A`/`D_B` are what is called in the step: the model's own networks, or their
    DDP/compiled wrappers; `self.model` always holds the plain modules whose state is saved
    (checkpoints.trainer_state). With --cuda-graphs, `self.graph` (graphs.StepGraph) replays the step.

    A step never waits for the device: a non-finite loss skips its update on the device (fused
    Adam's `found_inf`), and the losses and the count of skipped steps accumulate in `self.tally`
    until the loop reads them, once per logging window.
    """

    def __init__(self, config: TrainConfig, model_config: ModelConfig, device: torch.device | str = "cpu",
                 distributed: bool = False, recorded_amp: str | None = None, graph_ready: bool = False) -> None:
        self.config, self.device, self.distributed = config, torch.device(device), distributed
        self.model = m = CycleGAN(model_config, with_discriminators=True).init_weights(config.seed).to(self.device)
        cuda = self.device.type == "cuda"
        # The CPU trains in NCHW: channels_last is slower there, and torch 2.13's CPU instance_norm backward
        # misreads a channels_last incoming gradient (F.instance_norm(x) * w with w channels_last: wrong grads).
        channels_last = cuda and config.memory_format == "channels_last"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        m.to(memory_format=self.memory_format)
        if cuda and config.preprocess in FIXED_SIZE:
            # Every batch has one shape: cuDNN times its convolution algorithms at the first step and
            # keeps the fastest for the run (as the authors' code does for these preprocessings).
            torch.backends.cudnn.benchmark = True
        self.amp, how = choose_amp(config, self.device, m.G_AB, recorded_amp, distributed)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        self.precision = {"bf16": "bf16 autocast", "fp16": "fp16 autocast", "none": "fp32"}[self.amp] + how
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.G_AB, self.G_BA, self.D_A, self.D_B = wrapped((m.G_AB, m.G_BA, m.D_A, m.D_B), config.compile,
                                                           distributed, self.device)
        graph_ready = config.cuda_graphs or graph_ready
        self.opt_G, self.fused = make_adam([*m.G_AB.parameters(), *m.G_BA.parameters()], config, graph_ready)
        self.opt_D, _ = make_adam([*m.D_A.parameters(), *m.D_B.parameters()], config, graph_ready)
        self.pool_A = ImagePool(config.pool_size, seed=config.seed + 1, device=self.device)
        self.pool_B = ImagePool(config.pool_size, seed=config.seed + 2, device=self.device)
        self.ema = None
        if config.ema_decay > 0:
            # in the weights' layout: _foreach_lerp_'s one-kernel path needs the same strides on both sides
            self.ema = CycleGAN(model_config).to(self.device, memory_format=self.memory_format)
            self.ema.requires_grad_(False).eval()
            self.reset_ema()
        self.best: dict = {}  # validation scores and step of the best model so far
        self.validation_due = False  # this step's validation was cut short by a stop; run it on resume
        self.step = 0
        self.seconds = 0.0  # training time up to the last save, summed over resumed runs
        # Set by graphs.undone(): the step computes everything and updates nothing. A device flag, read
        # by the step on the device, so that a captured graph reads it too.
        self.skip = torch.zeros((), dtype=torch.bool, device=self.device)
        self.tally = LossTally(self.device, config.on_nan)
        self.graph = None
        if config.cuda_graphs:  # the narrow door: the capture machinery is imported only when asked for
            from .graphs import step_graph
            self.graph = step_graph(self)

    def reset_ema(self) -> None:
        for name in ("G_AB", "G_BA"):
            getattr(self.ema, name).load_state_dict(getattr(self.model, name).state_dict())

    @torch.no_grad()
    def update_ema(self) -> None:
        average = [p for name in ("G_AB", "G_BA") for p in getattr(self.ema, name).parameters()]
        current = [p for name in ("G_AB", "G_BA") for p in getattr(self.model, name).parameters()]
        torch._foreach_lerp_(average, current, 1 - self.config.ema_decay)

    def set_lr(self, factor: float) -> float:
        lr = self.config.lr * factor
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                if isinstance(group["lr"], torch.Tensor):  # read by a CUDA graph: changed in place
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr
        return lr

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One generator and one discriminator update. Returns the detached loss terms (tensors
        on the device: the loop reads them, summed, once per logging window). With --cuda-graphs, a
        replay of the captured step once the pools are full."""
        real_A = batch["A"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        real_B = batch["B"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        losses = self.graph.replay_or_none(real_A, real_B) if self.graph is not None else None
        if losses is None:
            losses = self.step_on(real_A, real_B)
        self.step += 1
        return losses

    def step_on(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's device work on batches already on the device, with no host read and no host
        value that changes from step to step (so that it can be captured as a CUDA graph); with the
        skip flag set it computes everything but updates no weight."""
        c, m = self.config, self.model
        n = real_A.shape[0]
        use_identity = c.lambda_identity > 0

        # Generators. The discriminators are frozen and called unwrapped (no DDP sync): only
        # the generators' parameters get gradients from this loss.
        for D in (m.D_A, m.D_B):
            D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        with self._autocast():
            # Instance norm is per sample, so the calls of one generator share a batch where they
            # can: G_BA's fake, identity and reconstruction in one call, three calls in all.
            if use_identity:
                fake_B, idt_B = self.G_AB(torch.cat([real_A, real_B])).split(n)
                fake_A, idt_A, rec_A = self.G_BA(torch.cat([real_B, real_A, fake_B])).split(n)
            else:
                fake_B = self.G_AB(real_A)
                fake_A, rec_A = self.G_BA(torch.cat([real_B, fake_B])).split(n)
            rec_B = self.G_AB(fake_A)
            losses = {
                "G_AB": adversarial_loss(m.D_B(fake_B).float(), True),
                "G_BA": adversarial_loss(m.D_A(fake_A).float(), True),
                "cycle_A": c.lambda_cycle * cycle_loss(real_A, rec_A.float()),
                "cycle_B": c.lambda_cycle * cycle_loss(real_B, rec_B.float()),
            }
            if use_identity:
                weight = c.lambda_cycle * c.lambda_identity
                losses["idt_A"] = weight * identity_loss(real_A, idt_A.float())
                losses["idt_B"] = weight * identity_loss(real_B, idt_B.float())
            loss_G = sum(losses.values())
        bad_G = ~torch.isfinite(loss_G) | self.skip
        self._update(loss_G, self.opt_G, bad_G)

        # Discriminators, on real images and on fakes drawn from the pools.
        for D in (m.D_A, m.D_B):
            D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        fake_A = self.pool_A.query(fake_A.detach().float()).to(memory_format=self.memory_format)
        fake_B = self.pool_B.query(fake_B.detach().float()).to(memory_format=self.memory_format)
        with self._autocast():
            pred_A = self.D_A(torch.cat([real_A, fake_A])).float()
            pred_B = self.D_B(torch.cat([real_B, fake_B])).float()
            losses["D_A"] = discriminator_loss(*pred_A.split([n, fake_A.shape[0]]))
            losses["D_B"] = discriminator_loss(*pred_B.split([n, fake_B.shape[0]]))
            loss_D = losses["D_A"] + losses["D_B"]
        bad_D = ~torch.isfinite(loss_D)
        self._update(loss_D, self.opt_D, bad_G | bad_D)
        if self.scaler is not None:
            self.scaler.update()
        if self.ema is not None:  # after a skipped step it moves towards the unchanged weights
            self.update_ema()
        losses = {k: v.detach() for k, v in losses.items()}
        self.tally.add(losses, bad_G, bad_D, loss_G.detach(), loss_D.detach())
        return losses

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _update(self, loss: torch.Tensor, opt: torch.optim.Optimizer, bad: torch.Tensor) -> None:
        """Backward and an optimiser step that leaves weights and optimiser state as they were when
        `bad` (a device bool) is set: fused Adam skips on the device; an unfused one needs a read."""
        if self.scaler is not None:  # its own found_inf: non-finite gradients skip the step
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            return
        loss.backward()
        found_inf = bad.float()
        if self.distributed:  # the gradients are averaged over ranks: one rank's bad step is every rank's
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)
        if self.fused:
            opt.found_inf = found_inf
            opt.step()
        elif not found_inf.item():  # torch's unfused Adam has no found_inf input
            opt.step()

    def state_dict(self) -> dict:
        return trainer_state(self)

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        restore_trainer(self, state, source)


def wrapped(networks: tuple[torch.nn.Module, ...], compile: bool, distributed: bool,
            device: torch.device) -> tuple[torch.nn.Module, ...]:
    """The networks as the step calls them: compiled (--compile), then in DDP under torchrun."""
    if compile:
        networks = tuple(torch.compile(n) for n in networks)
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device.type == "cuda" else None
        networks = tuple(DDP(n, device_ids=ids) for n in networks)
    return networks
