"""Hugging Face's ZeroGPU for the app: where the `spaces` package is importable and the Space runs on
ZeroGPU hardware, the models live on CUDA and each model call holds a GPU for a time estimated from
its pixels (`@spaces.GPU`); anywhere else nothing changes. It cannot be tried outside a ZeroGPU Space."""
from __future__ import annotations

from typing import Callable, TypeVar

try:  # before CUDA is first used: on ZeroGPU, `spaces` patches torch when imported
    import spaces
except ImportError:
    spaces = None

F = TypeVar("F", bound=Callable)

# ZeroGPU grants a call the GPU for its `duration`; a shorter request waits less in its queue. These are
# estimates (no ZeroGPU here to measure): a slice of an H200 runs the paper-size generator on a 1024 px
# image in well under a second; the rest is CUDA's start in the call and, for videos, decoding and H.264
# encoding on the CPU, about 5 million frame pixels a second.
BASE_SECONDS = 15
VIDEO_PIXELS_PER_SECOND = 5e6
MAX_SECONDS = 300


def active() -> bool:
    """Whether this process runs on ZeroGPU (the Space sets SPACES_ZERO_GPU; `spaces` reads it)."""
    return spaces is not None and bool(spaces.config.Config.zero_gpu)


def device() -> str:
    """Where the app keeps its models: "cuda" on ZeroGPU (`spaces` defers the move to the GPU until a
    call holds one), else the CPU."""
    return "cuda" if active() else "cpu"


def seconds(frame_pixels: float = 0.0) -> int:
    """The GPU time to ask for: a base for any image, plus the time to decode, translate and encode
    `frame_pixels` (frames × width × height of a video)."""
    return int(min(MAX_SECONDS, BASE_SECONDS + frame_pixels / VIDEO_PIXELS_PER_SECOND))


def gpu(fn: F, duration: Callable[..., int]) -> F:
    """`fn` under `@spaces.GPU(duration=duration)` on ZeroGPU (`duration` gets fn's arguments and returns
    seconds), or `fn` itself elsewhere. ZeroGPU supports only ahead-of-time compilation, so the
    function runs eager."""
    return spaces.GPU(duration=duration)(fn) if active() else fn
