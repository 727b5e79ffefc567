"""The Train tab's recipes: a quick look, the CPU preview recipe and the paper's, each a set of
train.py flags with the numbers a person may change within bounds, the train.py command that
reproduces a job, and an estimate of its time from a few steps measured on this machine."""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

BOUNDS = {"crop_size": (32, 512), "load_size": (32, 1024), "batch_size": (1, 16), "max_steps": (0, 10_000_000)}


@dataclass(frozen=True)
class Recipe:
    title: str
    about: str
    model: dict = field(default_factory=dict)  # ModelConfig fields
    train: dict = field(default_factory=dict)  # TrainConfig fields
    gpu: bool = False  # meant for a GPU: on a CPU the tab warns with the estimate


RECIPES = {
    # 300 steps at a constant learning rate, however many images (the epochs only make it long enough)
    "quick": Recipe("a quick look", "small networks at 64 px for 300 steps: minutes on a CPU, blurry but shows "
                    "whether the data works", {"ngf": 16, "ndf": 32, "n_blocks": 3},
                    {"load_size": 72, "crop_size": 64, "epochs": 300, "decay_epochs": 0, "max_steps": 300}),
    "preview": Recipe("the CPU preview", "the bundled previews' recipe: ngf 32, 6 blocks, 128 px crops, 8 epochs "
                      "and 6 of decay (horse2zebra: 18,676 steps, about 3 hours on 2 cores)",
                      {"ngf": 32, "ndf": 64, "n_blocks": 6},
                      {"load_size": 286, "crop_size": 128, "epochs": 8, "decay_epochs": 6}),
    "paper": Recipe("the paper's", "Zhu et al.: ngf 64, 9 blocks, 256 px crops, 100 epochs and 100 of decay (a "
                    "GPU's work: days on a CPU)", {}, {"load_size": 286, "crop_size": 256}, gpu=True),
}


def settings(recipe: str, identity: bool = True, max_steps: int = 0, **changes) -> dict:
    """The recipe's model and training fields with the changes asked for (crop_size, load_size,
    batch_size; max_steps 0: the recipe's length), each checked against BOUNDS."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(map(repr, RECIPES))}, not {recipe!r}")
    r = RECIPES[recipe]
    values = {**r.model, **r.train, "lambda_identity": 0.5 if identity else 0.0}
    if max_steps:
        values["max_steps"] = max_steps
    values.update({k: v for k, v in changes.items() if v is not None})  # None: the recipe's
    for name, (low, high) in BOUNDS.items():
        if name in values and not (low <= int(values[name]) <= high):
            raise ValueError(f"{name.replace('_', ' ')} must be between {low:,} and {high:,}, not {values[name]}")
        if name in values:
            values[name] = int(values[name])
    if values.get("load_size", 286) < values.get("crop_size", 256):
        raise ValueError(f"load size {values['load_size']} is smaller than the crop size {values['crop_size']}")
    return values


def flags(values: dict) -> list[str]:
    """train.py's flags for these settings."""
    out = []
    for name, value in values.items():
        out += [f"--{name.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    return out


def command(data: list[str], output: str, values: dict) -> str:
    """The train.py command that runs the same job in a terminal (paths as given: relative ones)."""
    return shlex.join(["python", "train.py", *data, "--output", output, *flags(values)])


def configs(values: dict):
    """The ModelConfig and TrainConfig these settings make (the rest at their defaults)."""
    from ..model import ModelConfig
    from ..training import TrainConfig

    return tuple(cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})
                 for cls in (ModelConfig, TrainConfig))


def seconds_per_step(values: dict, threads: int | None = None, steps: int = 2) -> float:
    """A step of these settings timed on this machine's CPU (after one untimed step), on random images
    at the crop size: the median of `steps`."""
    import torch

    from ..training import Trainer

    model, config = configs(values)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        trainer = Trainer(config, model, "cpu")
        size, n = config.crop_size, config.batch_size
        batch = {d: torch.rand(n, 3, size, size) * 2 - 1 for d in "AB"}
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            trainer.train_step(batch)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return sorted(times[1:])[len(times[1:]) // 2]


def total_steps(values: dict, largest_domain: int) -> int:
    """The steps a job of these settings takes on a dataset whose larger training folder has this many
    images (train.py: an epoch is that many images; the schedule, then --max-steps if smaller)."""
    _, config = configs(values)
    steps = (config.epochs + config.decay_epochs) * max(1, largest_domain // config.batch_size)
    return min(steps, config.max_steps) if config.max_steps else steps


def estimate_line(seconds: float, total_steps: int | None) -> str:
    """"≈ 0.6 s a step here: 18,676 steps ≈ 3.1 h"."""
    pace = f"≈ {seconds:.2g} s a step here"
    if not total_steps:
        return pace
    return f"{pace}: {total_steps:,} steps ≈ {duration(seconds * total_steps)}"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
