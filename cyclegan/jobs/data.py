"""A job's training data, checked before anything trains: an uploaded zip holding trainA/ and trainB/
(at its root or one folder down; testA/, testB/ optional), unpacked member by member inside the run's
folder only, or a folder of that layout (an official dataset once downloaded). Every refusal is one
line naming the member or file."""
from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from ..data import IMAGE_EXTENSIONS, ImageError, load_rgb
from ..files import move_into_place

DOMAINS = ("trainA", "trainB", "testA", "testB")
DRIVE = re.compile(r"^[A-Za-z]:")


class DataError(ValueError):
    """Data a job cannot train on; the message names the file or member and why, in one line."""


@dataclass
class Limits:
    zip_bytes: int = 2 << 30  # the upload itself (CYCLEGAN_MAX_ZIP_SIZE)
    files: int = 50_000  # members of a zip
    unpacked_bytes: int = 8 << 30  # their sizes, unpacked (zip bombs)
    pixels: int = 40_000_000  # a single image's (decompression bombs)


@dataclass
class DataReport:
    """What a job trains on: images per folder, the files left out and why, the images' sizes."""
    images: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "testA/notes.txt: not an image"
    smallest: tuple[int, int] | None = None
    largest: tuple[int, int] | None = None

    def summary(self) -> str:
        counts = ", ".join(f"{d} {n}" for d, n in self.images.items())
        sizes = "" if self.smallest is None else (f"; sizes {self.smallest[0]}×{self.smallest[1]} to "
                                                  f"{self.largest[0]}×{self.largest[1]} px")
        skipped = ""
        if self.skipped:
            shown = "; ".join(self.skipped[:5]) + (f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else "")
            skipped = f"; {len(self.skipped)} file(s) skipped ({shown})"
        return f"images: {counts}{sizes}{skipped}"


def member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """A member's path, refused where it could leave the folder it is unpacked into: absolute, a drive
    letter, "..", or a link."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or DRIVE.match(name):
        raise DataError(f"{info.filename}: an absolute path in the zip; only relative paths are accepted")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise DataError(f"{info.filename}: a path with '..' in the zip; it would leave the folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(f"{info.filename}: a link in the zip; links are not accepted")
    return path


def zip_layout(paths: list[PurePosixPath], zip_name: str) -> PurePosixPath:
    """The folder inside the zip that holds trainA/ and trainB/: its root, or a single folder below it."""
    dirs = {p.parts[:i] for p in paths for i in range(1, len(p.parts))}
    for root in [(), *sorted({d[:1] for d in dirs})]:
        if root + ("trainA",) in dirs and root + ("trainB",) in dirs:
            return PurePosixPath(*root)
    found = [d for d in ("trainA", "trainB") if any(x[-1] == d and len(x) <= 2 for x in dirs)]
    missing = " and ".join(f"{d}/" for d in ("trainA", "trainB") if d not in found)
    raise DataError(f"{zip_name}: no {missing} folder at its top or one folder down")


def unpack_zip(archive: Path, target: Path, limits: Limits) -> DataReport:
    """Check the zip, unpack the images of trainA/ trainB/ testA/ testB/ into `target` (replacing what
    is there) and check them (`check_folder`). Nothing is written outside `target`; a refusal leaves
    no `target`."""
    archive = Path(archive)
    if archive.stat().st_size > limits.zip_bytes:
        raise DataError(f"{archive.name}: {archive.stat().st_size / 2 ** 20:.0f} MB, above the upload limit of "
                        f"{limits.zip_bytes / 2 ** 20:.0f} MB (CYCLEGAN_MAX_ZIP_SIZE)")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise DataError(f"{archive.name}: not a zip file") from None
    tmp = target.with_name(f".{target.name}.unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zf:
            members = [(info, member_path(info)) for info in zf.infolist()]
            files = [(i, p) for i, p in members if not i.is_dir()]
            if len(files) > limits.files:
                raise DataError(f"{archive.name}: {len(files):,} files, more than the limit of {limits.files:,}")
            unpacked = sum(i.file_size for i, _ in files)
            if unpacked > limits.unpacked_bytes:
                raise DataError(f"{archive.name}: {unpacked / 2 ** 20:,.0f} MB unpacked, more than the limit of "
                                f"{limits.unpacked_bytes / 2 ** 20:,.0f} MB")
            root = zip_layout([p for _, p in files if "__MACOSX" not in p.parts], archive.name)
            for info, path in files:
                inside = path.relative_to(root).parts if path.is_relative_to(root) else ()
                if len(inside) == 2 and inside[0] in DOMAINS and not inside[1].startswith("."):
                    extract(zf, info, tmp / inside[0] / inside[1])
        report = check_folder(tmp, limits.pixels, names=f"{archive.name}: ")
        move_into_place(tmp, target)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, chunk: int = 1 << 20) -> None:
    """One member, copied in chunks up to the size it declares: a member that inflates beyond it (a zip
    bomb whose header lies) is refused."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with zf.open(info) as src, open(dest, "wb") as out:
            while block := src.read(chunk):
                written += len(block)
                if written > info.file_size:
                    raise DataError(f"{info.filename}: unpacks to more than the {info.file_size:,} bytes it declares")
                out.write(block)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # a CRC that does not match, a truncated member
        raise DataError(f"{info.filename}: a damaged member in the zip ({e})") from None


def check_folder(folder: Path, max_pixels: int, names: str = "") -> DataReport:
    """Count the readable images of each of trainA/ trainB/ (testA/ testB/ where present), delete the
    files that are not images or cannot be read (named in the report), and refuse an image above
    `max_pixels` (before decoding it) or a training folder without one readable image."""
    report = DataReport()
    for domain in DOMAINS:
        if not (folder / domain).is_dir():
            if domain.startswith("train"):
                raise DataError(f"{names}no {domain}/ folder")
            continue
        count = 0
        for path in sorted(p for p in (folder / domain).iterdir() if p.is_file()):
            size = image_size(path, f"{names}{domain}/{path.name}", max_pixels)
            if size is None:
                report.skipped.append(f"{domain}/{path.name}: " +
                                      ("not an image" if path.suffix.lower() not in IMAGE_EXTENSIONS else "unreadable"))
                path.unlink()
                continue
            count += 1
            report.smallest = min(report.smallest or size, size, key=lambda s: s[0] * s[1])
            report.largest = max(report.largest or size, size, key=lambda s: s[0] * s[1])
        if count == 0 and domain.startswith("train"):
            raise DataError(f"{names}{domain}/ has no readable image")
        report.images[domain] = count
    return report


def image_size(path: Path, name: str, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) of a readable image; None for a file that is not one; DataError above the limit."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if width * height > max_pixels:
        raise DataError(f"{name}: {width}×{height} pixels, above the limit of {max_pixels / 1e6:g} million")
    try:
        load_rgb(path, max_pixels=max_pixels)
    except (ImageError, OSError, ValueError):
        return None
    return width, height
