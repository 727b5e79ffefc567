"""Translate files, folders and videos with a model folder, a Hub repo or the authors' weights:
`python -m cyclegan.translate --model weights/horse2zebra-identity photos/ clip.mp4 --out translated/`.
The app's video endpoint uses `translate_video` from here."""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from . import backends
from .cli import missing_extra, prog
from .data import IMAGE_EXTENSIONS, ImageError, load_rgb
from .files import move_into_place, one_line, write_atomic
from .inference import PRECISIONS, run_any_size
from .model import CONFIG_NAME, DIRECTIONS, WEIGHTS_NAME, CycleGAN
from .training.recipe import resolve_device

VIDEO_EXTENSIONS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
# "auto" compiles only for jobs that repay it. On 2 idle Zen 4 cores a first compile took 51-52 s (preview)
# / 57-63 s (paper size) and was repaid after 293-332 / 76-82 frames of 640×480: 110-133 / 138-143 s of
# eager work by the estimate below (benchmarks/serving.py --only video, docs/performance.md). Packages
# already cached load in milliseconds and serve any job.
PAYS_AFTER = 120  # seconds of eager work a generator
AUTHORS = "authors:"  # authors:horse2zebra = the generators the CycleGAN authors published, converted


class VideoError(ValueError):
    """A video that cannot be read, or is over the limit: the message names the file."""


def load_model(name: str, device: str | torch.device = "cpu") -> CycleGAN:
    """A model folder, a Hub repo id, or `authors:NAME` (the authors' NAME generators, downloaded and
    converted on first use into a model folder in the cache, and read from there afterwards)."""
    if not name.startswith(AUTHORS):
        return CycleGAN.from_pretrained(name, device=device)
    from . import convert

    pair_name = name[len(AUTHORS):]
    folder = convert.CACHE.parent / "converted" / pair_name
    if not all((folder / n).is_file() for n in (CONFIG_NAME, WEIGHTS_NAME)):
        reverse, a, b = convert.pair(pair_name)
        url = os.environ.get("CYCLEGAN_AUTHORS_URL", convert.BASE_URL).rstrip("/")
        a2b, b2a = (convert.fetch(f"{url}/{n}.pth", convert.CACHE) for n in (pair_name, reverse))
        training = {"converted_from": convert.AUTHORS_REPO, "G_AB": a2b.name, "G_BA": b2a.name}
        tmp = folder.with_name(folder.name + ".tmp")
        convert.convert(a2b, b2a, (a, b), info={"training": training}).save_pretrained(tmp, dtype="float16")
        move_into_place(tmp, folder)  # a complete folder or none: an interrupted conversion is redone
    return CycleGAN.from_pretrained(folder, device=device)


def video_size(path: str | os.PathLike) -> tuple[int, int, int, Fraction]:
    """(frames, width, height, frames per second) of a video's first video stream; frames is counted
    from the duration where the container does not say (0 when neither is known)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            rate = Fraction(stream.average_rate or stream.guessed_rate or 25).limit_denominator(1001)
            frames = stream.frames
            if not frames and container.duration:  # in microseconds
                frames = round(container.duration / 1_000_000 * rate)
            return frames, stream.width, stream.height, rate
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video ({one_line(e, 200)})") from None


def translate_video(model: CycleGAN, source: str | os.PathLike, target: str | os.PathLike, direction: str = "A2B",
                    precision: str = "auto", max_side: int | None = 1024, max_frame_pixels: int | None = None,
                    progress: Callable[[int, int], object] | None = None) -> Path:
    """Translate a video frame by frame into an H.264 mp4 at `target`: the same size (odd sides get one
    repeated row or column: H.264 needs even ones), the same average frame rate, no sound.
    `max_frame_pixels` bounds frames × width × height; `progress(done, total)` is called per frame."""
    import av

    frames, width, height, rate = video_size(source)
    if max_frame_pixels and frames * width * height > max_frame_pixels:
        raise VideoError(f"{Path(source).name}: {frames} frames of {width}×{height} are over the limit of "
                         f"{max_frame_pixels / 1e6:g} million frame pixels; cut it shorter or make it smaller")
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp.mp4")
    done = 0
    try:
        with av.open(str(source)) as src, av.open(str(tmp), "w") as out:
            stream = out.add_stream("libx264", rate=rate, options={"crf": "18", "preset": "fast"})
            stream.width, stream.height = width + width % 2, height + height % 2
            stream.pix_fmt = "yuv420p"  # what browsers play
            for frame in src.decode(video=0):
                done += 1
                if max_frame_pixels and done * width * height > max_frame_pixels:  # more frames than announced
                    raise VideoError(f"{Path(source).name}: over the limit of {max_frame_pixels / 1e6:g} million "
                                     f"frame pixels after {done - 1} frames")
                fake = np.asarray(model.translate(frame.to_image(), direction, max_side=max_side, precision=precision))
                fake = np.pad(fake, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
                out.mux(stream.encode(av.VideoFrame.from_ndarray(fake, format="rgb24")))
                if progress:
                    progress(done, max(frames, done))
            out.mux(stream.encode())
    except av.error.FFmpegError as e:
        tmp.unlink(missing_ok=True)
        raise VideoError(f"{source}: cannot be translated after {done} frames ({one_line(e, 200)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if done == 0:
        tmp.unlink(missing_ok=True)
        raise VideoError(f"{source}: has no frames")
    return move_into_place(tmp, target)


def plan(inputs: list[str], out: Path) -> list[tuple[Path, Path]]:
    """(source, target) pairs: a file goes to OUT/its name, a folder's images and videos (recursively)
    to OUT/their path inside it. Two sources with one target are an error."""
    jobs = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            jobs += [(p, out / p.relative_to(path)) for p in sorted(path.rglob("*"))
                     if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS]
        elif path.exists():
            jobs.append((path, out / path.name))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    targets: dict[Path, Path] = {}
    for source, target in jobs:
        if target in targets:
            raise ValueError(f"{source} and {targets[target]} would both be written to {target}")
        targets[target] = source
    return jobs


def repays_a_compile(net: torch.nn.Module, jobs: list[tuple[Path, Path]], precision: str) -> bool:
    """Whether `jobs` hold PAYS_AFTER seconds of `net`'s eager work or more, at the pace of one call timed
    here (a generator's time grows with the pixels)."""
    enough = PAYS_AFTER / eager_seconds_a_pixel(net, precision)
    return pixels(jobs, enough) >= enough


def eager_seconds_a_pixel(net: torch.nn.Module, precision: str, size: int = 128) -> float:
    """`net`'s eager time a pixel in `precision`: the faster of two `size`-px calls after a warm-up."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run_any_size(net, x, precision=precision)
        times.append(time.perf_counter() - start)
    return min(times[1:]) / size**2


def pixels(jobs: list[tuple[Path, Path]], enough: float) -> int:
    """The pixels `jobs` hold (images' sizes from their headers, videos' frames × sides), counted until
    `enough`; a file that cannot be read counts none (its translation then says why)."""
    total = 0
    for source, _ in jobs:
        try:
            if source.suffix.lower() in VIDEO_EXTENSIONS:
                frames, width, height, _ = video_size(source)
                total += frames * width * height
            else:
                with Image.open(source) as image:
                    total += image.width * image.height
        except (OSError, ValueError, Image.DecompressionBombError):  # VideoError is a ValueError
            continue
        if total >= enough:
            break
    return total


def translate_file(model: CycleGAN, source: Path, target: Path, direction: str, cycle: bool, precision: str,
                   progress: Callable[[int, int], object] | None = None) -> None:
    """One image (or video) into `target`, in the format of its extension; with `cycle` also F(G(x))
    beside it as NAME.rec.EXT (images only). `progress(done, total)` gets a video's frames."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix.lower() in VIDEO_EXTENSIONS:
        translate_video(model, source, target.with_suffix(".mp4"), direction, precision, progress=progress)
        return
    x = load_rgb(source)
    outputs = model.cycle(x, direction, precision=precision) if cycle else (model.translate(x, direction, precision=precision),)
    for image, path in zip(outputs, (target, target.with_name(f"{target.stem}.rec{target.suffix}"))):
        fmt = Image.registered_extensions().get(path.suffix.lower())
        options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        try:
            write_atomic(path, lambda f: image.save(f, format=fmt, **options))
        except (OSError, ValueError, KeyError) as e:  # e.g. an extension PIL cannot write
            raise ImageError(f"{source}: cannot write {path.suffix} files ({one_line(e, 200)})") from None


def show_frames(bar, done: int, total: int) -> None:
    bar.total, bar.n = total, done
    bar.refresh()


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    parser = argparse.ArgumentParser(prog=prog("python -m cyclegan.translate"), description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="images, videos, or folders (read recursively)")
    parser.add_argument("--model", required=True,
                        help="model folder, Hub repo id, or authors:NAME (e.g. authors:horse2zebra)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the results (same names and sub-folders)")
    parser.add_argument("--direction", choices=DIRECTIONS, default="A2B", help="A2B (default) or B2A")
    parser.add_argument("--cycle", action="store_true", help="also write F(G(x)) as NAME.rec.EXT (images)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="arithmetic (default: auto)")
    parser.add_argument("--backend", choices=backends.BACKENDS, default=os.environ.get(backends.ENV) or "auto",
                        help="the CPU's fast path: auto (where measured faster; compiled for jobs of %d s of eager work or "
                             "more, used for any job once cached), eager, or compile (default: $CYCLEGAN_BACKEND, "
                             "else auto)" % PAYS_AFTER)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda, cuda:N or mps (default: CUDA where there is one, else the CPU)")
    args = parser.parse_args(argv)
    try:
        backends.backend_setting(args.backend)
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out}: is a file; give a folder (made if missing)")
        jobs = plan(args.inputs, args.out)
        videos = any(source.suffix.lower() in VIDEO_EXTENSIONS for source, _ in jobs)
        if videos:
            if message := missing_extra("video", ["av"]):  # before any work, not at the first video
                print(f"{parser.prog}: {message}", file=sys.stderr)
                return 1
        device = resolve_device(args.device)
        model = load_model(args.model, device=device)
    except (OSError, ValueError) as e:  # DownloadError is an OSError
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    generators = list(model.generators(args.direction))[:2 if args.cycle else 1]
    if device.type == "cpu" and (args.backend == "compile" or (args.backend == "auto" and (
            backends.ready(generators, args.precision) or repays_a_compile(generators[0], jobs, args.precision)))):
        backends.start(generators, args.backend, args.precision, blocking=True,
                       log=lambda line: print(line, file=sys.stderr))
    failed = 0
    for source, target in tqdm(jobs, unit="file", desc="translating"):
        # A video's frames get a bar of their own under the files' (a long one is minutes of one file).
        frames = tqdm(unit="frame", desc=source.name, leave=False) if source.suffix.lower() in VIDEO_EXTENSIONS else None
        try:
            translate_file(model, source, target, args.direction, args.cycle, args.precision,
                           progress=None if frames is None else functools.partial(show_frames, frames))
        except (ImageError, VideoError, OSError) as e:
            failed += 1
            tqdm.write(f"skipped {source}: {one_line(e).removeprefix(f'{source}: ')}", file=sys.stderr)
        finally:
            if frames is not None:
                frames.close()
    print(f"{len(jobs) - failed} of {len(jobs)} files translated into {args.out}"
          + (f"; {failed} skipped" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":  # a missing extra is a one-line message, as for the console command
    from .cli import run
    run("translate")
