"""CycleGAN's losses as pure functions of tensors, and the pool of past fakes shown to the discriminators."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def adversarial_loss(prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """LSGAN loss: mean squared distance of the patch predictions to 1 (real) or 0 (fake)."""
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)


def discriminator_loss(pred_real: torch.Tensor, pred_fake: torch.Tensor) -> torch.Tensor:
    """Halved so that D learns at half the rate of G, as in the paper."""
    return 0.5 * (adversarial_loss(pred_real, True) + adversarial_loss(pred_fake, False))


def cycle_loss(real: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """L1 distance between an image and its reconstruction F(G(x))."""
    return F.l1_loss(reconstructed, real)


def identity_loss(real: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """L1 distance between an image of the target domain and the generator's output for it."""
    return F.l1_loss(identity, real)


class ImagePool:
    """Keeps up to `size` past fakes; the discriminator sees each new fake or, half the time
    once the pool is full, an older one it replaces (Shrivastava et al. 2017)."""

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.rng).item() < 0.5:
                i = int(torch.randint(self.size, (), generator=self.rng))
                out.append(self.images[i].to(image.device))
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        # Stored on the CPU as a plain dict so that checkpoints load with weights_only=True.
        return {"images": [im.cpu() for im in self.images], "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.images = [im.to(device) for im in state["images"]]
        self.rng.set_state(state["rng"])
