"""Pack a dataset's training images into one compact zip for a machine the dataset cannot reach (the
GPU machine of scripts/gpu_check.sh receives the working tree, 64 MiB at most, and no network).

    python scripts/pack_dataset.py                  # datasets/horse2zebra -> data/horse2zebra-256.zip
    python scripts/pack_dataset.py --synthetic      # a tiny made-up dataset, for the dry run

The images of trainA/ and trainB/ less the validation images that `train.py --val-count 120` holds
out (the same split: cyclegan.data.split_validation), re-encoded as JPEG at most SIZE px on the shorter
side, plus a few test images per domain for the sample grids; validation.txt lists what was left out.
Stored uncompressed (JPEG does not shrink further) with fixed timestamps, so the same input gives the
same bytes. Train from it with `python train.py --dataroot <extracted>/horse2zebra` (no --val-count:
the held-out images are not in it).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cyclegan.data import list_images, load_rgb, split_validation  # noqa: E402
from cyclegan.files import write_atomic  # noqa: E402

DATE = (2020, 1, 1, 0, 0, 0)  # every member's timestamp, so that repacking gives the same bytes


def encode(image: Image.Image, size: int, quality: int) -> bytes:
    """`image` scaled down so its shorter side is at most `size`, as a JPEG."""
    scale = size / min(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def synthetic(n: int, size: int, seed: int, color: tuple[int, int, int]) -> list[tuple[str, Image.Image]]:
    """`n` noisy images around `color`: a stand-in dataset where the real one is absent."""
    rng = np.random.default_rng(seed)
    return [(f"{i:03d}.png", Image.fromarray(np.clip(np.array(color)[None, None] + rng.normal(0, 30, (size, size, 3)),
                                                     0, 255).astype(np.uint8))) for i in range(n)]


def members(source: Path, val_count: int, test_count: int) -> tuple[dict[str, list[Path]], list[str]]:
    """The files of each folder to pack, and the held-out validation files (relative paths)."""
    chosen, held = {}, []
    for domain in "AB":
        train, val = split_validation(list_images(source / f"train{domain}"), val_count)
        chosen[f"train{domain}"] = train
        held += [f"train{domain}/{p.name}" for p in val]
        test = source / f"test{domain}"
        if test_count and test.is_dir():
            files = list_images(test)
            chosen[f"test{domain}"] = files[::max(1, len(files) // test_count)][:test_count]
    return chosen, held


def pack(out: Path, name: str, images: dict[str, list], held: list[str], info: dict, size: int, quality: int) -> dict:
    """Write the zip: NAME/<folder>/<stem>.jpg for each (file name, image or path), validation.txt and
    packed.json (where it came from and how)."""
    counts = {}

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for folder, items in images.items():
                counts[folder] = len(items)
                for item in items:
                    file_name, image = (item.name, load_rgb(item)) if isinstance(item, Path) else item
                    data = encode(image, size, quality)
                    zf.writestr(zipfile.ZipInfo(f"{name}/{folder}/{Path(file_name).stem}.jpg", DATE), data)
            zf.writestr(zipfile.ZipInfo(f"{name}/validation.txt", DATE), "".join(f"{p}\n" for p in held))
            meta = {**info, "size": size, "quality": quality, "counts": counts, "held_out": len(held)}
            zf.writestr(zipfile.ZipInfo(f"{name}/packed.json", DATE), json.dumps(meta, indent=2) + "\n")

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, write)
    return counts


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=ROOT / "datasets" / "horse2zebra",
                        help="dataset folder with trainA/, trainB/ (and testA/, testB/); default datasets/horse2zebra, "
                             "where `train.py --dataset horse2zebra` puts it")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "horse2zebra-256.zip",
                        help="zip to write (default data/horse2zebra-256.zip, git-ignored)")
    parser.add_argument("--val-count", type=int, default=120,
                        help="validation images per domain left out, as train.py --val-count N holds them out")
    parser.add_argument("--test-count", type=int, default=8, help="test images per domain kept for sample grids")
    parser.add_argument("--size", type=int, default=256, help="shorter side at most SIZE px")
    parser.add_argument("--quality", type=int, default=66,
                        help="JPEG quality (66: about 29 MB for horse2zebra, ~30 dB PSNR against the originals)")
    parser.add_argument("--max-mb", type=float, default=30.0, help="fail when the archive is larger than this")
    parser.add_argument("--synthetic", action="store_true",
                        help="pack a tiny made-up dataset instead (6 + 8 training and 2 + 2 test images of 40 px)")
    args = parser.parse_args(argv)

    if args.synthetic:
        name = "synthetic"
        images = {"trainA": synthetic(6, 40, 1, (200, 60, 40)), "trainB": synthetic(8, 40, 2, (40, 60, 200)),
                  "testA": synthetic(2, 40, 3, (200, 60, 40)), "testB": synthetic(2, 40, 4, (40, 60, 200))}
        held, info = [], {"source": "synthetic (scripts/pack_dataset.py --synthetic)"}
    else:
        name = args.source.resolve().name
        images, held = members(args.source, args.val_count, args.test_count)
        info = {"source": name, "val_count": args.val_count,
                "validation": f"cyclegan.data.split_validation(files, {args.val_count}) of trainA/ and trainB/, "
                              f"as train.py --val-count {args.val_count}; listed in validation.txt"}
    counts = pack(args.out, name, images, held, info, args.size, args.quality)
    mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out}: {mb:.1f} MB, " + ", ".join(f"{k} {v}" for k, v in counts.items()) +
          f", {len(held)} validation images left out")
    if mb > args.max_mb:
        print(f"error: {args.out} is larger than --max-mb {args.max_mb:g}; lower --quality", file=sys.stderr)
        sys.exit(1)
    return args.out


if __name__ == "__main__":
    main()
