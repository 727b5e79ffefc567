"""The networks of the CycleGAN paper: the ResNet generator and the 70x70 PatchGAN discriminator."""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _nnpack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: list[int]) -> torch.Tensor:
    # NNPACK's path for batches is several times slower than its single-image one: run images one by one.
    if x.shape[0] == 1:
        return torch._nnpack_spatial_convolution(x, weight, bias, padding)
    return torch.cat([torch._nnpack_spatial_convolution(image, weight, bias, padding) for image in x.split(1)])


class _NnpackConvolution(torch.autograd.Function):
    """A stride-1 convolution whose forward pass and input gradient run in NNPACK; the weight
    gradient, which NNPACK does not compute, comes from PyTorch's own kernel."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return _nnpack(x, weight, bias, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # The input gradient is the "full" convolution of the output gradient with the kernel
            # flipped in space and transposed in channels: again a stride-1 convolution.
            flipped = weight.flip(2, 3).transpose(0, 1).contiguous()
            full = [weight.shape[2] - 1 - ctx.padding[0], weight.shape[3] - 1 - ctx.padding[1]]
            grad_x = _nnpack(grad, flipped, None, full)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], ctx.padding, [1, 1], False,
                [0, 0], 1, [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_w, grad_b, None


class FastConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state_dict) that on the CPU in float32 runs through NNPACK:
    Winograd for 3x3 kernels and FFT for 7x7 ones do several times less arithmetic than PyTorch's
    direct convolution. Results differ from nn.Conv2d's by rounding: at most ~1e-5 of the output's scale.

    Only stride-1 convolutions qualify; anything else (another device or dtype, torch.compile or
    export tracing, NNPACK missing or failing, or `fast = False`) takes nn.Conv2d's own path.
    """

    fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast and self._nnpack_applies(x):
            try:
                return _NnpackConvolution.apply(x.contiguous(), self.weight, self.bias, list(self.padding))
            except RuntimeError:  # an NNPACK limit or error: the ordinary path gives the same result
                pass
        return super().forward(x)

    def _nnpack_applies(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.dim() == 4 and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
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

        # The stride-1 convolutions (stem, blocks, head) are FastConv2d: faster through NNPACK on the
        # CPU. NNPACK is slower than PyTorch at the stride-2 ones (benchmarks/bench.py measures each).
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
