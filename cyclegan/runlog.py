"""What a training run writes besides its checkpoint: losses.csv (and losses.png, TensorBoard), the
sample grids, and the list of the images it held out for validation."""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from .data import list_images, load_rgb, to_image, to_tensor
from .files import write_atomic
from .model import DIRECTIONS, CycleGAN

LOSS_NAMES = ("G_AB", "G_BA", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B")
SCORE_NAMES = tuple(f"{w}val_{m}_{d}" for w in ("", "ema_") for m in ("fid", "kid") for d in DIRECTIONS)


class LossLog:
    """losses.csv (a row per logging window, and one per validation), losses.png, and TensorBoard
    when installed."""

    def __init__(self, directory: Path, resume_step: int) -> None:
        self.path = directory / "losses.csv"
        self.columns = ["step", "epoch", *LOSS_NAMES, "lr", "seconds", "skipped_steps", *SCORE_NAMES]
        rows = []
        if self.path.exists() and resume_step > 0:  # drop rows written after the checkpoint we resume
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(directory / "tensorboard"), purge_step=resume_step or None)
        except ImportError:
            self.tensorboard = None

    def write(self, step: int, epoch: float, values: dict[str, float], lr: float, seconds: float) -> None:
        """A row of loss terms (LOSS_NAMES, and the run's count of skipped non-finite steps) or of
        validation scores (SCORE_NAMES)."""
        row = {"step": step, "epoch": f"{epoch:.4f}", "lr": f"{lr:.6g}", "seconds": f"{seconds:.1f}"}
        row.update({k: f"{v:.0f}" if k == "skipped_steps" else f"{v:.5f}" for k, v in values.items()})
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, restval="").writerow(row)
        if self.tensorboard is not None:
            for k, v in values.items():
                self.tensorboard.add_scalar(f"{'val' if k in SCORE_NAMES else 'loss'}/{k}", v, step)
            self.tensorboard.add_scalar("lr", lr, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def plot(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        fids = [n for n in SCORE_NAMES if "fid" in n and any(r.get(n) for r in rows)]
        fig, axes = plt.subplots(1, 3 if fids else 2, figsize=(18 if fids else 12, 4))
        panels = {"generators": [n for n in LOSS_NAMES if not n.startswith("D_")],
                  "discriminators": [n for n in LOSS_NAMES if n.startswith("D_")], "validation FID": fids}
        for ax, (title, names) in zip(axes, panels.items()):
            for name in names:  # each series has its own rows: losses and scores are logged apart
                points = [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]
                if points:
                    ax.plot(*zip(*points), label=name, marker="o" if title == "validation FID" else None)
            ax.set_title(title)
            ax.set_xlabel("step")
            if ax.lines:  # a run resumed into a due validation has scores before any losses
                ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        write_atomic(self.path.with_name("losses.png"), lambda f: fig.savefig(f, format="png", dpi=80))
        plt.close(fig)


def sample_images(dataroot: Path, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` fixed images per domain from testA/testB (trainA/trainB when there is no test split),
    resized to size x size."""
    def pick(domain: str) -> torch.Tensor:
        folder = dataroot / f"test{domain}"
        files = list_images(folder if folder.is_dir() else dataroot / f"train{domain}")
        step = max(1, len(files) // n)
        images = []
        for path in files[::step]:
            try:
                images.append(to_tensor(load_rgb(path).resize((size, size))))
            except ValueError:
                continue
            if len(images) == n:
                break
        return torch.stack(images)
    return pick("A"), pick("B")


@torch.no_grad()
def save_samples(model: CycleGAN, real_A: torch.Tensor, real_B: torch.Tensor, path: Path) -> None:
    """A grid: each row is real_A | fake_B | rec_A || real_B | fake_A | rec_B."""
    device = next(model.parameters()).device
    real_A, real_B = real_A.to(device), real_B.to(device)
    was_training = model.training
    model.eval()
    fake_B, fake_A = model.G_AB(real_A), model.G_BA(real_B)
    rec_A, rec_B = model.G_BA(fake_B), model.G_AB(fake_A)
    model.train(was_training)
    n = min(len(real_A), len(real_B))
    gap = torch.ones(n, 3, real_A.shape[2], 8, device=device)
    rows = torch.cat([real_A[:n], fake_B[:n], rec_A[:n], gap, real_B[:n], fake_A[:n], rec_B[:n]], dim=3)
    grid = torch.cat(list(rows), dim=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: to_image(grid).save(f, format="PNG"))


def write_validation_list(path: Path, dataroot: Path, files: dict[str, list[Path]]) -> None:
    """The held-out images, one relative path a line, so that a run says what it never trained on."""
    lines = [str(f.relative_to(dataroot)) for domain in "AB" for f in files[domain]]
    write_atomic(path, ("\n".join(lines) + "\n").encode())
