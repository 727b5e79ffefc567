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
    once the pool is full, an older one it replaces (Shrivastava et al. 2017).

    The pool and its random draws live on the images' device, and a query never reads a value
    back: the fill phase is counted on the host, the coin and the slot are drawn on the device."""

    def __init__(self, size: int = 50, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.size, self.device, self.seed = size, torch.device(device), seed
        self.images: torch.Tensor | None = None  # (size, C, H, W), allocated at the first query; `filled` used
        self.filled = 0
        self.rng = torch.Generator(self.device).manual_seed(seed)

    @property
    def full(self) -> bool:
        """Whether a query takes the random branch only (no fill phase left)."""
        return self.filled >= self.size

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        images = images.detach()
        if self.images is None:
            self.images = images.new_empty((self.size, *images.shape[1:]))
        fill = min(len(images), self.size - self.filled)
        if fill:  # while filling, each image goes in and comes straight back
            self.images[self.filled:self.filled + fill] = images[:fill]
            self.filled += fill
        rest = images[fill:]
        if not len(rest):
            return images
        swap = torch.rand(len(rest), device=self.device, generator=self.rng) < 0.5
        slots = torch.randint(self.size, (len(rest),), device=self.device, generator=self.rng)
        out = []
        for k in range(len(rest)):  # in turn: two of a batch may draw the same slot
            # index_select/index_copy_ with a device index: plain indexing would read it back
            s, i = swap[k], slots[k:k + 1]
            old = self.images.index_select(0, i)[0]
            out.append(torch.where(s, old, rest[k]))
            self.images.index_copy_(0, i, torch.where(s, rest[k], old)[None])
        return torch.cat([images[:fill], torch.stack(out)])

    def state_dict(self) -> dict:
        # Stored on the CPU as a plain dict so that checkpoints load with weights_only=True.
        images = [] if self.images is None else list(self.images[:self.filled].cpu())
        return {"images": images, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        images = state["images"]
        self.filled = len(images)
        self.images = None
        if images:
            self.images = torch.stack(images).to(self.device)
            if self.filled < self.size:
                self.images = torch.cat([self.images, self.images.new_empty((self.size - self.filled,
                                                                              *self.images.shape[1:]))])
        try:
            self.rng.set_state(state["rng"])
        except RuntimeError:  # a generator state saved on another kind of device: start the draws anew
            self.rng.manual_seed(self.seed)
