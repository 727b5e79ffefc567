"""Reading images of any kind as RGB, and the unpaired trainA/trainB dataset and its transforms
(datasets.py downloads the official datasets)."""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_PIXELS = 50_000_000  # larger images are refused before decoding (decompression bombs)


class ImageError(ValueError):
    """An image that cannot be read; the message names the file and what is wrong."""


# EXIF orientation -> the transpose that shows the picture upright.
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _upright(image: Image.Image) -> Image.Image:
    # Not ImageOps.exif_transpose: it re-encodes the EXIF block, which raises struct.error on a
    # corrupt one. EXIF is only metadata, so a block that cannot be parsed leaves the pixels as stored.
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:
        return image
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def _unidentified(source: str | os.PathLike) -> str:
    """Why Pillow could not identify a file, as precisely as its first bytes tell."""
    try:
        with open(source, "rb") as f:
            head = f.read(16)
    except OSError:
        head = b"?"
    if not head:
        return "the file is empty"
    if head[4:8] == b"ftyp":  # ISO media: HEIC/HEIF/AVIF photos, or a video
        brand = head[8:12].decode("ascii", "replace").strip()
        return f"HEIC/HEIF/AVIF or video file ({brand}) is not supported; convert it to JPEG or PNG"
    return "not an image file or an unsupported format"


def load_rgb(source: str | os.PathLike | Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open any image (path or PIL) as 8-bit RGB: EXIF orientation applied, first frame of an
    animation, transparency composited on white, 16-bit and float scaled, CMYK/palette converted.
    Anything that cannot be read raises ImageError with a one-line message naming the file."""
    name = "image" if isinstance(source, Image.Image) else str(source)
    try:
        image = source if isinstance(source, Image.Image) else Image.open(source)
        if image.width * image.height > max_pixels:
            raise ImageError(f"{name}: {image.width}x{image.height} is larger than the limit of {max_pixels:,} pixels")
        image.seek(0)
        image.load()
        image = _upright(image)
    except ImageError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, checked when the header is read
        raise ImageError(f"{name}: image is larger than the limit of {min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS):,} "
                         "pixels") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: {_unidentified(source)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: cannot be decoded ({e})") from None
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{name}: image has no pixels")
    try:
        rgb = _to_rgb(image)
    except (ValueError, OSError) as e:  # a mode Pillow cannot convert
        raise ImageError(f"{name}: cannot be converted to RGB from mode {image.mode} ({e})") from None
    rgb.info = {}  # orientation and transparency are applied: reading the result again changes nothing
    return rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if image.mode == "F" and array.max() <= 1.0 else (257.0 if array.max() > 255 else 1.0)
        array = array * 255.0 if scale == 255.0 else array / scale
        image = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """Float tensor (3, H, W) in [-1, 1] -> RGB PIL image."""
    array = tensor.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().byte()
    return Image.fromarray(array.permute(1, 2, 0).numpy(), "RGB")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files of a folder, sorted; a missing or imageless folder is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{folder}: contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


PREPROCESS = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
# the preprocessings whose every image comes out at one size (crop_size squared)
FIXED_SIZE = ("resize_and_crop", "crop", "scale_width_and_crop")


def _multiple_of_4(image: Image.Image) -> Image.Image:
    w, h = max(4, round(image.width / 4) * 4), max(4, round(image.height / 4) * 4)
    return image if (w, h) == image.size else image.resize((w, h), Image.BICUBIC)


def crop_corner(width: int, height: int, size: int, rng: random.Random) -> tuple[int, int]:
    """The random top-left corner of a `size` crop: the draws both data paths make."""
    return rng.randint(0, width - size), rng.randint(0, height - size)


def _random_crop(image: Image.Image, size: int, rng: random.Random) -> Image.Image:
    if image.width < size or image.height < size:  # too small to crop: enlarge, keeping the aspect
        scale = size / min(image.width, image.height)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.BICUBIC)
    x, y = crop_corner(image.width, image.height, size, rng)
    return image.crop((x, y, x + size, y + size))


def transform(image: Image.Image, preprocess: str, load_size: int, crop_size: int, flip: bool,
              rng: random.Random) -> torch.Tensor:
    """The training augmentation of the authors' code: resize and/or random crop, random flip."""
    if preprocess == "resize_and_crop":
        image = _random_crop(image.resize((load_size, load_size), Image.BICUBIC), crop_size, rng)
    elif preprocess == "crop":
        image = _random_crop(image, crop_size, rng)
    elif preprocess in ("scale_width", "scale_width_and_crop"):
        height = max(1, round(image.height * load_size / image.width))
        image = image.resize((load_size, height), Image.BICUBIC)
        image = _random_crop(image, crop_size, rng) if preprocess == "scale_width_and_crop" else _multiple_of_4(image)
    elif preprocess == "none":
        image = _multiple_of_4(image)
    else:
        raise ValueError(f"preprocess={preprocess!r}: choose one of {', '.join(PREPROCESS)}")
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return to_tensor(image)


def split_validation(files: list[Path], count: int) -> tuple[list[Path], list[Path]]:
    """(training, validation) files: `count` of them held out at random, with a fixed seed over the
    sorted list, so that every run on the same folder holds out the same images whatever its --seed."""
    if count <= 0:
        return files, []
    if count >= len(files):
        raise ValueError(f"{files[0].parent}: holding out {count} validation images leaves none of its "
                         f"{len(files)} for training")
    held = set(random.Random(0).sample(range(len(files)), count))
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


class UnpairedDataset(Dataset):
    """Images of `root/{phase}A` and `root/{phase}B`, less `val_count` of each held out for validation
    (`val_A`, `val_B`). Item i is the i-th A image with a B image drawn at random; the draw and the
    augmentation depend only on (seed, epoch, i), so a resumed or multi-worker run sees exactly the
    data an uninterrupted one does."""

    def __init__(self, root: str | os.PathLike, phase: str = "train", preprocess: str = "resize_and_crop",
                 load_size: int = 286, crop_size: int = 256, flip: bool = True, seed: int = 0,
                 val_count: int = 0) -> None:
        if preprocess not in PREPROCESS:
            raise ValueError(f"preprocess={preprocess!r}: choose one of {', '.join(PREPROCESS)}")
        self.files_A, self.val_A = split_validation(list_images(Path(root) / f"{phase}A"), val_count)
        self.files_B, self.val_B = split_validation(list_images(Path(root) / f"{phase}B"), val_count)
        self.preprocess, self.load_size, self.crop_size, self.flip = preprocess, load_size, crop_size, flip
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return max(len(self.files_A), len(self.files_B))

    def _load(self, files: list[Path], index: int, rng: random.Random) -> torch.Tensor:
        # An unreadable file is skipped with a warning naming it; the next file takes its place.
        for k in range(len(files)):
            path = files[(index + k) % len(files)]
            try:
                image = load_rgb(path)
            except ImageError as e:
                warnings.warn(f"skipping unreadable image {e}", stacklevel=2)
                continue
            return transform(image, self.preprocess, self.load_size, self.crop_size, self.flip, rng)
        raise ImageError(f"{files[0].parent}: none of the {len(files)} images can be read")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = random.Random(hash((self.seed, self.epoch, index)))
        real_A = self._load(self.files_A, index % len(self.files_A), rng)
        real_B = self._load(self.files_B, rng.randrange(len(self.files_B)), rng)
        return {"A": real_A, "B": real_B}

    def draws(self, index: int) -> tuple[int, tuple[int, int, bool], int, tuple[int, int, bool]]:
        """What __getitem__ draws for item `index` under resize_and_crop, in its order: the A image,
        its crop corner and flip, the B image, its crop corner and flip (DeviceImages crops by these)."""
        rng, free = random.Random(hash((self.seed, self.epoch, index))), self.load_size
        crop_A = (*crop_corner(free, free, self.crop_size, rng), self.flip and rng.random() < 0.5)
        index_B = rng.randrange(len(self.files_B))
        crop_B = (*crop_corner(free, free, self.crop_size, rng), self.flip and rng.random() < 0.5)
        return index % len(self.files_A), crop_A, index_B, crop_B


class DeviceImages:
    """An UnpairedDataset's training images decoded and resized once (as the loader does it: PIL,
    bicubic) into uint8 tensors on `device`; each batch is cropped and flipped there by the
    dataset's own draws, so that it holds exactly the pixels the DataLoader would have given.
    For resize_and_crop, the paper's preprocessing."""

    def __init__(self, dataset: UnpairedDataset, device: torch.device | str, threads: int = 0) -> None:
        if not self.supports(dataset):
            raise ValueError(f"--data-on-device yes needs --preprocess resize_and_crop with --load-size "
                             f">= --crop-size (have {dataset.preprocess}, {dataset.load_size}, {dataset.crop_size})")
        self.dataset, self.device = dataset, torch.device(device)
        self.A = self._decode(dataset.files_A, threads)
        self.B = self._decode(dataset.files_B, threads)

    @staticmethod
    def supports(dataset: UnpairedDataset) -> bool:
        """Whether the dataset's preprocessing is one this class reproduces (resize to a square, then crop)."""
        return dataset.preprocess == "resize_and_crop" and dataset.load_size >= dataset.crop_size

    @staticmethod
    def nbytes(dataset: UnpairedDataset) -> int:
        return (len(dataset.files_A) + len(dataset.files_B)) * 3 * dataset.load_size ** 2

    def _decode(self, files: list[Path], threads: int) -> torch.Tensor:
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        size = self.dataset.load_size

        def one(path: Path) -> np.ndarray | None:
            try:
                return np.asarray(load_rgb(path).resize((size, size), Image.BICUBIC))
            except ImageError as e:
                warnings.warn(f"skipping unreadable image {e}", stacklevel=2)
                return None

        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:  # PIL decodes outside the GIL
            arrays = list(tqdm(pool.map(one, files), total=len(files), desc=f"{files[0].parent.name} to {self.device}",
                               unit="image", leave=False))
        if all(a is None for a in arrays):
            raise ImageError(f"{files[0].parent}: none of the {len(files)} images can be read")
        # An unreadable file's place is taken by the next readable one, as UnpairedDataset._load does.
        arrays = [next(a for a in arrays[i:] + arrays[:i] if a is not None) for i in range(len(arrays))]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device)

    def _crop(self, images: torch.Tensor, i: int, crop: tuple[int, int, bool]) -> torch.Tensor:
        x, y, flipped = crop
        size = self.dataset.crop_size
        image = images[i, :, y:y + size, x:x + size]
        return image.flip(-1) if flipped else image

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        A, B = [], []
        for index in indices:
            index_A, crop_A, index_B, crop_B = self.dataset.draws(index)
            A.append(self._crop(self.A, index_A, crop_A))
            B.append(self._crop(self.B, index_B, crop_B))
        # as to_tensor: float32, / 127.5, - 1, in that order (the same values to the last bit)
        return {d: torch.stack(x).float().div(127.5).sub(1.0) for d, x in (("A", A), ("B", B))}

    def batches(self, indices: Iterator[int], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of `batch_size` of the sampler's indices; the last, partial one is dropped."""
        chunk: list[int] = []
        for index in indices:
            chunk.append(index)
            if len(chunk) == batch_size:
                yield self.batch(chunk)
                chunk = []


class EpochSampler(Sampler[int]):
    """Shuffles the dataset anew each epoch from (seed, epoch), splits it between the ranks of a
    distributed run like DistributedSampler, and can start part-way through an epoch (resume)."""

    def __init__(self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """`start` counts the indices of this rank already consumed in this epoch."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.length // self.world_size - self.start

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        per_rank = self.length // self.world_size  # drop the remainder so every rank steps in lockstep
        mine = order[self.rank::self.world_size][:per_rank]
        return iter(mine[self.start:].tolist())
