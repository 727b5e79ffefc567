"""The official CycleGAN datasets: their names, the two domains a name such as horse2zebra holds, and
downloading one into a trainA/trainB folder."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Callable

from .files import download, move_into_place

DATASETS_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets"
DATASETS = ("apple2orange", "summer2winter_yosemite", "horse2zebra", "monet2photo", "cezanne2photo",
            "ukiyoe2photo", "vangogh2photo", "maps", "cityscapes", "facades", "iphone2dslr_flower",
            "ae_photos", "grumpifycat", "mini", "mini_pix2pix", "mini_colorization")
# The two domains around the "2" of a dataset's name: horse2zebra, summer2winter_yosemite, cityscapes_photo2label.
DATASET_PAIR = re.compile(r"(.*?)([A-Za-z]+)2([A-Za-z]+)(.*)")


def domains_from_name(name: str) -> tuple[str, str] | None:
    """horse2zebra -> (horse, zebra); summer2winter_yosemite -> (summer, winter); None without an X2Y."""
    m = DATASET_PAIR.fullmatch(name)
    return (m[2], m[3]) if m else None


def download_dataset(name: str, data_dir: str | os.PathLike = "datasets", base_url: str = DATASETS_URL,
                     sha256: str | None = None, stop: Callable[[], bool] | None = None) -> Path:
    """Download and extract `{base_url}/{name}.zip` into `data_dir/name` and return that folder.

    An extracted copy with trainA/ and trainB/ is reused. An interrupted download is resumed by the
    next call (files.download); the zip is checked (sha256 when given, CRC of every member)
    before extraction, which happens in a temporary folder moved into place at the end
    (files.move_into_place: an incomplete earlier copy is replaced). `stop` is files.download's.
    """
    data_dir = Path(data_dir)
    target = data_dir / name
    if (target / "trainA").is_dir() and (target / "trainB").is_dir():
        return target
    if base_url == DATASETS_URL and name not in DATASETS:
        raise ValueError(f"dataset {name!r} is not an official CycleGAN dataset: choose one of {', '.join(DATASETS)}")
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / f"{name}.zip"
    if not archive.exists():
        download(f"{base_url.rstrip('/')}/{name}.zip", archive, stop=stop)
    try:
        if sha256 is not None:
            digest = hashlib.sha256(archive.read_bytes()).hexdigest()
            if digest != sha256:
                raise RuntimeError(f"{archive}: sha256 {digest} does not match the expected {sha256}")
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise RuntimeError(f"{archive}: member {bad} is corrupt")
            tmp = data_dir / f".{name}.extracting"
            shutil.rmtree(tmp, ignore_errors=True)
            zf.extractall(tmp)
    except zipfile.BadZipFile:
        archive.unlink()
        raise RuntimeError(f"{archive}: downloaded file is not a valid zip; it was removed, run again") from None
    except RuntimeError:
        archive.unlink()
        raise
    # The official zips hold a single folder NAME/; accept a zip with trainA/ at its top too.
    inner = tmp / name if (tmp / name).is_dir() else tmp
    if not (inner / "trainA").is_dir() or not (inner / "trainB").is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"{archive}: has no {name}/trainA and {name}/trainB folders")
    move_into_place(inner, target)
    shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink()
    return target
