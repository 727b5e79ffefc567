"""Running a generator on one image of any size, as translate() does: padded to the sides it needs,
in overlapping tiles (or downscaled) when large, in the precision the hardware runs fastest."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX), as PyTorch's oneDNN sees
    it. Elsewhere bf16 is emulated and slower than float32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(check is not None for check in checks):
        return any(check() for check in checks)
    try:  # an older or newer torch without these private checks: ask the kernel (Linux only)
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class PrecisionChoice:
    """What "auto" picked on the CPU for one network, and the timings it was picked on (None where
    bf16 was not timed: a CPU without bf16 in hardware emulates it, tens of times slower)."""

    dtype: torch.dtype | None  # None: float32
    fp32_ms: float | None = None
    bf16_ms: float | None = None
    training: bool = False  # timed forward and backward

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    @property
    def reason(self) -> str:
        if self.bf16_ms is None:
            return "this CPU has no bf16 in hardware"
        return (f"measured at {MEASURE_SIZE} px: fp32 {self.fp32_ms:.0f} ms, bf16 {self.bf16_ms:.0f} ms a "
                f"{'training step' if self.training else 'call'}")

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


# Generators that a long-lived process put on its fast path (cyclegan.backends.start): net -> its FastPath.
FAST_PATHS: dict[nn.Module, object] = {}
MEASURE_SIZE = 128  # px: enough to rank the two precisions, a fraction of a second to time
BF16_MARGIN = 0.9  # bf16 only when it takes at most this fraction of float32's time; a tie is float32
_choices: dict[tuple, PrecisionChoice] = {}


def time_precisions(net: nn.Module, training: bool = False, size: int = MEASURE_SIZE,
                    repeats: int = 2) -> tuple[float, float]:
    """Seconds per call of a copy of `net` (forward, or forward and backward when `training`) on one
    `size`-px image in float32 and in bf16 autocast: the best of `repeats` interleaved rounds after
    one warm-up each. Leaves `net` and the global random state untouched."""
    net = copy.deepcopy(net).train(training).requires_grad_(training)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def run(dtype: torch.dtype | None) -> float:
        start = time.perf_counter()
        with torch.inference_mode(not training), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            y = net(x)
        if training:
            y.float().mean().backward()
        return time.perf_counter() - start

    best = {None: math.inf, torch.bfloat16: math.inf}
    for round_ in range(repeats + 1):
        for dtype in best:
            seconds = run(dtype)
            if round_ > 0:  # the first round is the warm-up (oneDNN builds its kernels)
                best[dtype] = min(best[dtype], seconds)
    return best[None], best[torch.bfloat16]


def cpu_precision(net: nn.Module, training: bool = False) -> PrecisionChoice:
    """"auto" on the CPU for `net`: bf16 only where it is measured faster than float32 here (CPU flags
    do not predict it: AVX512-BF16 without AMX ran bf16 at 0.7x of float32). Timed once per process
    for each network shape and thread count; float32 at once where bf16 would be emulated."""
    key = (training, torch.get_num_threads(), tuple((n, tuple(p.shape)) for n, p in net.named_parameters()))
    if key not in _choices:
        if not cpu_has_native_bf16():
            _choices[key] = PrecisionChoice(None, training=training)
        else:
            fp32, bf16 = time_precisions(net, training)
            dtype = torch.bfloat16 if bf16 <= BF16_MARGIN * fp32 else None
            _choices[key] = PrecisionChoice(dtype, fp32 * 1000, bf16 * 1000, training)
    return _choices[key]


def autocast_dtype(precision: str, device: torch.device | str, net: nn.Module | None = None) -> torch.dtype | None:
    """The half-precision type inference on `device` runs in for `precision`, or None for float32.
    "auto": on the CPU, bf16 where `cpu_precision(net)` measured it faster (float32 without a `net`);
    bf16 (fp16 where bf16 is missing) on CUDA; float32 elsewhere. "bf16" asks for it anywhere (slow
    where the CPU emulates it); "fp32" turns it off."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose {', '.join(map(repr, PRECISIONS))}")
    kind = torch.device(device).type
    if precision == "fp32" or (precision == "auto" and kind not in ("cpu", "cuda")):
        return None
    if kind == "cuda":
        return torch.bfloat16 if precision == "bf16" or torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return cpu_precision(net).dtype if net is not None else None


@torch.inference_mode()
def run_any_size(net: nn.Module, x: torch.Tensor, max_side: int | None = 1024, large: str = "tile",
                 tile: int = 512, overlap: int = 64, precision: str = "auto") -> torch.Tensor:
    """`net` (a generator) on one image (1, 3, H, W) in [-1, 1] of any size, as translate() runs it:
    padded, or tiled or downscaled above `max_side`, in the arithmetic `precision` picks for the
    image's device (see `autocast_dtype`). Returns float32 of the input's size."""
    dtype = autocast_dtype(precision, x.device, net)
    fast = FAST_PATHS.get(net)
    if fast is not None:  # compiled where it is ready for this precision and shape, eager otherwise
        net = fast.runner(dtype)
    elif dtype is not None:
        net = in_precision(net, x.device.type, dtype)
    h, w = x.shape[-2:]
    if max_side is None or max(h, w) <= max_side:
        return run_padded(net, x)
    if large == "tile":
        return run_tiled(net, x, tile, overlap)
    if large != "downscale":
        raise ValueError(f"large={large!r}: choose 'tile' or 'downscale'")
    scale = max_side / max(h, w)
    small = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True)
    y = run_padded(net, small)
    return F.interpolate(y, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)


def in_precision(net: nn.Module, device_type: str, dtype: torch.dtype):
    """`net` as a function of float32 images that computes in `dtype` and returns float32; on CUDA in
    channels_last, the layout its tensor cores convolve fastest."""
    def run(x: torch.Tensor) -> torch.Tensor:
        if device_type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        # No autocast weight cache: one pass uses each weight once.
        with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
            return net(x).float()
    return run


def run_padded(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pad (N, 3, H, W) to sides that are multiples of 4 and at least 8, run `net`, crop back."""
    h, w = x.shape[-2:]
    H, W = max(8, -(-h // 4) * 4), max(8, -(-w // 4) * 4)
    if (H, W) == (h, w):
        return net(x)
    # Reflection needs the pad to be smaller than the side; tiny images are replicated instead.
    mode = "reflect" if H - h < h and W - w < w else "replicate"
    return net(F.pad(x, (0, W - w, 0, H - h), mode=mode))[..., :h, :w]


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def run_tiled(net: nn.Module, x: torch.Tensor, tile: int = 512, overlap: int = 64, batch: int = 4) -> torch.Tensor:
    """Run `net` on overlapping tiles of one image (1, 3, H, W), blending the overlaps with linear
    ramps so that the seams of per-tile instance norm statistics do not show."""
    if overlap * 2 >= tile:
        raise ValueError(f"overlap={overlap} must be less than half of tile={tile}")
    _, c, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    boxes = [(y, x0) for y in _starts(h, th, th - overlap) for x0 in _starts(w, tw, tw - overlap)]
    ramp_h = _ramp(th, overlap, x.device)
    ramp_w = _ramp(tw, overlap, x.device)
    weight = (ramp_h[:, None] * ramp_w[None, :])[None]
    out = torch.zeros(c, h, w, device=x.device)
    total = torch.zeros(1, h, w, device=x.device)
    for i in range(0, len(boxes), batch):  # tiles have one size, so they run as a batch
        chunk = boxes[i:i + batch]
        tiles = torch.cat([x[..., y:y + th, x0:x0 + tw] for y, x0 in chunk])
        for (y, x0), t in zip(chunk, run_padded(net, tiles)):
            out[:, y:y + th, x0:x0 + tw] += t * weight
            total[:, y:y + th, x0:x0 + tw] += weight
    return (out / total).unsqueeze(0)


def _ramp(n: int, overlap: int, device) -> torch.Tensor:
    r = torch.ones(n, device=device)
    if overlap > 0 and n > 2 * overlap:
        edge = torch.linspace(0.0, 1.0, overlap + 2, device=device)[1:-1]
        r[:overlap], r[n - overlap:] = edge, edge.flip(0)
    return r
