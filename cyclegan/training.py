"""Training a CycleGAN: the recipe (TrainConfig), one optimisation step, and the loop around it
that handles data, the schedule, checkpoints, samples and logs."""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .data import FIXED_SIZE, PREPROCESS, DeviceImages, EpochSampler, UnpairedDataset
from .datasets import DATASETS_URL, download_dataset
from .files import one_line, write_atomic
from . import inference
from .losses import ImagePool, adversarial_loss, cycle_loss, discriminator_loss, identity_loss
from .model import DIRECTIONS, CycleGAN, ModelConfig
from .runlog import LossLog, sample_images, save_samples, write_validation_list


def _opt(help: str, **kw):
    """A field with its --help text; `recipe=False` keeps it out of the recipe saved with the model."""
    meta = {"help": help, **kw.pop("meta", {})}
    if not kw.pop("recipe", True):
        meta["recipe"] = False
    return field(metadata=meta, **kw)


@dataclass
class TrainConfig:
    """The training recipe; defaults are the paper's. train.py makes one flag of each field."""

    dataroot: str = _opt("folder with trainA/ and trainB/ (and optionally testA/, testB/)", default="", recipe=False)
    dataset: str = _opt("official CycleGAN dataset to download by name, e.g. horse2zebra", default="", recipe=False)
    data_dir: str = _opt("where --dataset is downloaded", default="datasets", recipe=False)
    dataset_url: str = _opt("server of the official datasets (NAME.zip below it)", default=DATASETS_URL,
                            recipe=False)
    output: str = _opt("run directory (default: runs/<dataset name>)", default="", recipe=False)
    epochs: int = _opt("epochs at the initial learning rate", default=100)
    decay_epochs: int = _opt("epochs of linear decay of the learning rate to 0", default=100)
    batch_size: int = _opt("images per domain per step (per process)", default=1)
    lr: float = _opt("Adam learning rate", default=2e-4)
    beta1: float = _opt("Adam beta1", default=0.5)
    beta2: float = _opt("Adam beta2", default=0.999)
    lambda_cycle: float = _opt("weight of the cycle-consistency loss", default=10.0)
    lambda_identity: float = _opt("identity loss weight, as a fraction of lambda_cycle (0 switches it off)",
                                  default=0.5)
    pool_size: int = _opt("fakes kept per discriminator (0: no pool)", default=50)
    preprocess: str = _opt("image preprocessing", default="resize_and_crop",
                           meta={"choices": PREPROCESS})
    load_size: int = _opt("images are resized to this size first", default=286)
    crop_size: int = _opt("then randomly cropped to this size", default=256)
    flip: bool = _opt("random horizontal flips", default=True)
    device: str = _opt("where to train", default="auto", meta={"choices": ("auto", "cpu", "cuda", "mps")})
    amp: str = _opt("mixed precision (auto: bf16 on CUDA where supported; on the CPU bf16 only where a short "
                    "timing of the generator's training step measures it faster; fp32 elsewhere)", default="auto",
                    meta={"choices": ("auto", "none", "bf16", "fp16")})
    compile: bool = _opt("torch.compile the networks", default=False)
    cuda_graphs: bool = _opt("replay each training step as one CUDA graph once the image pools are full (no "
                             "launch overhead; CUDA only, a fixed-size --preprocess, not with --compile, DDP or "
                             "--amp fp16); checked at capture against the eager step (its losses, and its update at "
                             "another learning rate), which training falls back to", default=False,
                             recipe=False)
    memory_format: str = _opt("layout of images and weights on CUDA: channels_last (NHWC, what cuDNN's tensor "
                               "cores convolve) or nchw (instance norm's own layout); the CPU trains in nchw",
                               default="channels_last", recipe=False, meta={"choices": ("channels_last", "nchw")})
    ema_decay: float = _opt("keep an exponential moving average of the generators' weights with this decay "
                            "per step, e.g. 0.999 (0: none)", default=0.0)
    val_count: int = _opt("images of each domain held out of trainA/ and trainB/ for validation (listed in "
                          "the run's validation.txt; never trained on)", default=0)
    eval_every: int = _opt("FID/KID on the validation images every N steps, into losses.csv; the best model "
                           "so far is kept in best/ (0: never)", default=0, recipe=False)
    workers: int = _opt("data loading processes", default=2, recipe=False)
    data_on_device: str = _opt("decode the training images once into the device's memory and crop and flip "
                               "batches there (the same pixels as the loader; resize_and_crop only). auto: on "
                               "CUDA when they fit in a quarter of its memory", default="auto", recipe=False,
                               meta={"choices": ("auto", "yes", "no")})
    seed: int = _opt("seed of initialisation, data order and augmentation", default=0)
    max_steps: int = _opt("stop when the total step count reaches this (0: run the whole schedule)", default=0)
    save_every: int = _opt("write checkpoint.pt and model/ every N steps (and at each epoch's end)", default=1000,
                           recipe=False)
    sample_every: int = _opt("write a sample grid every N steps (and at the end)", default=1000, recipe=False)
    log_every: int = _opt("average the losses over N steps into losses.csv and the progress bar", default=20,
                          recipe=False)
    n_samples: int = _opt("test images per domain in the sample grids", default=4, recipe=False)
    on_nan: str = _opt("what to do when a loss is NaN or infinite", default="stop", meta={"choices": ("stop", "skip")})
    resume: str = _opt("run directory or checkpoint.pt to continue from", default="", recipe=False)
    push_to_hub: str = _opt("Hub repo id to upload model/ to at the end (float16 weights)", default="", recipe=False)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, decay_epochs: int) -> float:
    """Constant for `epochs`, then linear decay to 0 over `decay_epochs` (per step)."""
    decay_start = epochs * steps_per_epoch
    if step < decay_start:
        return 1.0
    return max(0.0, 1.0 - (step - decay_start) / max(1, decay_epochs * steps_per_epoch))


def resolve_device(name: str) -> torch.device:
    """--device NAME: "auto" is CUDA, else MPS, else the CPU; CUDA is this process's GPU (LOCAL_RANK under torchrun)."""
    if name == "auto":
        mps = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name != "cuda":
        return torch.device(name)
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def _ignore_stop_signals(worker_id: int) -> None:
    # Ctrl-C and `kill` reach the whole process group; the main process decides when to stop and
    # shuts its data workers down itself, so a worker dying first must not abort the final save.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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


def choose_amp(config: TrainConfig, device: torch.device, G: torch.nn.Module, recorded: str | None = None,
               distributed: bool = False) -> tuple[str, str]:
    """--amp as "none", "bf16" or "fp16", and how it was chosen, for the start-up line. "auto": bf16 on
    CUDA where supported; on the CPU bf16 only where a short timing of this generator's training
    step measured it faster (inference.cpu_precision), else fp32. A resumed run keeps the choice its
    checkpoint recorded, and under DDP every rank takes rank 0's."""
    amp = config.amp
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"--amp fp16 needs a CUDA device (training on {device}); use --amp bf16 or none")
    if amp != "auto":
        how = ""
        if amp == "bf16" and device.type == "cpu" and not inference.cpu_has_native_bf16():
            how = " emulated in software (no AVX512-BF16 or AMX: ~25x slower than fp32 here)"
        return amp, how
    if recorded in ("none", "bf16", "fp16"):
        return recorded, " (auto: the choice recorded in the checkpoint)"
    if device.type == "cuda":
        amp, how = ("bf16" if torch.cuda.is_bf16_supported() else "none"), " (auto)"
    elif device.type == "cpu":
        choice = inference.cpu_precision(G, training=True)
        amp, how = ("bf16" if choice.dtype is not None else "none"), f" (auto: {choice.reason})"
    else:
        amp, how = "none", " (auto)"
    if distributed:
        chosen = [amp, how]
        dist.broadcast_object_list(chosen, src=0)
        amp, how = chosen
    return amp, how


@contextmanager
def cudnn_benchmark(on: bool):
    """cuDNN's timing of convolution algorithms on or off inside; as it was after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class CaptureBroken(RuntimeError):
    """CUDA refused a capture midway (a call it forbids while capturing): the process's current stream
    and its memory allocator are left in capture mode, so training cannot safely go on in it."""


class StepGraph:
    """Trainer.step_on captured as one CUDA graph and replayed: the host issues one launch a step
    instead of thousands. Captured at the first replay (the pools full, so that their fill phase,
    a host branch, is over), after warm-up steps on a side stream inside `Trainer.undone()` (they
    update nothing and leave no trace), then checked (`check`): one replay must give the losses and
    the update of one eager step on the same batch from the same state. Each replay reads the batch
    from static inputs, the learning rate from the optimisers' lr tensors, the skip flag from the
    trainer's, and the pools' generators from their registered state."""

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.losses: dict[str, torch.Tensor] = {}

    def replay(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.inputs is None or self.inputs[0].shape != real_A.shape or self.inputs[1].shape != real_B.shape:
            self.capture(real_A, real_B)
        self.inputs[0].copy_(real_A, non_blocking=True)
        self.inputs[1].copy_(real_B, non_blocking=True)
        self.graph.replay()
        return self.losses

    def capture(self, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
        """Warm up, capture and check; on failure the trainer is left as an eager step would find it
        (the pools' generators are replaced by fresh ones in their saved state, the gradients dropped)
        and the error is raised for Trainer.train_step to fall back on, except CaptureBroken."""
        t = self.trainer
        pools = (t.pool_A, t.pool_B)
        rng = [pool.rng.get_state() for pool in pools]
        stream = torch.cuda.current_stream(t.device)
        capturing = False
        try:
            self.inputs = (real_A.clone(), real_B.clone())
            with t.undone():
                side = torch.cuda.Stream(t.device)
                side.wait_stream(stream)
                try:
                    with torch.cuda.stream(side):  # lazily built state (Adam's moments, cuDNN plans) is made here
                        for _ in range(3):
                            t.step_on(*self.inputs)
                finally:  # undone()'s restores follow the warm-up's kernels, also when one of them raised
                    stream.wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            for pool in pools:
                self.graph.register_generator_state(pool.rng)
            capturing = True
            # thread_local: the DataLoader's pin-memory thread may call CUDA while this thread captures
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.losses = t.step_on(*self.inputs)
            capturing = False
            self.check()
        except Exception as e:
            # Where CUDA ended the capture itself, torch.cuda.graph could not end it: the current stream
            # is still its capture stream (and the allocator still routes into the graph's pool).
            broken = capturing and torch.cuda.current_stream(t.device) != stream
            self.graph, self.inputs, self.losses = None, None, {}
            for pool, state in zip(pools, rng):  # a generator a failed capture registered is not reused
                pool.rng = torch.Generator(pool.device)
                pool.rng.set_state(state)
            for opt in (t.opt_G, t.opt_D):  # gradients a failed capture allocated hold no values
                opt.zero_grad(set_to_none=True)
            if broken:
                torch.cuda.set_stream(stream)
                raise CaptureBroken(f"--cuda-graphs: CUDA refused to capture the training step ({type(e).__name__}: "
                                    f"{one_line(e, 300)}); this process cannot safely go on: rerun (or --resume) "
                                    "without --cuda-graphs") from e
            raise

    def check(self, rtol: float = 1e-3, update_tol: float = 0.5) -> None:
        """One replay against one eager step on the same batch from the same state, both inside
        `undone()` (no trace): first without updates, the same losses within `rtol`; then with them, at
        half the learning rate the graph was captured with, the same weights after, within `update_tol`
        of the eager update's norm (cuDNN's non-deterministic kernels and the Adam moments of
        near-zero gradients make them differ a little; a replay that skips its update or uses the
        capture's learning rate differs by the whole update). Raises a RuntimeError naming what differs:
        a graph that computes something else than the step (e.g. from a stale input or a value frozen
        at capture). gpu_check's graphs_against_eager also compares weights after 50 steps."""
        t = self.trainer
        with t.undone():
            eager = {k: v.item() for k, v in t.step_on(*self.inputs).items()}
        with t.undone():
            self.graph.replay()
            replayed = {k: v.item() for k, v in self.losses.items()}
        for name, value in eager.items():
            if not abs(replayed[name] - value) <= rtol * max(abs(value), abs(replayed[name])) + 1e-6:
                raise RuntimeError(f"the replayed step's {name} loss is {replayed[name]:.6g}, the eager step's "
                                   f"{value:.6g}")
        self.check_update(update_tol)

    def check_update(self, tol: float) -> None:
        t = self.trainer
        lr = t.opt_G.param_groups[0]["lr"]
        factor = float(lr) / t.config.lr if t.config.lr else 0.0
        if not factor:  # nothing moves at lr 0
            return
        weights = [p.detach() for p in t.model.parameters()]
        try:
            after = []
            for step in (lambda: t.step_on(*self.inputs), self.graph.replay):
                with t.undone(update=True):
                    t.set_lr(factor / 2)
                    step()
                    after.append([w.clone() for w in weights])
        finally:
            t.set_lr(factor)
        norm = lambda tensors: torch.stack(torch._foreach_norm(tensors)).norm().item()  # noqa: E731
        # undone() put the weights back: they are those both steps started from
        moved, differs = norm(torch._foreach_sub(after[0], weights)), norm(torch._foreach_sub(after[1], after[0]))
        if differs > tol * moved:
            raise RuntimeError(f"the replayed step's update differs from the eager step's by {differs / moved:.0%} "
                               f"of its norm ({moved:.3g}) at lr {t.config.lr * factor / 2:.3g}")


class Trainer:
    """Holds the networks, optimisers and pools, and performs `train_step`s.

    `G_AB`/`G_BA`/`D_A`/`D_B` are what is called in the step: the model's own networks, or their
    DDP/compiled wrappers; `self.model` always holds the plain modules whose state is saved.

    A step never waits for the device: a non-finite loss skips its update on the device (fused
    Adam's `found_inf`), and the losses and the count of skipped steps accumulate there until
    `read_losses` and `check_finite` read them, once per logging window.
    """

    def __init__(self, config: TrainConfig, model_config: ModelConfig, device: torch.device | str = "cpu",
                 distributed: bool = False, recorded_amp: str | None = None, graph_ready: bool = False) -> None:
        self.config, self.device, self.distributed = config, torch.device(device), distributed
        self.model = CycleGAN(model_config, with_discriminators=True).init_weights(config.seed).to(self.device)
        cuda = self.device.type == "cuda"
        # The CPU trains in NCHW: channels_last is slower there, and torch 2.13's CPU instance_norm backward
        # misreads a channels_last incoming gradient (F.instance_norm(x) * w with w channels_last: wrong grads).
        channels_last = cuda and config.memory_format == "channels_last"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        if cuda and config.preprocess in FIXED_SIZE:
            # Every batch has one shape: cuDNN times its convolution algorithms at the first step and
            # keeps the fastest for the run (as the authors' code does for these preprocessings).
            torch.backends.cudnn.benchmark = True
        self.amp, how = choose_amp(config, self.device, self.model.G_AB, recorded_amp, distributed)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        self.precision = {"bf16": "bf16 autocast", "fp16": "fp16 autocast", "none": "fp32"}[self.amp] + how
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None

        m = self.model
        self.G_AB, self.G_BA, self.D_A, self.D_B = m.G_AB, m.G_BA, m.D_A, m.D_B
        if config.compile:
            self.G_AB, self.G_BA, self.D_A, self.D_B = (torch.compile(n) for n in (m.G_AB, m.G_BA, m.D_A, m.D_B))
        if distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if cuda else None
            self.G_AB, self.G_BA, self.D_A, self.D_B = (DDP(n, device_ids=ids) for n in
                                                        (self.G_AB, self.G_BA, self.D_A, self.D_B))
        if config.cuda_graphs and (not cuda or config.compile or distributed or self.amp == "fp16"):
            raise ValueError(f"--cuda-graphs needs a CUDA device, without --compile, DDP or --amp fp16 "
                             f"(training on {self.device}{', compiled' if config.compile else ''}"
                             f"{', DDP' if distributed else ''}, amp {self.amp})")
        if config.cuda_graphs and config.preprocess not in FIXED_SIZE:  # a graph is captured for one shape
            raise ValueError(f"--cuda-graphs needs batches of one size: --preprocess {' or '.join(FIXED_SIZE)} "
                             f"(not {config.preprocess})")
        graph_ready = config.cuda_graphs or graph_ready
        self.opt_G, self.fused = make_adam([*m.G_AB.parameters(), *m.G_BA.parameters()], config, graph_ready)
        self.opt_D, _ = make_adam([*m.D_A.parameters(), *m.D_B.parameters()], config, graph_ready)
        self.graph = StepGraph(self) if config.cuda_graphs else None
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
        self.skip = torch.zeros((), dtype=torch.bool, device=self.device)  # set inside undone(): no updates
        self._reset_counters(skipped=0)

    def _reset_counters(self, skipped: int) -> None:
        """The device-side tallies, updated in place (a CUDA graph replays into the same tensors): the
        step count; loss sums (in `loss_names` order) and finite steps since the last read; skipped steps
        in all; (step, 1 generator / 2 discriminator, loss) of the first non-finite loss since the last check."""
        zeros = lambda: torch.zeros((), device=self.device)  # noqa: E731
        self.step_count = zeros() + self.step
        self.loss_names: list[str] = []
        self.loss_sums = torch.zeros(0, device=self.device)
        self.finite_steps = zeros()
        self.skipped = zeros() + skipped
        self.first_bad = torch.tensor([-1.0, 0.0, 0.0], device=self.device)
        self.skipped_read = skipped

    @contextmanager
    def undone(self, update: bool = False):
        """Steps taken inside update no weight and no optimiser state (the skip flag, which the step and
        a captured graph read, is set) and leave no trace: the pools, their random draws, the weight
        average and the tallies are put back as they were. With `update`, the steps inside do update,
        and the weights and the optimisers' state (which must exist) are put back too, in place (a
        captured graph holds their addresses)."""
        pools = [(pool, None if pool.images is None else pool.images.clone(), pool.filled, pool.rng.get_state())
                 for pool in (self.pool_A, self.pool_B)]
        restored = [self.step_count, self.loss_sums, self.finite_steps, self.skipped, self.first_bad]
        if self.ema is not None:
            restored += list(self.ema.parameters())
        if update:
            restored += [p.detach() for p in self.model.parameters()]
            restored += [v for opt in (self.opt_G, self.opt_D) for state in opt.state.values()
                         for v in state.values() if isinstance(v, torch.Tensor)]
        saved = [t.clone() for t in restored]
        names = list(self.loss_names)
        self.skip.fill_(not update)
        try:
            yield
        finally:
            self.skip.fill_(False)
            for pool, images, filled, rng in pools:
                if images is not None:
                    pool.images.copy_(images)
                pool.filled = filled
                pool.rng.set_state(rng)
            with torch.no_grad():
                for tensor, before in zip(restored, saved):
                    tensor.copy_(before)
            if not names:  # the loss sums were made inside: they stay (a graph adds into them), at zero
                self.loss_sums.zero_()

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

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One generator and one discriminator update. Returns the detached loss terms (tensors
        on the device: the loop reads them, summed, once per logging window). With --cuda-graphs, a
        replay of the captured step once the pools are full."""
        real_A = batch["A"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        real_B = batch["B"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        losses = None
        if self.graph is not None and self.pool_A.full and self.pool_B.full:
            try:
                losses = self.graph.replay(real_A, real_B)
            except CaptureBroken:
                raise
            except Exception as e:  # a capture this torch or GPU refuses, or one that differs: the eager step goes on
                print(f"warning: --cuda-graphs: the training step could not be captured ({type(e).__name__}: "
                      f"{one_line(e, 300)}); training goes on without CUDA graphs", file=sys.stderr)
                self.graph = None
        if losses is None:
            losses = self.step_on(real_A, real_B)
        self.step += 1
        return losses

    def step_on(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's device work on batches already on the device, with no host read and no host
        value that changes from step to step (so that it can be captured as a CUDA graph); with the
        skip flag set (`undone()`) it computes everything but updates no weight."""
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
        self._tally(losses, bad_G, bad_D, loss_G.detach(), loss_D.detach())
        return losses

    @torch.no_grad()
    def _tally(self, losses: dict[str, torch.Tensor], bad_G: torch.Tensor, bad_D: torch.Tensor,
               loss_G: torch.Tensor, loss_D: torch.Tensor) -> None:
        if not self.loss_names:  # the terms are known at the first step (the identity terms or not)
            self.loss_names, self.loss_sums = list(losses), torch.zeros(len(losses), device=self.device)
        bad = bad_G | bad_D
        self.step_count.add_(1)
        self.loss_sums.add_(torch.where(bad, 0.0, torch.stack([losses[k].float() for k in self.loss_names])))
        self.finite_steps.add_(~bad)
        self.skipped.add_(bad)
        this = torch.stack([self.step_count, torch.where(bad_G, 1.0, 2.0),
                            torch.where(bad_G, loss_G.float(), loss_D.float())])
        self.first_bad.copy_(torch.where(bad & (self.first_bad[0] < 0), this, self.first_bad))

    def read_losses(self) -> dict[str, float]:
        """The mean of each loss over the finite steps since the last read (one read of the device),
        and "skipped_steps", the non-finite steps of the whole run; starts a new window."""
        *sums, finite, skipped = torch.cat([self.loss_sums, self.finite_steps[None], self.skipped[None]]).tolist()
        self.loss_sums.zero_()
        self.finite_steps.zero_()
        means = {k: s / finite for k, s in zip(self.loss_names, sums)} if finite else {}
        return {**means, "skipped_steps": skipped}

    def check_finite(self) -> int:
        """Read whether a loss was non-finite since the last check (one read of the device). Under
        --on-nan stop that raises FloatingPointError naming the first such step (each non-finite step's
        update was skipped; the finite steps around it were applied); under skip, a warning.
        Returns the steps skipped in the whole run."""
        step, which, value, skipped = torch.cat([self.first_bad, self.skipped[None]]).tolist()
        if step < 0:
            return int(skipped)
        what = "generator" if which == 1 else "discriminator"
        message = f"step {int(step)}: the {what} loss is {value}"
        if self.config.on_nan == "stop":
            raise FloatingPointError(message + "; its update was skipped and training stops (--on-nan skip "
                                     "skips such steps instead)")
        print(f"warning: {message}; skipped {int(skipped) - self.skipped_read} such step(s) since the last "
              f"check, {int(skipped)} in all", file=sys.stderr)
        self.first_bad.fill_(-1.0)
        self.skipped_read = int(skipped)
        return int(skipped)

    # ---- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict:
        m = self.model
        state = {
            "step": self.step,
            "seconds": self.seconds,
            "amp": self.amp,
            "skipped_steps": int(self.skipped.item()),
            "model_config": asdict(m.config),
            "train_config": asdict(self.config),
            **{name: getattr(m, name).state_dict() for name in ("G_AB", "G_BA", "D_A", "D_B")},
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "pool_A": self.pool_A.state_dict(),
            "pool_B": self.pool_B.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }
        if self.ema is not None:
            state.update({f"{name}_ema": getattr(self.ema, name).state_dict() for name in ("G_AB", "G_BA")})
        if self.best:
            state["best"] = self.best
        if self.validation_due:
            state["validation_due"] = True
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        saved = ModelConfig.from_dict(state["model_config"], source)
        if saved != self.model.config:
            diff = [f"{k}: checkpoint {v!r}, now {getattr(self.model.config, k)!r}"
                    for k, v in asdict(saved).items() if getattr(self.model.config, k) != v]
            raise ValueError(f"{source}: model config differs from the checkpoint's ({'; '.join(diff)})")
        for name in ("G_AB", "G_BA", "D_A", "D_B"):
            getattr(self.model, name).load_state_dict(state[name])
        for opt, name in ((self.opt_G, "opt_G"), (self.opt_D, "opt_D")):
            # The checkpoint's run may have had another kernel: this run's settings stay, and its
            # learning rate stays a device tensor where a CUDA graph reads it.
            settings = {k: opt.param_groups[0][k] for k in ("fused", "foreach", "capturable")}
            lr_tensor = isinstance(opt.param_groups[0]["lr"], torch.Tensor)
            opt.load_state_dict(state[name])
            for group in opt.param_groups:
                group.update(settings)
                if lr_tensor and not isinstance(group["lr"], torch.Tensor):
                    group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
                for p in group["params"]:
                    kept = opt.state.get(p, {})
                    for key, value in kept.items():
                        if key == "step":  # the fused kernel keeps its step count beside the weights
                            kept[key] = value.to(p.device if settings["fused"] else "cpu", torch.float32)
                        elif isinstance(value, torch.Tensor) and value.shape == p.shape:
                            # the moments in this run's layout: a fused kernel walks them as it walks the
                            # weights (a channels_last state from a CUDA run would be misread in NCHW)
                            kept[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
        self.pool_A.load_state_dict(state["pool_A"])  # onto the pool's own device
        self.pool_B.load_state_dict(state["pool_B"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:  # a run that starts averaging on resume starts from the current weights
            self.reset_ema()
            for name in ("G_AB", "G_BA"):
                if f"{name}_ema" in state:
                    getattr(self.ema, name).load_state_dict(state[f"{name}_ema"])
        self.best = dict(state.get("best", {}))
        self.validation_due = bool(state.get("validation_due", False))
        self.step = int(state["step"])
        self.seconds = float(state.get("seconds", 0.0))
        self._reset_counters(skipped=int(state.get("skipped_steps", 0)))
        if self.graph is not None:
            self.graph = StepGraph(self)  # captured anew, on these tensors


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically; the checkpoint it replaces is kept as checkpoint.prev.pt."""
    write_atomic(path, lambda f: torch.save(state, f), previous=path.with_name(path.stem + ".prev.pt"))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint without unpickling code (weights_only); a directory means its checkpoint.pt,
    or checkpoint.prev.pt when a crash happened between the two renames of a save."""
    path = Path(path)
    if path.is_dir():
        if not (path / "checkpoint.pt").exists() and not (path / "checkpoint.prev.pt").exists():
            raise FileNotFoundError(f"{path}: has no checkpoint.pt to resume from")
        path = path / "checkpoint.pt" if (path / "checkpoint.pt").exists() else path / "checkpoint.prev.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncation, refused globals: all mean "not our checkpoint"
        raise ValueError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {one_line(e, 300)})") from None
    if not isinstance(state, dict) or "step" not in state or "model_config" not in state:
        raise ValueError(f"{path}: not a cyclegan-kit training checkpoint")
    return state


# ---- the loop ---------------------------------------------------------------------------

class StopRequested(Exception):
    """A first stop signal that arrived inside `StopSignals.cut_short()`."""


class StopSignals:
    """Ctrl-C or SIGTERM asks the loop to finish its step, save and stop; a second one stops at once,
    without saving (the last checkpoint stands). Work that may be dropped and redone later (a
    validation: minutes on a CPU) runs inside `cut_short()`, where the first signal ends it at once."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.cutting_short = False

    def _handle(self, signum, frame) -> None:
        if self.name is not None:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        if self.cutting_short:
            raise StopRequested(self.name)

    @contextmanager
    def cut_short(self):
        if self.name is not None:
            raise StopRequested(self.name)
        self.cutting_short = True
        try:
            yield
        finally:
            self.cutting_short = False

    def __enter__(self) -> "StopSignals":
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def prepare_run(config: TrainConfig, main: bool = True, barrier=lambda: None) -> TrainConfig:
    """Check what a run needs before any training: the data (downloaded with --dataset), a writable
    output folder and, with --push-to-hub, a Hub token. Returns the config with dataroot and output filled in."""
    dataroot = config.dataroot
    if config.dataset and not dataroot:
        if main:
            download_dataset(config.dataset, config.data_dir, config.dataset_url)
        barrier()
        dataroot = str(Path(config.data_dir) / config.dataset)
    if not dataroot:
        raise ValueError("give --dataroot DIR (with trainA/ and trainB/) or --dataset NAME")
    output = Path(config.output or Path("runs") / (config.dataset or Path(dataroot).name))
    if config.push_to_hub:
        from huggingface_hub import get_token
        if get_token() is None:
            raise RuntimeError(f"--push-to-hub {config.push_to_hub}: no Hugging Face token; run "
                               "`hf auth login` or set HF_TOKEN before training")
    if config.eval_every and not config.val_count:
        raise ValueError("--eval-every needs validation images: give --val-count N as well")
    if main:
        probe = output / ".write-test"
        try:
            output.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as e:
            raise RuntimeError(f"{output}: output directory cannot be created or written to ({e.strerror})") from None
    return dataclasses.replace(config, dataroot=dataroot, output=str(output))


class Training:
    """A run of `train.py`: the constructor prepares data, trainer and logs; `run` loops; `save`,
    `sample` and `validate` are what the loop does every so many steps. Only rank 0 writes."""

    def __init__(self, config: TrainConfig, model_config: ModelConfig, resume_state: dict | None = None) -> None:
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        rank, world_size = 0, 1
        device = resolve_device(config.device)
        if self.distributed:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            rank, world_size = dist.get_rank(), dist.get_world_size()
            if device.type == "cuda":
                torch.cuda.set_device(device)
        self.main = rank == 0
        self.config = c = prepare_run(config, self.main, dist.barrier if self.distributed else lambda: None)
        self.output = Path(c.output)
        self.dataset = UnpairedDataset(c.dataroot, "train", c.preprocess, c.load_size, c.crop_size, c.flip, c.seed,
                                       c.val_count)
        self.sampler = EpochSampler(len(self.dataset), c.seed, rank, world_size)
        self.steps_per_epoch = len(self.sampler) // c.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{c.dataroot}: {len(self.dataset)} images are fewer than --batch-size {c.batch_size} "
                             f"x {world_size} processes")
        self.total_steps = (c.epochs + c.decay_epochs) * self.steps_per_epoch
        if c.max_steps:
            self.total_steps = min(self.total_steps, c.max_steps)
        self.trainer = Trainer(c, model_config, device, self.distributed,
                               recorded_amp=resume_state.get("amp") if resume_state is not None else None)
        if resume_state is not None:
            self.trainer.load_state_dict(resume_state, source=c.resume)
        self.loader = DataLoader(self.dataset, batch_size=c.batch_size, sampler=self.sampler, num_workers=c.workers,
                                 pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=_ignore_stop_signals)
        self.images = DeviceImages(self.dataset, device) if self.data_on_device(device) else None
        self.log = LossLog(self.output, self.trainer.step) if self.main else None
        self.samples = sample_images(Path(c.dataroot), c.n_samples, c.crop_size) if self.main else None
        self.validation = {"A": self.dataset.val_A, "B": self.dataset.val_B}
        self.val_cache: dict = {}  # Inception features of the validation images, computed once
        if self.main and c.val_count:
            write_validation_list(self.output / "validation.txt", Path(c.dataroot), self.validation)
        self.start_time, self.seconds_before = time.time(), self.trainer.seconds
        self.saved_step = self.trainer.step if resume_state is not None else None  # step of checkpoint.pt

    def data_on_device(self, device: torch.device) -> bool:
        """--data-on-device: "auto" is yes on CUDA for resize_and_crop when the uint8 images take at most
        a quarter of the GPU's memory."""
        c = self.config
        if c.data_on_device != "auto":
            return c.data_on_device == "yes"
        if device.type != "cuda" or not DeviceImages.supports(self.dataset):
            return False
        return DeviceImages.nbytes(self.dataset) <= torch.cuda.get_device_properties(device).total_memory // 4

    def batches(self):
        """This epoch's batches (the sampler set to it): cropped on the device, or from the DataLoader."""
        if self.images is not None:
            return self.images.batches(iter(self.sampler), self.config.batch_size)
        return self.loader

    def seconds(self) -> float:
        return self.seconds_before + time.time() - self.start_time

    def info(self) -> dict:
        c = self.config
        recipe = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.metadata.get("recipe", True)}
        return {"dataset": c.dataset or Path(c.dataroot).name, "training": recipe, "steps": self.trainer.step,
                "epochs": round(self.trainer.step / self.steps_per_epoch, 3), "train_seconds": round(self.seconds()),
                "image_size": c.crop_size, "lambda_identity": c.lambda_identity}

    def save(self) -> None:
        if not self.main:
            return
        self.trainer.seconds = self.seconds()
        self.trainer.model.info = self.info()
        # The model folder first: whenever a checkpoint exists, so does a complete model/ (a kill
        # between the two leaves model/ one save ahead, which the resumed run overwrites).
        self.trainer.model.save_pretrained(self.output / "model")
        save_checkpoint(self.trainer.state_dict(), self.output / "checkpoint.pt")
        self.saved_step = self.trainer.step
        self.log.plot()

    def sample(self) -> None:
        if self.main:
            with cudnn_benchmark(False):  # test images of any size: no timing of algorithms for each
                save_samples(self.trainer.model, *self.samples,
                             self.output / "samples" / f"step_{self.trainer.step:07d}.png")

    def validate(self, stop: StopSignals) -> dict[str, float]:
        """FID and KID of both directions on the validation images, for the generators and (with
        --ema-decay) their moving average; the best of them by the sum of the two FIDs goes to best/.
        A stop signal ends the measuring at once (StopRequested), never a write to best/."""
        from .evaluate import evaluate

        t = self.trainer
        candidates = {"raw": t.model, **({"ema": t.ema} if t.ema is not None else {})}
        scores = {}
        for kind, model in candidates.items():
            try:
                with stop.cut_short(), cudnn_benchmark(False):
                    r = evaluate(model, files=self.validation, cache=self.val_cache, progress=False)
            finally:
                t.model.train()
            measured = {f"val_{m}_{d}": r[d][m] for d in DIRECTIONS for m in ("fid", "kid")}
            scores.update({("ema_" if kind == "ema" else "") + k: v for k, v in measured.items()})
            total = r["A2B"]["fid"] + r["B2A"]["fid"]
            if total < t.best.get("val_fid", math.inf):
                t.best = {"val_fid": total, "step": t.step, "weights": kind, **measured}
                best = CycleGAN(t.model.config, info={**self.info(), "best": t.best})
                best.load_state_dict(model.state_dict(), strict=False)
                best.save_pretrained(self.output / "best")
        return scores

    def validate_and_log(self, stop: StopSignals, bar, lr: float) -> None:
        """Validate at this step and log the scores; a stop signal during it leaves the validation due,
        saved with the step, to run first when the run is resumed."""
        t = self.trainer
        try:
            scores = self.validate(stop)
        except StopRequested:
            t.validation_due = True
            bar.write(f"{stop.name}: validation at step {t.step} cut short; it runs first on --resume", file=sys.stderr)
            return
        t.validation_due = False
        self.log.write(t.step, t.step / self.steps_per_epoch, scores, lr, self.seconds())
        bar.write(f"step {t.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))

    def start_line(self) -> str:
        """What the run does, as it starts: device, precision (and how "auto" chose it), data path, steps."""
        t = self.trainer
        data = (f"images decoded into {t.device.type} memory" if self.images is not None
                else f"{self.config.workers} loader workers")
        return (f"training on {t.device} in {t.precision}; {data}; {self.steps_per_epoch} steps per epoch, "
                f"{self.total_steps} in all")

    def run(self) -> Path:
        from tqdm.auto import tqdm

        c, t = self.config, self.trainer
        if self.main:
            print(self.start_line(), file=sys.stderr)
        bar = tqdm(total=self.total_steps, initial=t.step, disable=not self.main, dynamic_ncols=True, unit="step")
        t.model.train()
        try:
            with StopSignals() as stop:
                if self.main and c.eval_every and t.validation_due:  # cut short by the stop before this resume
                    self.validate_and_log(stop, bar, t.opt_G.param_groups[0]["lr"])  # the saved step's lr
                    if not t.validation_due:
                        self.save()
                while t.step < self.total_steps and stop.name is None:
                    epoch, done_in_epoch = divmod(t.step, self.steps_per_epoch)
                    self.dataset.epoch = epoch
                    self.sampler.set_epoch(epoch, start=done_in_epoch * c.batch_size)
                    for batch in self.batches():
                        lr = t.set_lr(lr_factor(t.step, self.steps_per_epoch, c.epochs, c.decay_epochs))
                        t.train_step(batch)  # nothing read back: the device runs ahead
                        bar.update(1)
                        step, last = t.step, t.step == self.total_steps
                        evaluated = self.main and c.eval_every and (step % c.eval_every == 0 or last)
                        saving = evaluated or step % c.save_every == 0 or step % self.steps_per_epoch == 0 or last
                        if step % c.log_every == 0 or saving:  # the only reads of the device
                            t.check_finite()
                        if step % c.log_every == 0 or last:
                            self.write_losses(t.read_losses(), lr, bar)
                        if evaluated:
                            self.validate_and_log(stop, bar, lr)
                        if saving:
                            self.save()
                        if step % c.sample_every == 0 or last:
                            self.sample()
                        if last or stop.name is not None:
                            break
                if stop.name is not None:
                    if self.saved_step != t.step:  # a stop at a save (or cut-short validation) step: saved once
                        self.save()
                    if self.main:
                        bar.write(f"{stop.name}: saved {self.output / 'checkpoint.pt'} at step {t.step}; "
                                  f"continue with --resume {self.output}", file=sys.stderr)
        except KeyboardInterrupt:  # a second signal: stop at once, and do not save a step cut short
            if self.main:
                kept = "no checkpoint yet" if self.saved_step is None else f"the last save stands (step {self.saved_step})"
                bar.write(f"stopped at once: {kept}; continue with --resume {self.output}", file=sys.stderr)
            raise
        finally:
            bar.close()
            if self.log is not None:
                self.log.close()
        if self.main and stop.name is None and c.push_to_hub:
            url = t.model.push_to_hub(c.push_to_hub)  # float16, as `python -m cyclegan.hub push`
            print(f"pushed {self.output / 'model'} to {url}")
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()
        return self.output

    def write_losses(self, means: dict[str, float], lr: float, bar) -> None:
        """The mean losses of the last logging window, into losses.csv and the progress bar."""
        if self.main:
            self.log.write(self.trainer.step, self.trainer.step / self.steps_per_epoch, means, lr, self.seconds())
            shown = {k: f"{v:.3f}" for k, v in means.items() if k != "skipped_steps"}
            if means.get("skipped_steps"):
                shown["skipped"] = int(means["skipped_steps"])
            bar.set_postfix(shown, refresh=False)


def train(config: TrainConfig, model_config: ModelConfig, resume_state: dict | None = None) -> Path:
    """Run (or continue) training as `config` says; returns the run directory."""
    return Training(config, model_config, resume_state).run()
