"""The networks of the CycleGAN paper: the ResNet generator and the 70x70 PatchGAN discriminator."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d (same parameters and state dict) whose training forward, on NCHW tensors,
    is group norm with a group per channel: the same normalisation (per sample and channel, biased
    variance, the same eps) in one ATen call instead of instance norm's views around batch norm.
    A small training step is mostly such dispatch. Inference, export and channels_last (CUDA's
    group norm may not keep that layout) take instance norm itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.track_running_stats and x.dim() == 4 and x.is_contiguous():
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return super().forward(x)


class ResnetBlock(nn.Module):
    """Two reflect-padded 3x3 convolutions with instance norm, added back to the input."""

    def __init__(self, channels: int, affine_norm: bool = False) -> None:
        super().__init__()
        self.pad1 = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(channels, channels, 3)
        self.norm1 = InstanceNorm2d(channels, affine=affine_norm)
        self.relu = nn.ReLU(inplace=True)
        self.pad2 = nn.ReflectionPad2d(1)
        self.conv2 = nn.Conv2d(channels, channels, 3)
        self.norm2 = InstanceNorm2d(channels, affine=affine_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(self.pad1(x))))
        y = self.norm2(self.conv2(self.pad2(y)))
        return x + y


class Generator(nn.Module):
    """ResNet generator: c7s1-ngf, two stride-2 downsamplings, `n_blocks` residual blocks,
    two stride-2 upsamplings, c7s1-3 and tanh.

    Args:
        ngf: channels of the first convolution; the blocks work at 4 * ngf.
        n_blocks: residual blocks; the paper uses 9 at 256x256 and 6 at 128x128.
        in_channels: channels of the input image.
        out_channels: channels of the output image.
        affine_norm: give every instance norm a learned scale and shift (off in the paper; on in
            some checkpoints of the authors' code trained with `affine=True`).

    Inputs are images in [-1, 1] whose sides are multiples of 4; outputs have the same size.
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 9, in_channels: int = 3, out_channels: int = 3,
                 affine_norm: bool = False) -> None:
        super().__init__()
        # What a copy in another process (the fast path's compiler) is built from.
        self.init_args = dict(ngf=ngf, n_blocks=n_blocks, in_channels=in_channels, out_channels=out_channels,
                              affine_norm=affine_norm)
        # Instance norm keeps no running stats and, unless affine_norm, has no scale or shift
        # (PyTorch's defaults), so every convolution keeps its bias, as in the authors' code.
        def norm(channels: int) -> InstanceNorm2d:
            return InstanceNorm2d(channels, affine=affine_norm)

        self.stem = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), norm(ngf), nn.ReLU(inplace=True)
        )
        self.down = nn.Sequential(
            nn.Conv2d(ngf, 2 * ngf, 3, stride=2, padding=1), norm(2 * ngf), nn.ReLU(inplace=True),
            nn.Conv2d(2 * ngf, 4 * ngf, 3, stride=2, padding=1), norm(4 * ngf), nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(*[ResnetBlock(4 * ngf, affine_norm) for _ in range(n_blocks)])
        self.up = nn.Sequential(
            nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, stride=2, padding=1, output_padding=1),
            norm(2 * ngf), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * ngf, ngf, 3, stride=2, padding=1, output_padding=1),
            norm(ngf), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))


class Discriminator(nn.Module):
    """PatchGAN discriminator; with `n_layers=3` each output judges a 70x70 patch of the input.

    Args:
        ndf: channels of the first convolution, doubled per layer up to 8 * ndf.
        n_layers: stride-2 convolutions after the first one (3 gives the 70x70 receptive field).
        in_channels: channels of the input image.
    """

    def __init__(self, ndf: int = 64, n_layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels = ndf
        for i in range(1, n_layers + 1):
            out = ndf * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1  # the last of these keeps the resolution
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1), InstanceNorm2d(out),
                       nn.LeakyReLU(0.2, inplace=True)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(module: nn.Module, std: float = 0.02, generator: torch.Generator | None = None) -> None:
    """Draw every convolution's weights from N(0, std) and zero its bias, as in the paper."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            with torch.no_grad():
                m.weight.normal_(0.0, std, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
