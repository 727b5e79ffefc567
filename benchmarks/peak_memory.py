"""Peak memory of translating one large photo with CycleGAN.translate()'s defaults, in this fresh
process so that the peak is the translation's alone. Prints one line of JSON.

    python benchmarks/peak_memory.py default --size 4096x3072           # ngf 64, 9 blocks, random weights
    python benchmarks/peak_memory.py weights/horse2zebra-identity --photo horse.jpg --device cuda
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cyclegan import CycleGAN, ModelConfig  # noqa: E402


def photo(width: int, height: int, source: str | Path | None = None) -> Image.Image:
    """`source` resized to width x height, or without one a smooth synthetic image with some noise."""
    if source:
        return Image.open(source).convert("RGB").resize((width, height), Image.BICUBIC)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    noise = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    rgb = torch.stack([x, y, (x + y) / 2]) * 200 + noise * 55
    return Image.fromarray(rgb.permute(1, 2, 0).byte().numpy())


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help='a model folder or Hub id, or "default" (ModelConfig(), random weights)')
    parser.add_argument("--size", default="4096x3072", help="WIDTHxHEIGHT of the photo")
    parser.add_argument("--photo", default=None, help="the photo to resize to --size (default: a synthetic one)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    width, height = map(int, args.size.split("x"))
    model = CycleGAN(ModelConfig()).init_weights(0) if args.model == "default" else CycleGAN.from_pretrained(args.model)
    model = model.to(args.device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        photo(width, height, args.photo).save(path, quality=90)
        rss_before = peak_rss_gb()
        start = time.perf_counter()
        out = model.translate(path, "A2B")  # the defaults: tiles above 1024 px, precision "auto"
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    result = {"model": args.model, "input": [width, height], "output": list(out.size), "seconds": seconds,
              "peak_rss_gb": peak_rss_gb(), "rss_before_translate_gb": rss_before}
    if args.device == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
