"""`python -m cyclegan.translate`: files, folders (names with spaces, sub-folders), videos, unreadable
files, and `authors:NAME` models converted once from the authors' files."""
from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan import backends, convert, translate
from cyclegan.translate import VideoError, load_model, main, translate_video
from tests.conftest import make_images, psnr
from tests.test_convert import authors_server  # noqa: F401 (a fixture)


@pytest.fixture(autouse=True)
def eager(monkeypatch):
    """Videos translate eager here: tests/test_backends.py compiles, and a compile costs ~35 s."""
    monkeypatch.setenv(backends.ENV, "eager")


def write_video(path: Path, frames: int = 8, size: tuple[int, int] = (64, 48), codec: str = "libx264",
                rate: int = 12) -> Path:
    """`frames` frames of noise; ffv1 in .mkv allows odd sizes (H.264 does not)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p" if codec == "libx264" else "yuv444p"
        for _ in range(frames):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode())
    return path


def read_video(path: Path) -> tuple[str, int, int, int, float]:
    """(codec, frames decoded, width, height, average frame rate)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return stream.codec_context.name, frames, stream.width, stream.height, float(stream.average_rate)


def frames_psnr(model, source: Path, translated: Path, direction: str) -> list[float]:
    """PSNR of the first and last frames of `translated` against `model`'s translation of those of
    `source`, in means of 8x8 blocks: H.264 at 64x48 blurs the noise of write_video's frames (19.7 dB in
    full). Measured with the tiny model: 42-43 dB, against 31-32 for the neighbouring frame's translation,
    21 for the untranslated frame and 19 for the other direction."""
    import av

    def blocks(image: Image.Image) -> Image.Image:
        return image.resize((image.width // 8, image.height // 8), Image.BOX)

    with av.open(str(source)) as a, av.open(str(translated)) as b:
        pairs = list(zip((f.to_image() for f in a.decode(video=0)), (f.to_image() for f in b.decode(video=0))))
    return [psnr(blocks(y.crop((0, 0, *x.size))), blocks(model.translate(x, direction))) for x, y in (pairs[0], pairs[-1])]


@pytest.fixture
def model_dir(tiny_model, tmp_path) -> Path:
    return tiny_model.save_pretrained(tmp_path / "tiny model")


def test_a_folder_with_spaces_keeps_names_paths_and_sizes(model_dir, tmp_path, capsys):
    photos = tmp_path / "my photos"
    sizes = {"a horse.png": (40, 36), "sub dir/zebra 2.jpg": (33, 17), "sub dir/deeper/x.webp": (8, 9)}
    for name, size in sizes.items():
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (120, 80, 40)).save(photos / name)
    (photos / "notes.txt").write_text("not an image, and not named as one: ignored")
    (photos / "sub dir" / "broken.png").write_text("named as an image, but text")
    out = tmp_path / "out dir"
    assert main(["--model", str(model_dir), str(photos), "--out", str(out), "--precision", "fp32"]) == 1
    model = load_model(str(model_dir))
    for name, size in sizes.items():
        written = Image.open(out / name)
        assert written.size == size and written.format == {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}[
            Path(name).suffix], name
        expected, encoded = model.translate(Image.open(photos / name), "A2B", precision="fp32"), io.BytesIO()
        expected.save(encoded, format=written.format, **({} if written.format == "PNG" else {"quality": 95}))
        assert psnr(written.convert("RGB"), Image.open(encoded).convert("RGB")) == math.inf, name  # G(x), as encoded
    assert not (out / "notes.txt").exists() and not (out / "sub dir" / "broken.png").exists()
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped {photos / 'sub dir' / 'broken.png'}: not an image file")
    assert "3 of 4 files translated" in err and "1 skipped" in err
    (photos / "sub dir" / "broken.png").unlink()
    assert main(["--model", str(model_dir), str(photos / "a horse.png"), "--out", str(tmp_path / "one"),
                 "--direction", "B2A", "--cycle"]) == 0
    fake, rec = model.cycle(Image.open(photos / "a horse.png"), "B2A")
    assert psnr(Image.open(tmp_path / "one" / "a horse.png"), fake) == math.inf
    assert psnr(Image.open(tmp_path / "one" / "a horse.rec.png"), rec) == math.inf


def test_videos_keep_frames_size_and_rate(model_dir, tmp_path, capsys):
    clip = write_video(tmp_path / "clip one.mp4")
    odd = write_video(tmp_path / "odd.mkv", frames=5, size=(63, 47), codec="ffv1", rate=10)
    assert main(["--model", str(model_dir), str(clip), str(odd), "--out", str(tmp_path / "out")]) == 0
    bars = capsys.readouterr().err.replace("\r", "\n")  # a bar of frames under the files' for each video
    assert re.search(r"^clip one\.mp4: +100%.* 8/8 \[", bars, re.M) and re.search(r"^odd\.mkv: +100%.* 5/5 \[", bars, re.M)
    assert re.search(r"^translating: 100%.* 2/2 \[", bars, re.M), bars
    assert read_video(tmp_path / "out" / "clip one.mp4") == ("h264", 8, 64, 48, 12.0)
    assert read_video(tmp_path / "out" / "odd.mp4") == ("h264", 5, 64, 48, 10.0)  # even sides for H.264
    model = load_model(str(model_dir))
    for source, out in ((clip, "clip one.mp4"), (odd, "odd.mp4")):
        assert min(frames_psnr(model, source, tmp_path / "out" / out, "A2B")) >= 38, out


def test_video_limit_and_unreadable_videos(tiny_model, model_dir, tmp_path, capsys):
    clip = write_video(tmp_path / "clip.mp4")
    with pytest.raises(VideoError, match=r"clip.mp4: 8 frames of 64×48 are over the limit"):
        translate_video(tiny_model, clip, tmp_path / "x.mp4", max_frame_pixels=64 * 48 * 7)
    assert not list(tmp_path.glob("x.mp4*"))
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing else")
    assert main(["--model", str(model_dir), str(tmp_path / "bad.mp4"), "--out", str(tmp_path / "out")]) == 1
    assert "skipped " + str(tmp_path / "bad.mp4") + ": not a readable video" in capsys.readouterr().err


def test_jobs_that_repay_a_compile_or_find_it_cached_take_the_fast_path(model_dir, tmp_path, monkeypatch):
    started, cached = [], []
    monkeypatch.setattr(backends, "start", lambda nets, backend, precision, **kw: started.append(
        (len(nets), backend, precision, kw["blocking"])) or backend)
    monkeypatch.setattr(backends, "ready", lambda nets, precision: cached.append(len(nets)) or bool(cached_now))
    monkeypatch.setenv(backends.ENV, "auto")
    clip = write_video(tmp_path / "clip.mp4", frames=2)  # 2 frames of 64×48
    images = make_images(tmp_path / "images", 3, size=(40, 30))
    assert translate.pixels([(clip, None)], 10**9) == 2 * 64 * 48
    sizes = [math.prod(Image.open(p).size) for p in images]
    assert translate.pixels([(p, None) for p in images], 10**9) == sum(sizes)
    assert translate.pixels([(p, None) for p in images], 1) == sizes[0]  # counted until enough
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert translate.pixels([(tmp_path / "bad.png", None), (clip, None)], 10**9) == 2 * 64 * 48

    outs = iter(range(100))

    def run(*inputs: Path, args: tuple = ()) -> None:
        assert main(["--model", str(model_dir), *map(str, inputs), "--out", str(tmp_path / f"out{next(outs)}"),
                     *args]) == 0

    pace = translate.eager_seconds_a_pixel(load_model(str(model_dir)).G_AB, "fp32")
    assert 0 < pace < 1e-3, pace  # the tiny model's time a pixel, timed for real
    cached_now = False
    run(clip)
    assert started == []  # 6,144 pixels, milliseconds of eager work: a compile would cost far more
    monkeypatch.setattr(translate, "eager_seconds_a_pixel", lambda net, precision: 1.0)  # a second a pixel
    monkeypatch.setattr(translate, "PAYS_AFTER", 2 * 64 * 48 + sizes[0] + 1)
    run(clip, images[0])
    assert started == []  # one pixel short
    run(clip, tmp_path / "images")
    assert started == [(1, "auto", "auto", True)]  # compiled (or loaded) before the first file
    cached_now = True
    run(images[0], args=("--cycle",))
    assert started[1:] == [(2, "auto", "auto", True)]  # cached: any job, both generators for --cycle
    cached_now = False
    run(images[0], args=("--backend", "compile", "--precision", "fp32"))
    assert started[2:] == [(1, "compile", "fp32", True)]  # asked for: compiled whatever the job
    run(images[0], args=("--backend", "eager"))
    assert len(started) == 3 and cached == [1, 1, 1, 2]  # eager and compile never ask the cache


def test_bad_model_or_input_is_one_line(model_dir, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nowhere"), str(model_dir), "--out", str(tmp_path / "o")]) == 1
    assert main(["--model", str(model_dir), str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and err[1] == f"error: {tmp_path / 'missing.jpg'}: no such file or folder"
    image = make_images(tmp_path / "images", 1)[0]
    (tmp_path / "a file").write_text("")
    for flags, said in ((["--out", str(tmp_path / "a file")], f"--out {tmp_path / 'a file'}: is a file; give a folder"),
                        (["--out", str(tmp_path / "o"), "--device", "foo"], "--device foo: not a device here; choose cpu"),
                        (["--out", str(tmp_path / "o"), "--device", "cuda:99"], "--device cuda:99: "),
                        (["--out", str(tmp_path / "o"), "--device", "mps"] if not torch.backends.mps.is_available()
                         else ["--device", "foo"], "--device ")):
        assert main(["--model", str(model_dir), str(image), *flags]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {said}") and err.count("\n") == 1, err  # one line, no traceback
    assert not (tmp_path / "o").exists()


def test_authors_weights_are_converted_once_and_say_bsd(authors_server, tmp_path, monkeypatch):  # noqa: F811
    url, nets = authors_server
    monkeypatch.setenv("CYCLEGAN_AUTHORS_URL", url)
    monkeypatch.setattr(convert, "CACHE", tmp_path / "cache" / "pretrained")
    model = load_model("authors:horse2zebra")
    assert model.domains("A2B") == ("horse", "zebra")
    folder = tmp_path / "cache" / "converted" / "horse2zebra"
    card = (folder / "README.md").read_text()
    assert "license: bsd\n" in card and "pytorch-CycleGAN-and-pix2pix/blob/master/LICENSE" in card
    (tmp_path / "served" / "pretrained_models" / "horse2zebra.pth").unlink()
    for f in (tmp_path / "cache" / "pretrained").iterdir():
        f.unlink()  # the converted folder is used from now on: no download, no conversion
    assert load_model("authors:horse2zebra").config == model.config


def test_a_bad_backend_is_one_line(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CYCLEGAN_BACKEND", "tensorrt")
    assert main(["--model", str(model_dir), str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == "error: CYCLEGAN_BACKEND='tensorrt': choose one of auto, eager, compile\n"
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), str(tmp_path), "--out", str(tmp_path / "o"), "--backend", "tensorrt"])
    assert "--backend: invalid choice: 'tensorrt'" in capsys.readouterr().err
