"""The networks of the CycleGAN paper: the ResNet generator and the 70x70 PatchGAN discriminator."""
from __future__ import annotations

import os

import torch
from torch import nn


class FastConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state_dict) that runs inference on the CPU through NNPACK:
    Winograd for 3x3 kernels and FFT for 7x7 ones do a fraction of the arithmetic of PyTorch's
    direct convolution. Results differ from nn.Conv2d's by rounding (at most ~1e-5 of the output's scale).

    NNPACK is used for float32 CPU inputs outside autograd (it has no backward), one image at a time
    (its batch path is several times slower), and only where it pays: with one torch thread, or when
    OpenMP waits passively (OMP_WAIT_POLICY=PASSIVE, which app.py sets). Otherwise OpenMP's threads
    spin between PyTorch's operations and take the cores from NNPACK's own threads, which makes the
    whole generator slower than without NNPACK (measured in benchmarks/bench.py). Anything else,
    `fast = False`, torch.compile or export tracing, or NNPACK missing or failing takes nn.Conv2d's path.
    """

    fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast and self._nnpack_applies(x):
            padding = list(self.padding)
            try:
                out = [torch._nnpack_spatial_convolution(image, self.weight, self.bias, padding)
                       for image in x.contiguous().split(1)]
                return out[0] if len(out) == 1 else torch.cat(out)
            except RuntimeError:  # an NNPACK limit or error: the ordinary path gives the same result
                pass
        return super().forward(x)

    def _nnpack_applies(self, x: torch.Tensor) -> bool:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        return (not needs_grad and x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32
                and x.dim() == 4 and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and (torch.get_num_threads() == 1 or os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE")
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
                and torch.backends.nnpack.is_available())


class ResnetBlock(nn.Module):
    """Two reflect-padded 3x3 convolutions with instance norm, added back to the input."""

    def __init__(self, channels: int, affine_norm: bool = False) -> None:
        super().__init__()
        self.pad1 = nn.ReflectionPad2d(1)
        self.conv1 = FastConv2d(channels, channels, 3)
        self.norm1 = nn.InstanceNorm2d(channels, affine=affine_norm)
        self.relu = nn.ReLU(inplace=True)
        self.pad2 = nn.ReflectionPad2d(1)
        self.conv2 = FastConv2d(channels, channels, 3)
        self.norm2 = nn.InstanceNorm2d(channels, affine=affine_norm)

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
        # Instance norm keeps no running stats and, unless affine_norm, has no scale or shift
        # (PyTorch's defaults), so every convolution keeps its bias, as in the authors' code.
        def norm(channels: int) -> nn.InstanceNorm2d:
            return nn.InstanceNorm2d(channels, affine=affine_norm)

        # The stride-1 convolutions (stem, blocks, head) are FastConv2d: faster through NNPACK for
        # inference on the CPU. NNPACK is slower than PyTorch at the stride-2 and transposed ones
        # (benchmarks/bench.py measures each kind), which stay as they are.
        self.stem = nn.Sequential(
            nn.ReflectionPad2d(3), FastConv2d(in_channels, ngf, 7), norm(ngf), nn.ReLU(inplace=True)
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
        self.head = nn.Sequential(nn.ReflectionPad2d(3), FastConv2d(ngf, out_channels, 7), nn.Tanh())

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
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out),
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
