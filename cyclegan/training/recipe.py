"""The recipe: every setting of a run (TrainConfig, from which train.py makes its flags), the
learning-rate schedule, and where and in what precision a run trains."""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .. import inference
from ..data import PREPROCESS
from ..datasets import DATASETS_URL


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
    """--device NAME: "auto" is CUDA, else MPS, else the CPU; CUDA is this process's GPU (LOCAL_RANK under
    torchrun) unless NAME gives one (cuda:1). A name torch does not know or a device this machine lacks is
    a one-line ValueError naming it."""
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: not a device here; choose cpu, cuda, cuda:N or mps")
    if device.type == "mps" and not mps:
        raise ValueError(f"--device {name}: no Apple GPU (MPS) is available")
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    index = int(os.environ.get("LOCAL_RANK", 0)) if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


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
