"""Validation during training (--val-count, --eval-every): FID and KID of both directions on the
images held out of trainA/ and trainB/, and the best model so far kept in best/."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..model import DIRECTIONS, CycleGAN
from .recipe import cudnn_benchmark
from .signals import StopSignals

if TYPE_CHECKING:
    from .step import Trainer


class Validation:
    """The validation images (`files`: domain -> paths) and their Inception features, computed once."""

    def __init__(self, files: dict[str, list[Path]], output: Path) -> None:
        self.files, self.output = files, output
        self.cache: dict = {}

    def run(self, trainer: "Trainer", info: dict, stop: StopSignals) -> dict[str, float]:
        """FID and KID of both directions on the validation images, for the generators and (with
        --ema-decay) their moving average; the best of them by the sum of the two FIDs goes to best/.
        A stop signal ends the measuring at once (StopRequested), never a write to best/."""
        from ..evaluate import evaluate

        t = trainer
        candidates = {"raw": t.model, **({"ema": t.ema} if t.ema is not None else {})}
        scores = {}
        for kind, model in candidates.items():
            try:
                with stop.cut_short(), cudnn_benchmark(False):
                    r = evaluate(model, files=self.files, cache=self.cache, progress=False)
            finally:
                t.model.train()
            measured = {f"val_{m}_{d}": r[d][m] for d in DIRECTIONS for m in ("fid", "kid")}
            scores.update({("ema_" if kind == "ema" else "") + k: v for k, v in measured.items()})
            total = r["A2B"]["fid"] + r["B2A"]["fid"]
            if total < t.best.get("val_fid", math.inf):
                t.best = {"val_fid": total, "step": t.step, "weights": kind, **measured}
                best = CycleGAN(t.model.config, info={**info, "best": t.best})
                best.load_state_dict(model.state_dict(), strict=False)
                best.save_pretrained(self.output / "best")
        return scores

