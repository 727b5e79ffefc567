"""Preview grid of one or more CycleGAN model folders on a dataset's first test images: per model a
block of rows x | G(x) | F(G(x)), A->B rows from testA then B->A rows from testB."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# `python scripts/make_grid.py` puts scripts/ on the path, not the repository with the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cyclegan import CycleGAN  # noqa: E402
from cyclegan.data import list_images, load_rgb  # noqa: E402

LABEL, GAP = 24, 8  # height of the label strip above each block, space between blocks


def model_block(model: CycleGAN, name: str, dataroot: Path, n: int, size: int) -> Image.Image:
    """The rows x | G(x) | F(G(x)) of one model under a label with its name."""
    from tqdm.auto import tqdm

    jobs = [(path, d) for d in ("A2B", "B2A") for path in list_images(dataroot / f"test{d[0]}")[:n]]
    block = Image.new("RGB", (3 * size, LABEL + len(jobs) * size), "white")
    for row, (path, direction) in enumerate(tqdm(jobs, desc=name, unit="img")):
        x = load_rgb(path).resize((size, size), Image.BICUBIC)
        for col, image in enumerate((x, *model.cycle(x, direction))):
            block.paste(image, (col * size, LABEL + row * size))
    a, b = model.config.domain_A, model.config.domain_B
    text = f"{name}   x | G(x) | F(G(x))   {a}->{b}, then {b}->{a}"
    ImageDraw.Draw(block).text((4, 4), text, fill="black", font=ImageFont.load_default(size=14))
    return block


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="+", help="model folders (or Hub repo ids)")
    parser.add_argument("--dataroot", required=True, type=Path, help="dataset folder with testA/ and testB/")
    parser.add_argument("-n", type=int, default=4, help="test images per direction (default 4)")
    parser.add_argument("--size", type=int, default=256, help="images are resized to SIZE x SIZE (default 256)")
    parser.add_argument("--out", type=Path, default=Path("grid.png"), help="output image (.png or .jpg)")
    args = parser.parse_args(argv)
    blocks = [model_block(CycleGAN.from_pretrained(m), Path(m).name, args.dataroot, args.n, args.size)
              for m in args.models]
    grid = Image.new("RGB", (sum(b.width for b in blocks) + GAP * (len(blocks) - 1), max(b.height for b in blocks)),
                     "white")
    for i, block in enumerate(blocks):
        grid.paste(block, (i * (block.width + GAP), 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, quality=92) if args.out.suffix.lower() in (".jpg", ".jpeg") else grid.save(args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height})")
    return args.out


if __name__ == "__main__":
    main()
