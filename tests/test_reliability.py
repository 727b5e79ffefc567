"""Reliability and security: bad and hostile images through the package, the app's function and the
running app; a fuzzed decoder; training killed, interrupted or misconfigured; untrusted model files;
the app under concurrent clients."""
import io
import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan import CycleGAN, ModelConfig
from cyclegan.data import ImageError, load_rgb, to_tensor
from cyclegan.training import Trainer, TrainConfig, load_checkpoint
from tests.conftest import ROOT, TINY, TINY_FLAGS, run_python as run

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


# ---- bad inputs ---------------------------------------------------------------------------

def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def two_tone(w: int = 32, h: int = 24, mode: str = "RGB") -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 2], pixels[:, w // 2:] = RED, BLUE
    return Image.fromarray(pixels).convert(mode)


def noise(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels and holds none: a few bytes that would decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def corrupt_exif() -> bytes:
    """EXIF with orientation 6 and text in tag 334, which TIFF types as SHORT: Pillow reads the block but
    cannot write it back, which is what ImageOps.exif_transpose does (and raised struct.error)."""
    entries = [(274, 3, 1, struct.pack("<HH", 6, 0)), (334, 2, 6, struct.pack("<I", 8 + 2 + 2 * 12 + 4))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", tag, kind, n) + value
                                                     for tag, kind, n, value in entries) + struct.pack("<I", 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + b"Maker\x00"


def palette_with_transparency() -> bytes:
    image = Image.new("P", (32, 24), 0)
    image.putpalette([0, 255, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (16, 0, 32, 24))
    return encode(image, "PNG", transparency=0)  # left half: index 0, transparent green


def grey_alpha() -> bytes:
    image = Image.new("LA", (32, 24), (0, 255))
    image.paste((0, 0), (0, 0, 16, 24))  # left half fully transparent
    return encode(image, "PNG")


def sixteen_bit() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (24, 1))
    return encode(Image.fromarray(ramp), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 24), c) for c in (RED, BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def rotated_jpeg(exif: bytes | None = None) -> bytes:
    if exif is None:
        tags = Image.Exif()
        tags[274] = 6  # shown rotated 90 degrees clockwise: the red left half ends up on top
        exif = tags.tobytes()
    return encode(two_tone(), "JPEG", exif=exif, quality=95)


def near(pixel, colour, tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, colour))


# name, file content, and either (size of the result, a check of its pixels) or the error's message
BAD_INPUTS = [
    ("empty.png", lambda: b"", "the file is empty"),
    ("truncated.jpg", lambda: encode(noise(), "JPEG")[:2000], "cannot be decoded"),  # of about 3 kB
    ("notes.png", lambda: b"these are notes, not a picture\n", "not an image file"),
    ("bomb.png", lambda: png_header(30000, 30000), "larger than the limit"),
    ("big.png", lambda: png_header(8000, 8000), "8000x8000 is larger than the limit"),
    ("photo.heic", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC/HEIF"),
    ("mystery.xyz", lambda: bytes(range(256)) * 4, "not an image file"),
    ("dot.png", lambda: encode(Image.new("RGB", (1, 1), RED), "PNG"), ((1, 1), lambda im: near(im.getpixel((0, 0)), RED))),
    ("strip.png", lambda: encode(two_tone(10000, 8), "PNG"), ((10000, 8), None)),
    ("gray16.png", sixteen_bit, ((32, 24), lambda im: im.getpixel((0, 0)) == (0, 0, 0) and im.getpixel((31, 0)) == WHITE
                                 and im.getpixel((16, 0)) == (132, 132, 132))),  # 33824 / 257: scaled, not clipped
    ("cmyk.jpg", lambda: encode(two_tone(mode="CMYK"), "JPEG", quality=95),
     ((32, 24), lambda im: near(im.getpixel((4, 12)), RED) and near(im.getpixel((28, 12)), BLUE))),
    ("palette.png", palette_with_transparency,
     ((32, 24), lambda im: im.getpixel((4, 12)) == WHITE and im.getpixel((28, 12)) == BLUE)),
    ("la.png", grey_alpha, ((32, 24), lambda im: im.getpixel((4, 12)) == WHITE and im.getpixel((28, 12)) == (0, 0, 0))),
    ("animated.gif", animated_gif, ((32, 24), lambda im: near(im.getpixel((16, 12)), RED, 0))),
    ("rotated.jpg", rotated_jpeg, ((24, 32), lambda im: near(im.getpixel((12, 4)), RED) and near(im.getpixel((12, 28)), BLUE))),
    ("bad-exif.jpg", lambda: rotated_jpeg(corrupt_exif()), ((24, 32), lambda im: near(im.getpixel((12, 4)), RED))),
]
SERVER_ROWS = ("empty.png", "truncated.jpg", "photo.heic", "bad-exif.jpg", "rotated.jpg", "palette.png")


def write_input(folder: Path, name: str) -> tuple[Path, object]:
    _, make, expected = next(row for row in BAD_INPUTS if row[0] == name)
    path = folder / name
    path.write_bytes(make())
    return path, expected


@pytest.mark.parametrize("name", [row[0] for row in BAD_INPUTS])
def test_bad_inputs_in_the_package(tmp_path, tiny_model, name):
    path, expected = write_input(tmp_path, name)
    if isinstance(expected, str):
        with pytest.raises(ImageError) as error:
            load_rgb(path)
        message = str(error.value)
        assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
        return
    size, check = expected
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == size
    assert check is None or check(image), [image.getpixel((x, image.height // 2)) for x in (0, image.width - 1)]
    assert np.array_equal(np.asarray(load_rgb(image)), np.asarray(image))  # reading the result again changes nothing
    assert tiny_model.translate(image).size == size
    assert tiny_model.translate(path).size == size


@pytest.fixture(scope="module")
def app_module():
    import app
    return app


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return CycleGAN(TINY).init_weights(0).save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("name", [row[0] for row in BAD_INPUTS])
def test_bad_inputs_in_the_app_function(tmp_path, app_module, tiny_folder, name, monkeypatch):
    import gradio as gr
    monkeypatch.setattr(app_module, "ALLOW_ANY", True)  # as CYCLEGAN_ALLOW_ANY_MODEL=1: a model folder by path
    path, expected = write_input(tmp_path, name)
    if isinstance(expected, str):
        with pytest.raises(gr.Error) as error:
            app_module.translate(str(path), "A2B", True, str(tiny_folder))
        message = error.value.message
        assert message.startswith(f"Cannot use {name}: ") and expected in message and "\n" not in message
        return
    x, fake, rec, *_, summary = app_module.translate(str(path), "B2A", False, str(tiny_folder))
    assert x.size == fake.size == rec.size == expected[0]
    assert f"{x.width}×{x.height} px" in summary


def test_bad_uploads_to_the_running_app(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    for name in SERVER_ROWS:  # the bad ones first: the valid ones after them show the server still serves
        path, expected = write_input(tmp_path, name)
        if isinstance(expected, str):
            with pytest.raises(AppError) as error:
                client.predict(handle_file(str(path)), "A2B", True, api_name="/translate")
            assert str(error.value).startswith(f"Cannot use {name}: ") and expected in str(error.value)
        else:
            result = client.predict(handle_file(str(path)), "A2B", True, api_name="/translate")
            assert all(Image.open(p).size == expected[0] for p in result[:3]), name


# ---- fuzzing the decoder --------------------------------------------------------------------

FUZZ_CASES = 200


def fuzz_seeds() -> dict[str, bytes]:
    return {"png": encode(noise(32, 24), "PNG"), "palette.png": palette_with_transparency(), "16bit.png": sixteen_bit(),
            "jpeg": rotated_jpeg(), "gif": animated_gif()}


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(data)
    how = rng.choice(("flip", "header", "exif", "truncate", "flip+truncate"))
    if how in ("flip", "flip+truncate"):
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    if how in ("header", "exif"):  # where the sizes, modes, chunk lengths and EXIF offsets are
        start = max(0, data.find(b"Exif")) if how == "exif" else 0
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(start, min(len(data), start + 64))] = rng.randrange(256)
    if how in ("truncate", "flip+truncate"):
        data = data[:rng.randrange(len(data))]
    return bytes(data), how


@pytest.mark.filterwarnings("ignore:(Corrupt EXIF|Truncated File|Metadata):UserWarning")
def test_fuzzed_files_give_rgb_images_or_image_errors(tmp_path):
    seeds, rng = fuzz_seeds(), random.Random(8)
    outcomes, escaped = Counter(), []
    for case in range(FUZZ_CASES):
        kind = rng.choice(sorted(seeds))
        data, how = mutate(seeds[kind], rng)
        path = tmp_path / f"case{case}"
        path.write_bytes(data)
        try:
            image = load_rgb(path)
            assert image.mode == "RGB" and to_tensor(image).shape == (3, image.height, image.width)
            outcomes["image"] += 1
        except ImageError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
            outcomes["ImageError"] += 1
        except Exception as e:  # anything else would be a traceback in the app or a crash in training
            escaped.append(f"case {case} ({kind}, {how}): {type(e).__name__}: {e}")
        path.unlink()
    assert not escaped, "\n".join(escaped)
    assert outcomes["image"] > 10 and outcomes["ImageError"] > 10, outcomes  # both paths really ran


# ---- faults in training ---------------------------------------------------------------------

def start(args: list[str], log: Path) -> subprocess.Popen:
    """train.py in its own process group (so that a signal reaches it and its data workers, as from a
    terminal); its output goes to a file, which cannot fill up and block it like an unread pipe."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


def logged_steps(out: Path) -> list[int]:
    try:
        lines = (out / "losses.csv").read_text().splitlines()[1:]
    except FileNotFoundError:
        return []
    return [int(line.split(",")[0]) for line in lines if line.count(",") > 5]  # whole rows only


def wait_until(condition, proc: subprocess.Popen, log: Path, timeout: float = 120, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"train.py exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out:\n{log.read_text()[-2000:]}")
        time.sleep(poll)


def kill_9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def test_kill_9_loses_only_the_steps_since_the_last_save(dataroot, tmp_path):
    out, log = tmp_path / "run", tmp_path / "log"
    proc = start(["--dataroot", str(dataroot), "--output", str(out), "--max-steps", "1000", "--save-every", "3",
                  "--log-every", "1", *TINY_FLAGS], log)
    wait_until(lambda: len(logged_steps(out)) >= 5, proc, log)
    kill_9(proc)
    logged, saved = logged_steps(out)[-1], load_checkpoint(out)["step"]
    assert 3 <= saved <= logged and logged - saved <= 3, (saved, logged)

    result = run(["train.py", "--resume", str(out), "--max-steps", str(saved + 3)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(out)["step"] == saved + 3
    assert logged_steps(out) == list(range(1, saved + 4))  # the lost steps were dropped and done again


def test_kill_9_at_any_time_leaves_a_loadable_checkpoint(dataroot, tmp_path):
    """Killed again and again, every other time just as checkpoint.pt.tmp appears (a save is being
    written), otherwise at a random moment; after each kill the run directory loads and resumes. On a
    busy machine a kill can come after the save it aimed at, so it goes on (at most 14 kills) until at
    least 3 came during a save."""
    out, log, rng = tmp_path / "run", tmp_path / "log", random.Random(0)
    tmp_file = out / "checkpoint.pt.tmp"
    tries, mid_save, last = 0, 0, 0
    while tries < 6 or (mid_save < 3 and tries < 14):
        attempt, tries = tries, tries + 1
        start_from = ["--resume", str(out)] if attempt else ["--dataroot", str(dataroot), "--output", str(out),
                                                            *TINY_FLAGS, "--log-every", "1"]
        tmp_file.unlink(missing_ok=True)  # a leftover from the last kill: only a new one shows a save in progress
        steps_before = len(logged_steps(out))
        proc = start([*start_from, "--save-every", "1", "--max-steps", "1000"], log)
        if attempt % 2 == 0:  # a save over an earlier one (before the first, there is nothing to keep)
            wait_until(lambda: tmp_file.exists() and (out / "checkpoint.pt").exists(), proc, log, poll=0.001)
        else:
            wait_until(lambda: len(logged_steps(out)) > steps_before, proc, log)
            time.sleep(rng.uniform(0, 0.6))
        kill_9(proc)
        mid_save += tmp_file.exists() or not (out / "checkpoint.pt").exists()
        state = load_checkpoint(out)  # checkpoint.pt, or checkpoint.prev.pt between the two renames
        trainer = Trainer(TrainConfig(**state["train_config"]), ModelConfig.from_dict(state["model_config"]))
        trainer.load_state_dict(state)  # every part of it is whole: networks, optimisers, pools, RNG
        assert trainer.step >= last
        last = trainer.step
        CycleGAN.from_pretrained(out / "model")
    print(f"{tries} kills, {mid_save} during a save; resumed each time, up to step {last}")
    assert mid_save >= 3, f"only {mid_save} of {tries} kills came during a save"
    result = run(["train.py", "--resume", str(out), "--max-steps", str(last + 2)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(out)["step"] == last + 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and `kill` of the job
def test_a_stop_signal_saves_and_exits_cleanly(dataroot, tmp_path, sig):
    out, log = tmp_path / "run", tmp_path / "log"
    proc = start(["--dataroot", str(dataroot), "--output", str(out), "--save-every", "100000", "--log-every", "1",
                  *TINY_FLAGS, "--workers", "1"], log)
    wait_until(lambda: len(logged_steps(out)) >= 3, proc, log)
    os.killpg(proc.pid, sig)  # the whole process group, data worker included, as from a terminal
    assert proc.wait(timeout=120) == 0, log.read_text()[-2000:]
    text = log.read_text()
    assert f"{sig.name}: saved" in text and f"--resume {out}" in text and "Traceback" not in text
    assert load_checkpoint(out)["step"] == logged_steps(out)[-1] >= 3  # nothing done was lost


def test_unwritable_output_is_an_error_before_training(dataroot, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("root may write anywhere, but no folder can be made under a file")
    result = run(["train.py", "--dataroot", str(dataroot), "--output", str(blocker / "run"), *TINY_FLAGS])
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {blocker / 'run'}: output directory cannot be created or written to "
                                     "(Not a directory)")


# ---- untrusted files ------------------------------------------------------------------------

class Payload:
    """Unpickling this runs code that creates `marker`: what a malicious .pth does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def hostile_files(folder: Path) -> tuple[Path, dict[str, Path]]:
    """The same payload as a torch.save zip (a .pth as published) and as a bare pickle stream."""
    marker = folder / "code-ran"
    pth = folder / "evil.pth"
    torch.save({"step": 1, "model_config": asdict(TINY), "G_AB": Payload(marker),
                "model.0.weight": torch.zeros(1)}, pth)
    raw = folder / "evil.pkl"
    raw.write_bytes(pickle.dumps({"step": 1, "model_config": asdict(TINY), "G_AB": Payload(marker)}, protocol=2))
    return marker, {"zip": pth, "pickle": raw}


def test_the_payload_really_runs_code_when_unpickled(tmp_path):
    marker, files = hostile_files(tmp_path)
    torch.load(files["zip"], weights_only=False)  # what a careless loader does
    assert marker.exists()


@pytest.mark.parametrize("kind", ["zip", "pickle"])
def test_hostile_pickles_are_refused_in_the_package(tmp_path, kind):
    from cyclegan.convert import read_state_dict
    marker, files = hostile_files(tmp_path)
    path = files[kind]
    folder = tmp_path / "model"
    CycleGAN(TINY).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(path.read_bytes())
    for load, source, named in ((load_checkpoint, path, path), (read_state_dict, path, path),
                                (CycleGAN.from_pretrained, folder, folder / "model.safetensors")):
        with pytest.raises(ValueError) as error:
            load(source)
        assert str(error.value).startswith(f"{named}: ") and "\n" not in str(error.value)
    assert not marker.exists()


def test_hostile_pickles_are_refused_by_the_commands(tmp_path):
    marker, files = hostile_files(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(files["zip"].read_bytes())
    result = run(["train.py", "--resume", str(run_dir), "--max-steps", "2"])
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {run_dir / 'checkpoint.pt'}: not a readable training checkpoint")
    assert result.stderr.count("\n") == 1
    result = run(["-m", "cyclegan.convert", "--a2b", str(files["zip"]), "--b2a", str(files["zip"]),
                  "--out", str(tmp_path / "converted")])
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {files['zip']}: cannot be read as a state dict")
    assert result.stderr.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "converted").exists()


def edit_config(**changes):
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return edit


def wider_weights(folder: Path) -> None:  # weights of an ngf=16 model under a config that says ngf=8
    with tempfile.TemporaryDirectory() as tmp:
        wide = CycleGAN(ModelConfig(ngf=16, n_blocks=2)).save_pretrained(tmp)
        (folder / "model.safetensors").write_bytes((wide / "model.safetensors").read_bytes())


def cut(folder: Path, keep: int) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:keep])


BROKEN_FOLDERS = [
    ("truncated weights", lambda f: cut(f, 4000), "model.safetensors: cannot be read as safetensors"),
    ("empty weights", lambda f: cut(f, 0), "model.safetensors: cannot be read as safetensors"),
    ("corrupt header", lambda f: (f / "model.safetensors").write_bytes(
        b"\xff" * 8 + (f / "model.safetensors").read_bytes()[8:]), "model.safetensors: cannot be read as safetensors"),
    ("wrong shapes", wider_weights, "model.safetensors: does not match"),
    ("config lies about ngf", edit_config(ngf=100_000), "model.safetensors: does not match"),  # allocates nothing
    ("config lies about blocks", edit_config(n_blocks=3), "model.safetensors: does not match"),
    ("missing ngf", edit_config(ngf=None), "config.json: missing field(s) ngf"),
    ("ngf a string", edit_config(ngf="8"), "config.json: ngf='8' is not a valid size"),
    ("negative blocks", edit_config(n_blocks=-1), "config.json: n_blocks=-1 is not a valid size"),
    ("affine_norm not a bool", edit_config(affine_norm="yes"), "config.json: affine_norm='yes' is not true or false"),
    ("config not JSON", lambda f: (f / "config.json").write_text("{ngf: 8"), "config.json: not valid JSON"),
    ("config a list", lambda f: (f / "config.json").write_text("[8, 2]"), "config.json: expected a JSON object"),
    ("no config", lambda f: (f / "config.json").unlink(), ": model folder has no config.json"),
]


@pytest.mark.parametrize("case", BROKEN_FOLDERS, ids=[c[0] for c in BROKEN_FOLDERS])
def test_broken_model_folders_are_errors_naming_the_file(tmp_path, case):
    _, damage, message = case
    folder = CycleGAN(ModelConfig(ngf=8, n_blocks=2)).save_pretrained(tmp_path / "model")
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        CycleGAN.from_pretrained(folder)
    assert str(error.value).startswith(str(folder)) and message in str(error.value)
    assert "\n" not in str(error.value) and len(str(error.value)) < 600


# ---- the app under load ---------------------------------------------------------------------

def server_pid(url: str) -> int:
    """The app.py process serving `url`: the child of this process started with that port."""
    port = url.rsplit(":", 1)[1].strip("/")
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"GRADIO_SERVER_PORT={port}".encode() in f.read().split(b"\0"):
                    return int(pid)
    raise LookupError(f"no child process serves {url}")


def rss_mb(pid: int) -> float:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024


CLIENTS, REQUESTS, RSS_TOLERANCE_MB, FD_TOLERANCE = 8, 10, 40, 8


def test_concurrent_clients_are_all_answered_and_memory_settles(server, tmp_path):
    from gradio_client import Client, handle_file
    pid = server_pid(server)
    inputs = []
    for k in range(CLIENTS):  # a different picture per client: an answer for another client would show
        inputs.append(tmp_path / f"client{k}.png")
        noise(64, 64, seed=k).save(inputs[-1])

    def client_session(k: int, requests: int) -> int:
        client, answered = Client(server, verbose=False), 0
        for j in range(requests):
            result = client.predict(handle_file(str(inputs[k])), ("A2B", "B2A")[j % 2], j % 3 != 0,
                                    api_name="/translate")
            echoed = np.asarray(Image.open(result[0]).convert("RGB"))
            assert np.array_equal(echoed, np.asarray(Image.open(inputs[k]))), f"client {k} got another's answer"
            assert Image.open(result[1]).size == (64, 64)
            answered += 1
        return answered

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client_session, range(CLIENTS), [1] * CLIENTS))  # warm up: threads, buffers, caches
        before, fds_before = rss_mb(pid), len(os.listdir(f"/proc/{pid}/fd"))
        started = time.monotonic()
        futures = [pool.submit(client_session, k, REQUESTS) for k in range(CLIENTS)]
        done, not_done = wait(futures, timeout=150)
        assert not not_done, f"{len(not_done)} clients still waiting after 150 s"
        answered = sum(f.result() for f in done)  # re-raises a client's failure
    seconds = time.monotonic() - started
    assert answered == CLIENTS * REQUESTS
    time.sleep(1)
    after, fds_after = rss_mb(pid), len(os.listdir(f"/proc/{pid}/fd"))
    print(f"{answered} requests in {seconds:.1f} s; server RSS {before:.0f} -> {after:.0f} MB, fds {fds_before} -> "
          f"{fds_after}")
    assert after - before < RSS_TOLERANCE_MB, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
    assert fds_after - fds_before <= FD_TOLERANCE, f"open files grew from {fds_before} to {fds_after}"


def upload(url: str, name: str, data: bytes) -> tuple[int, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_uploads_over_the_size_limit_are_refused(server, client, tmp_path):
    from gradio_client import handle_file
    limit = json.load(urllib.request.urlopen(f"{server}/config", timeout=30))["max_file_size"]
    assert limit == 25 * 2 ** 20  # CYCLEGAN_MAX_FILE_SIZE's default, 25mb
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(limit))
    # The server itself refuses it (a client that skips the check below gets this answer) ...
    status, text = upload(server, "huge.png", huge.read_bytes())
    assert status == 413 and f"maximum allowed size of {limit} bytes" in text
    status, _ = upload(server, "small.png", encode(two_tone(), "PNG"))
    assert status == 200
    # ... and gradio_client says so before sending it.
    with pytest.raises(ValueError, match=f"huge.png exceeds the maximum file size of {limit} bytes"):
        client.predict(handle_file(str(huge)), "A2B", True, api_name="/translate")
