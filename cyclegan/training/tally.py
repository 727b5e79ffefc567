"""What the steps add up on the device between two reads: the loss sums, the steps whose update was
skipped for a non-finite loss, and the first such loss. The loop reads them once per logging window,
so a step never waits for the device."""
from __future__ import annotations

import sys

import torch


class LossTally:
    """Device tensors updated in place (a CUDA graph replays into the same tensors): the step count;
    the loss sums (in `names` order) and finite steps since the last read; the skipped steps of the
    whole run; (step, 1 generator / 2 discriminator, loss) of the first non-finite loss since the last
    check."""

    def __init__(self, device: torch.device, on_nan: str = "stop", step: int = 0, skipped: int = 0) -> None:
        self.device, self.on_nan = device, on_nan
        zeros = lambda: torch.zeros((), device=device)  # noqa: E731
        self.step_count = zeros() + step
        self.names: list[str] = []
        self.sums = torch.zeros(0, device=device)
        self.finite_steps = zeros()
        self.skipped = zeros() + skipped
        self.first_bad = torch.tensor([-1.0, 0.0, 0.0], device=device)
        self.skipped_read = skipped

    def tensors(self) -> list[torch.Tensor]:
        """The tensors a step changes (for whoever must put them back: graphs.undone)."""
        return [self.step_count, self.sums, self.finite_steps, self.skipped, self.first_bad]

    @torch.no_grad()
    def add(self, losses: dict[str, torch.Tensor], bad_G: torch.Tensor, bad_D: torch.Tensor,
            loss_G: torch.Tensor, loss_D: torch.Tensor) -> None:
        if not self.names:  # the terms are known at the first step (the identity terms or not)
            self.names, self.sums = list(losses), torch.zeros(len(losses), device=self.device)
        bad = bad_G | bad_D
        self.step_count.add_(1)
        self.sums.add_(torch.where(bad, 0.0, torch.stack([losses[k].float() for k in self.names])))
        self.finite_steps.add_(~bad)
        self.skipped.add_(bad)
        this = torch.stack([self.step_count, torch.where(bad_G, 1.0, 2.0),
                            torch.where(bad_G, loss_G.float(), loss_D.float())])
        self.first_bad.copy_(torch.where(bad & (self.first_bad[0] < 0), this, self.first_bad))

    def read(self) -> dict[str, float]:
        """The mean of each loss over the finite steps since the last read (one read of the device),
        and "skipped_steps", the non-finite steps of the whole run; starts a new window."""
        *sums, finite, skipped = torch.cat([self.sums, self.finite_steps[None], self.skipped[None]]).tolist()
        self.sums.zero_()
        self.finite_steps.zero_()
        means = {k: s / finite for k, s in zip(self.names, sums)} if finite else {}
        return {**means, "skipped_steps": skipped}

    def skipped_steps(self) -> int:
        return int(self.skipped.item())

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
        if self.on_nan == "stop":
            raise FloatingPointError(message + "; its update was skipped and training stops (--on-nan skip "
                                     "skips such steps instead)")
        print(f"warning: {message}; skipped {int(skipped) - self.skipped_read} such step(s) since the last "
              f"check, {int(skipped)} in all", file=sys.stderr)
        self.first_bad.fill_(-1.0)
        self.skipped_read = int(skipped)
        return int(skipped)
