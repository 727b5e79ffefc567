"""Checkpoints and resume: the training state as one plain dict of tensors and numbers
(`torch.save`, read back with weights_only=True, never unpickling code), written atomically."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..files import one_line, write_atomic
from ..model import ModelConfig
from .tally import LossTally

if TYPE_CHECKING:
    from .step import Trainer


def trainer_state(trainer: "Trainer") -> dict:
    """Everything a resumed run needs to go on exactly where this one is."""
    m = trainer.model
    state = {
        "step": trainer.step,
        "seconds": trainer.seconds,
        "amp": trainer.amp,
        "skipped_steps": trainer.tally.skipped_steps(),
        "model_config": asdict(m.config),
        "train_config": asdict(trainer.config),
        **{name: getattr(m, name).state_dict() for name in ("G_AB", "G_BA", "D_A", "D_B")},
        "opt_G": trainer.opt_G.state_dict(),
        "opt_D": trainer.opt_D.state_dict(),
        "pool_A": trainer.pool_A.state_dict(),
        "pool_B": trainer.pool_B.state_dict(),
        "rng_cpu": torch.get_rng_state(),
    }
    if trainer.ema is not None:
        state.update({f"{name}_ema": getattr(trainer.ema, name).state_dict() for name in ("G_AB", "G_BA")})
    if trainer.best:
        state["best"] = trainer.best
    if trainer.validation_due:
        state["validation_due"] = True
    if trainer.scaler is not None:
        state["scaler"] = trainer.scaler.state_dict()
    if trainer.device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(trainer.device)
    return state


def restore_trainer(trainer: "Trainer", state: dict, source: str = "checkpoint") -> None:
    """Put a checkpoint's state into a trainer built with the same model config (`source` names the
    file in errors)."""
    saved = ModelConfig.from_dict(state["model_config"], source)
    if saved != trainer.model.config:
        diff = [f"{k}: checkpoint {v!r}, now {getattr(trainer.model.config, k)!r}"
                for k, v in asdict(saved).items() if getattr(trainer.model.config, k) != v]
        raise ValueError(f"{source}: model config differs from the checkpoint's ({'; '.join(diff)})")
    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        getattr(trainer.model, name).load_state_dict(state[name])
    for opt, name in ((trainer.opt_G, "opt_G"), (trainer.opt_D, "opt_D")):
        restore_optimiser(opt, state[name], trainer.device)
    trainer.pool_A.load_state_dict(state["pool_A"])  # onto the pool's own device
    trainer.pool_B.load_state_dict(state["pool_B"])
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng_cuda"], trainer.device)
    if trainer.scaler is not None and "scaler" in state:
        trainer.scaler.load_state_dict(state["scaler"])
    if trainer.ema is not None:  # a run that starts averaging on resume starts from the current weights
        trainer.reset_ema()
        for name in ("G_AB", "G_BA"):
            if f"{name}_ema" in state:
                getattr(trainer.ema, name).load_state_dict(state[f"{name}_ema"])
    trainer.best = dict(state.get("best", {}))
    trainer.validation_due = bool(state.get("validation_due", False))
    trainer.step = int(state["step"])
    trainer.seconds = float(state.get("seconds", 0.0))
    trainer.tally = LossTally(trainer.device, trainer.config.on_nan, trainer.step, int(state.get("skipped_steps", 0)))
    if trainer.graph is not None:
        trainer.graph = type(trainer.graph)(trainer)  # captured anew, on these tensors


def restore_optimiser(opt: torch.optim.Optimizer, saved: dict, device: torch.device) -> None:
    """An optimiser's saved state, in this run's settings and layout."""
    # The checkpoint's run may have had another kernel: this run's settings stay, and its
    # learning rate stays a device tensor where a CUDA graph reads it.
    settings = {k: opt.param_groups[0][k] for k in ("fused", "foreach", "capturable")}
    lr_tensor = isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    opt.load_state_dict(saved)
    for group in opt.param_groups:
        group.update(settings)
        if lr_tensor and not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        for p in group["params"]:
            kept = opt.state.get(p, {})
            for key, value in kept.items():
                if key == "step":  # the fused kernel keeps its step count beside the weights
                    kept[key] = value.to(p.device if settings["fused"] else "cpu", torch.float32)
                elif isinstance(value, torch.Tensor) and value.shape == p.shape:
                    # the moments in this run's layout: a fused kernel walks them as it walks the
                    # weights (a channels_last state from a CUDA run would be misread in NCHW)
                    kept[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


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

