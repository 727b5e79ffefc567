"""The cyclegan-kit demo: translate an image or a video with G, compare x and G(x) on a slider, see the
reconstruction F(G(x)), and compare the checkpoints trained with and without identity loss.

`python app.py` serves it on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT change that).
It shows the bundled weights/ (offline) and the models listed in CYCLEGAN_MODELS, and only those.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no analytics calls
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # nor from huggingface_hub, which gradio imports
# Before torch is imported: OpenMP threads that sleep between operations, instead of spinning, leave
# the cores to the web server's threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr
import numpy as np
import torch
from gradio.utils import get_upload_folder
from PIL import Image

from cyclegan import CycleGAN, backends, zerogpu
from cyclegan.data import ImageError, load_rgb
from cyclegan.files import DownloadError, one_line, write_atomic
from cyclegan.inference import cpu_precision
from cyclegan.translate import AUTHORS, VideoError, load_model as load_any, translate_video as video_to_video, video_size
import train_tab
from train_tab import Refusal

ROOT = Path(__file__).resolve().parent
BUNDLED_NAME = "horse2zebra preview (bundled)"
BUNDLED = {True: str(ROOT / "weights" / "horse2zebra-identity"), False: str(ROOT / "weights" / "horse2zebra-no-identity")}
EXAMPLES = ROOT / "examples"
# The static page of `python -m cyclegan.export_web ... --out site` (README: "Translate in the visitor's browser").
WEB_DIR = Path(os.environ.get("CYCLEGAN_WEB_DIR", ROOT / "site")).resolve()
HAS_WEB = (WEB_DIR / "index.html").is_file()
MAX_SIDE = int(os.environ.get("CYCLEGAN_MAX_SIDE", 1024))
MAX_PIXELS = int(os.environ.get("CYCLEGAN_MAX_PIXELS", 40_000_000))
MAX_VIDEO_PIXELS = int(os.environ.get("CYCLEGAN_MAX_VIDEO_PIXELS", 100_000_000))
CONCURRENCY = int(os.environ.get("CYCLEGAN_CONCURRENCY", 1))
# The images' models run in threads of their own, the same ones each time, rather than in whichever of
# Gradio's worker threads takes the request: each thread that calls torch gets its own OpenMP team.
MODEL_THREADS = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="model")
ALLOW_ANY = os.environ.get("CYCLEGAN_ALLOW_ANY_MODEL") == "1"  # free text: Hub ids and server folders (local use)
TRAINING = train_tab.enabled()  # the Train tab (CYCLEGAN_TRAINING=1), whose runs' models join the list
# Gradio's limit is one for all uploads: raised to the Train tab's zip limit there, the images and videos
# keep theirs (checked in `check_upload`).
MAX_FILE_SIZE = train_tab.parse_size(os.environ.get("CYCLEGAN_MAX_FILE_SIZE", "25mb"))
MAX_UPLOAD = max(MAX_FILE_SIZE, train_tab.parse_size(os.environ.get("CYCLEGAN_MAX_ZIP_SIZE", "2gb"))) if TRAINING \
    else MAX_FILE_SIZE
SERVER_NAME = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
if __name__ == "__main__" and (refusal := train_tab.refuse_exposure(SERVER_NAME)):
    sys.exit(f"app.py: {refusal}")  # said before any model loads
# Cached examples and translated videos live for the life of the process: a cache left by an older
# version of the app or of the weights is never served.
WORK = tempfile.TemporaryDirectory(prefix="cyclegan-app-")
os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(Path(WORK.name) / "examples"))


class UploadedImage(gr.Image):
    """An image input whose own preprocessing never rejects a file: a broken or oversized upload
    reaches `translate`, which answers with a message naming what is wrong."""

    # Render with gr.Image's frontend: without this the page asks for an "uploadedimage" component
    # that does not exist and the upload box never appears (the API is unaffected).
    is_template = True

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:
            return None if payload is None else payload.path


def label(source: str) -> str:
    """How a source is named on the page: a folder by its name, never by its path on the server."""
    if source.startswith(AUTHORS):
        return f"{source[len(AUTHORS):]} (the CycleGAN authors' weights)"
    return Path(source).name if Path(source).is_dir() else source


def configured_models() -> dict[str, dict[bool, str]]:
    """{display name: {identity: source}}: the entries of CYCLEGAN_MODELS (comma-separated; each a Hub
    repo id, a folder or authors:NAME, or a pair `with-identity|without-identity`), then the bundled pair."""
    models = {}
    for entry in filter(None, (e.strip() for e in os.environ.get("CYCLEGAN_MODELS", "").split(","))):
        parts = [p.strip() for p in entry.split("|")]
        if len(parts) > 2 or not all(parts):
            print(f"CYCLEGAN_MODELS: ignoring {entry!r}: expected one model or a pair a|b", file=sys.stderr)
            continue
        models[" / ".join(map(label, parts))] = {True: parts[0], False: parts[-1]}
    return {**models, BUNDLED_NAME: BUNDLED}


@functools.lru_cache(maxsize=8)
def load_model(source: str) -> CycleGAN:
    """Models are loaded once per source and kept; switching the toggle does not touch the disk."""
    return load_any(source, device=zerogpu.device())


def get_model(choice: str | None, identity: bool) -> tuple[CycleGAN, str]:
    """The model a request names, and how to name it. Only configured names are served (unless
    CYCLEGAN_ALLOW_ANY_MODEL=1), and no message says anything about the server's files."""
    choice = choice or DEFAULT
    if TRAINING and choice.startswith(train_tab.RUN_PREFIX):  # a model trained in the Train tab
        return train_tab.run_model(choice)
    entry = MODELS.get(choice)
    if entry is None and not ALLOW_ANY:
        raise Refusal(f"Unknown model {choice!r}: choose one of {', '.join(map(repr, MODELS))}")
    source = entry[bool(identity)] if entry else choice
    try:
        return load_model(source), label(source)
    except DownloadError as e:
        raise Refusal(f"The CycleGAN authors' weights could not be downloaded ({one_line(e, 200)}); "
                       f"the other models still work.") from None
    except (OSError, ValueError) as e:
        print(f"cannot load {source}: {one_line(e)}", file=sys.stderr)
        detail = f": {one_line(e, 300)}" if ALLOW_ANY else "; the other models still work"
        raise Refusal(f"Model {choice!r} cannot be loaded{detail}") from None


def check_upload(path, name: str) -> None:
    """The images' and videos' own size limit, where Gradio's is raised for the Train tab's zips."""
    if MAX_UPLOAD > MAX_FILE_SIZE and isinstance(path, str) and os.path.getsize(path) > MAX_FILE_SIZE:
        raise Refusal(f"{name} is {os.path.getsize(path) / 2 ** 20:.0f} MB, above the limit of "
                       f"{MAX_FILE_SIZE / 2 ** 20:.0f} MB")


def heat_map(x: Image.Image, rec: Image.Image) -> Image.Image:
    """|x - F(G(x))| averaged over the channels, in a black-red-yellow-white colour ramp."""
    error = np.abs(np.asarray(x, np.float32) - np.asarray(rec, np.float32)).mean(axis=2) / 255.0
    e = np.clip(error * 4, 0, 1)  # a mean error of 0.25 is already fully saturated
    rgb = np.stack([np.clip(3 * e, 0, 1), np.clip(3 * e - 1, 0, 1), np.clip(3 * e - 2, 0, 1)], axis=2)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def cycle(net: CycleGAN, x: Image.Image, direction: str, large: str) -> tuple[Image.Image, Image.Image]:
    return net.cycle(x, direction, max_side=MAX_SIDE, large=large)


def translate_frames(net: CycleGAN, video: str, out: Path, direction: str, progress) -> Path:
    return video_to_video(net, video, out, direction, max_side=MAX_SIDE, max_frame_pixels=MAX_VIDEO_PIXELS,
                          progress=progress)


def frame_pixels(video: str) -> int:
    try:
        frames, width, height, _ = video_size(video)
    except VideoError:
        return 0  # translate_video then says what is wrong
    return frames * width * height


# On ZeroGPU a model call holds a GPU for a time estimated from its pixels; elsewhere these are the
# functions themselves.
cycle = zerogpu.gpu(cycle, duration=lambda *_: zerogpu.seconds())
translate_frames = zerogpu.gpu(translate_frames, duration=lambda net, video, *_: zerogpu.seconds(frame_pixels(video)))


def on_device(fn, *args):
    """`fn(*args)` in the model's thread; on ZeroGPU in the request's own thread, whose Gradio context
    `spaces` needs to grant it a GPU."""
    return fn(*args) if zerogpu.active() else MODEL_THREADS.submit(fn, *args).result()


def run_cycle(image: str | None, direction: str, identity: bool, model: str | None, large: str):
    """x, G(x), F(G(x)) and the one-line summary of a request, or a gr.Error that says what is wrong."""
    if image is None:
        raise Refusal("Upload an image first.")
    if direction not in ("A2B", "B2A"):
        raise Refusal(f"direction must be 'A2B' or 'B2A', not {direction!r}")
    name = Path(image).name if isinstance(image, str) else "image"
    check_upload(image, name)
    try:
        x = load_rgb(image, max_pixels=MAX_PIXELS)
    except ImageError as e:
        raise Refusal(f"Cannot use {name}: {str(e).split(': ', 1)[-1]}") from None
    net, name = get_model(model, identity)
    start = time.perf_counter()
    fake, rec = on_device(cycle, net, x, direction, large)
    seconds = time.perf_counter() - start
    error = float(np.abs(np.asarray(x, np.float32) - np.asarray(rec, np.float32)).mean() / 127.5)
    src, dst = net.domains(direction)
    summary = (f"**{src} → {dst}** with `{name}` · {x.width}×{x.height} px · cycle error mean |x − F(G(x))| = "
               f"**{error:.4f}** (images in [-1, 1]) · {seconds:.2f} s")
    return x, fake, rec, summary


# How each kind of output is encoded: lossless PNG for the API, at zlib's fastest level (a 256 px photo:
# 4.0 ms against the default level's 14.3, 3 % larger); for the page, JPEG at a quality where a 256 px
# G(x) looks the same, 0.3 ms and a fifth of the PNG's size.
ENCODINGS = {"png": {"format": "PNG", "compress_level": 1}, "jpg": {"format": "JPEG", "quality": 92, "subsampling": 0}}
CACHE = Path(get_upload_folder())
# A result stays servable this long after its last use; then `cached` deletes it (Gradio's own delete_cache
# knows only the files it wrote: uploads). Without it a Space's disk fills with every visitor's results.
CACHE_SECONDS = int(os.environ.get("CYCLEGAN_CACHE_SECONDS", 3600))
WRITTEN: dict[Path, float] = {}  # the results this process wrote: path -> time of last use
PRUNED = [time.monotonic()]  # when they were last pruned
CACHE_LOCK = threading.Lock()


def cached(image: Image.Image, kind: str) -> str:
    """`image` encoded once into Gradio's cache, named by its content as Gradio names its own files; the
    path, which Gradio then serves as it is (several outputs showing one image share the one file). Every
    few minutes the results unused for CACHE_SECONDS are deleted."""
    buffer = io.BytesIO()
    image.save(buffer, **ENCODINGS[kind])
    data = buffer.getvalue()
    path = CACHE / hashlib.sha256(data).hexdigest() / f"image.{kind}"
    with CACHE_LOCK:
        now = time.monotonic()
        WRITTEN[path] = now
        if not path.is_file():  # written atomically: a concurrent request never reads half of it
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, durable=False)  # a cache: a crash may lose it
        if now - PRUNED[0] > min(CACHE_SECONDS, 300):
            PRUNED[0] = now
            for old in [p for p, used in WRITTEN.items() if now - used > CACHE_SECONDS]:
                del WRITTEN[old]
                old.unlink(missing_ok=True)
                try:
                    old.parent.rmdir()  # its folder, named by the content, once empty
                except OSError:
                    pass
    return str(path)


def translate(image: str | None, direction: str = "A2B", identity: bool = True, model: str | None = None,
              large: str = "tile", show_heat_map: bool = False):
    """Translate an image with G and back with F.

    Parameters:
        image: the image to translate (any format Pillow reads; alpha is composited on white)
        direction: "A2B" (e.g. horse to zebra) or "B2A"
        identity: for a pair of checkpoints, the one trained with identity loss (True) or without (False)
        model: one of the models the page lists (default: the first)
        large: images longer than the app's size limit are translated in "tile"s or "downscale"d
        show_heat_map: also return the cycle error |x - F(G(x))| as a heat map
    Returns:
        x, G(x), F(G(x)), the heat map (or None), (x, G(x)) for the slider, and a one-line summary
    """
    x, fake, rec, summary = run_cycle(image, direction, identity, model, large)
    return x, fake, rec, heat_map(x, rec) if show_heat_map else None, (x, fake), summary


# /translate as served: translate's images as PNG, x and G(x) each encoded once for their own outputs and
# the slider's (Gradio would encode each output anew). The API page shows translate's signature and doc.
@functools.wraps(translate)
def translate_png(*args, **kwargs):
    x, fake, rec, heat, _, summary = translate(*args, **kwargs)
    x, fake = cached(x, "png"), cached(fake, "png")
    return x, fake, cached(rec, "png"), None if heat is None else cached(heat, "png"), (x, fake), summary


def show(image: str | None, direction: str = "A2B", identity: bool = True, model: str | None = None,
         large: str = "tile", show_heat_map: bool = False):
    """The page's own event: what it shows of `translate`, (x, G(x)) for the slider, F(G(x)), the heat map
    (or None) and the summary, in JPEG for display (the API's PNGs of the same images cost ~75 ms more)."""
    x, fake, rec, summary = run_cycle(image, direction, identity, model, large)
    heat = cached(heat_map(x, rec), "jpg") if show_heat_map else None
    return (cached(x, "jpg"), cached(fake, "jpg")), cached(rec, "jpg"), heat, summary


def translate_example(image: str, direction: str, identity: bool):
    """The slider, F(G(x)) and the summary: the outputs an example shows (a cached example cannot hold
    the empty heat map)."""
    pair, rec, _, summary = show(image, direction, identity)
    return pair, rec, summary


def translate_video(video: str | None, direction: str = "A2B", identity: bool = True, model: str | None = None,
                    progress=gr.Progress()) -> str:
    """Translate a video frame by frame with G into an H.264 mp4 of the same size and frame rate (no sound).

    Parameters:
        video: the video to translate (mp4, mov, webm, mkv, avi, ...)
        direction: "A2B" (e.g. horse to zebra) or "B2A"
        identity: for a pair of checkpoints, the one trained with identity loss (True) or without (False)
        model: one of the models the page lists (default: the first)
    Returns:
        the translated mp4
    """
    if video is None:
        raise Refusal("Upload a video first.")
    if direction not in ("A2B", "B2A"):
        raise Refusal(f"direction must be 'A2B' or 'B2A', not {direction!r}")
    check_upload(video, Path(video).name)
    net, _ = get_model(model, identity)
    out = Path(tempfile.mkdtemp(dir=WORK.name)) / f"{Path(video).stem}-{direction}.mp4"
    try:
        return str(translate_frames(net, video, out, direction,
                                    lambda done, total: progress((done, total), desc="frames", unit="frames")))
    except VideoError as e:  # the upload's name, not its path on the server
        raise Refusal(str(e).replace(str(video), Path(video).name)) from None


def about(models: dict[str, dict[bool, str]]) -> str:
    """The models on offer as a small table: how they were made and their FID/KID, from config.json."""
    rows = ["| model | checkpoint | generator | trained | FID A→B / B→A | KID A→B / B→A | arithmetic here |",
            "|---|---|---|---|---|---|---|"]
    for name, entry in models.items():
        for identity, source in entry.items() if entry[True] != entry[False] else [(None, entry[True])]:
            which = "" if identity is None else "with identity loss" if identity else "without"
            if source.startswith(AUTHORS) and source not in LOADED:
                rows.append(f"| {name} | {which} | downloaded on first use | by the authors | | | |")
                continue
            try:
                m = load_model(source)
            except (OSError, ValueError):
                rows.append(f"| {name} | {which} | could not be loaded | | | | |")
                continue
            c, info = m.config, m.info
            a, b = c.domain_A, c.domain_B
            metric = lambda kind: " / ".join(f"{info.get('metrics', {}).get(f'{kind} {s}→{t}', '–')}" for s, t in ((a, b), (b, a)))
            trained = (f"{info['steps']:,} steps at {info.get('image_size', '?')} px" if info.get("steps") else
                       "by the authors" if "converted_from" in info.get("training", {}) else "")
            # precision "auto" on the CPU: timed once per network shape (the first request would otherwise pay it)
            arithmetic = cpu_precision(m.G_AB) if next(m.parameters()).device.type == "cpu" else "auto"
            rows.append(f"| {name} | {which} | ngf {c.ngf}, {c.n_blocks} blocks | {trained} | {metric('FID')} | "
                        f"{metric('KID')} | {arithmetic} |")
    return ("\n".join(rows) + "\n\nFID and KID against the real test images of the target domain (lower is "
            "better); the published CycleGAN reaches FID 77 on horse → zebra. The arithmetic is what precision "
            "\"auto\" measured fastest on this server's CPU. See docs/results.md and docs/performance.md.")


MODELS = configured_models()
LOADED: set[str] = set()
for _name, _entry in MODELS.items():  # loaded once, before the first request (not the authors' weights)
    for _source in {s for s in _entry.values() if not s.startswith(AUTHORS)}:
        try:
            load_model(_source)
            LOADED.add(_source)
        except (OSError, ValueError) as _e:
            print(f"cannot load {_source}: {one_line(_e)}", file=sys.stderr)
DEFAULT = next((n for n, e in MODELS.items() if all(s in LOADED for s in e.values())), BUNDLED_NAME)

# A short header, and the examples as a grid of thumbnails (3 by 2) instead of a tall table, so that
# the upload box, the controls and the examples fit the first screen of a phone.
# The slider's images are as wide as the slider and at most max_height (500 px) tall, more than its box:
# object-fit then enlarged them past the box, which cut them off, and shifted x and G(x) apart.
# The reconstruction and the heat map fill their boxes as the slider does (Gradio's images only shrink:
# a 256 px F(G(x)) beside a 330 px G(x) looked like another picture).
# The Train tab's number fields: inputs on one line, also where a label wraps (a phone's "steps (0: the recipe's)").
CSS = """
.compact-header h1 { margin: 0 0 4px 0 !important; font-size: 1.4em !important; }
.compact-header p { margin: 0 !important; }
#examples thead { display: none; }
#examples tbody { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6px; }
#examples tr { display: flex; flex-direction: column; align-items: center; padding: 0 !important; }
#examples .container { width: 64px !important; height: 64px !important; }
#examples img { width: 100% !important; height: 100% !important; object-fit: cover; }
#examples td { padding: 2px !important; border: none !important; text-align: center; font-size: 0.85em; white-space: nowrap; }
#settings, #settings > .form { flex-wrap: wrap; }
#settings .block { flex: 1 1 140px; min-width: 140px !important; }
#result-slider img { max-height: 100% !important; }
#result-slider { scroll-margin-top: 8px; }
#reconstruction img, #heat-map img { object-fit: contain !important; }
#train-numbers .block > label { height: 100%; display: flex; flex-direction: column; justify-content: space-between; }
"""


# On a click on Translate or an example: the result's box into view where it is not all on the screen (a
# phone, where it is below the examples), while the model runs.
SCROLL_TO_RESULT = """() => {
    const result = document.getElementById("result-slider"), box = result.getBoundingClientRect();
    if (box.top < 0 || box.bottom > window.innerHeight) result.scrollIntoView({block: "start"});
}"""


def build_demo() -> gr.Blocks:
    a, b = load_model(BUNDLED[True]).domains("A2B") if BUNDLED[True] in LOADED else ("A", "B")
    # delete_cache: the visitors' uploads that Gradio wrote, an hour after they came, checked every 10 minutes
    with gr.Blocks(title="CycleGAN", analytics_enabled=False, delete_cache=(600, CACHE_SECONDS)) as demo:
        gr.Markdown("# CycleGAN: horse ↔ zebra\nG translates x; F brings G(x) back.",
                    elem_classes="compact-header")
        if HAS_WEB:
            # Gradio's file route sends no COOP/COEP headers, so the page runs WASM on one thread here.
            gr.Markdown(f"[Run it in your browser](/gradio_api/file={quote(str(WEB_DIR / 'index.html'))}): "
                        "the same models on your own device; your image is not uploaded.")
        # One row for the settings, wrapping where they do not fit (a phone, with the model list shown): on
        # a laptop the examples' second row then fits on the first screen.
        with gr.Row(equal_height=True, elem_id="settings"):
            direction = gr.Radio([(f"{a} → {b}", "A2B"), (f"{b} → {a}", "B2A")], value="A2B", label="Direction",
                                 min_width=160)
            identity = gr.Checkbox(value=True, label="trained with identity loss", min_width=150)
            # With the Train tab, its runs' models join the list as they save (and /translate takes their names).
            model = gr.Dropdown(list(MODELS), value=DEFAULT, label="Model", allow_custom_value=ALLOW_ANY or TRAINING,
                                min_width=150, filterable=ALLOW_ANY, visible=len(MODELS) > 1 or ALLOW_ANY or TRAINING)
        # The page's results, rendered beside the upload box: the examples there need them as outputs. The
        # page shows them as JPEG (`show`); the API's PNGs are outputs of their own, never shown.
        # At least 250 px wide: side by side on a laptop, one under the other on a phone (165 px each cut
        # their labels off).
        slider = gr.ImageSlider(label="x | G(x): drag to compare", type="pil", format="jpeg", height=360,
                                min_width=250, elem_id="result-slider", render=False)
        out_rec = gr.Image(label="reconstruction F(G(x))", type="pil", format="jpeg", height=360, min_width=250,
                           elem_id="reconstruction", render=False)
        # Shown only when asked for: an empty box beside the results looked broken.
        out_heat = gr.Image(label="cycle error |x − F(G(x))|", type="pil", format="jpeg", height=360, min_width=250,
                            visible=False, elem_id="heat-map", render=False)
        summary = gr.Markdown(render=False)
        with gr.Tab("Image"):
            # On a laptop the result is beside the input, on the first screen; on a phone the columns stack
            # and a click scrolls down to it (SCROLL_TO_RESULT).
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    image = UploadedImage(label="Image", type="filepath", image_mode=None, height=180,
                                          sources=["upload", "clipboard", "webcam"])
                    button = gr.Button("Translate", variant="primary")
                    rows = [[str(p), "A2B" if p.name.startswith(a) else "B2A", not p.stem.endswith("3")]
                            for p in sorted(EXAMPLES.glob("*.jpg"))]
                    examples = gr.Examples(rows, [image, direction, identity], [slider, out_rec, summary],
                                           fn=translate_example, cache_examples=True, cache_mode="lazy",
                                           label="Examples (click one)", examples_per_page=6, visible_columns=[0, 1],
                                           elem_id="examples")
                with gr.Column(scale=2, min_width=280):
                    with gr.Row():
                        for component in (slider, out_rec, out_heat):
                            component.render()
                    summary.render()
            # /translate, the API: x and G(x) as files of their own and on the slider, F(G(x)), the heat map,
            # all PNG; the same labels as the page's. Its button is never shown: the page uses `show`.
            api_outputs = [gr.Image(label="input x", type="pil", format="png", visible=False),
                           gr.Image(label="translation G(x)", type="pil", format="png", visible=False),
                           gr.Image(label=out_rec.label, type="pil", format="png", visible=False),
                           gr.Image(label=out_heat.label, type="pil", format="png", visible=False),
                           gr.ImageSlider(label=slider.label, type="pil", format="png", visible=False), summary]
            api_button = gr.Button(visible=False)
        with gr.Tab("Video"):
            with gr.Row():
                video = gr.Video(label="Video", sources=["upload"])
                video_out = gr.Video(label="translated video G(x)", format=None)
            video_button = gr.Button("Translate video", variant="primary")
            gr.Markdown(f"Frame by frame, at the video's size and frame rate, without sound; up to "
                        f"{MAX_VIDEO_PIXELS / 1e6:g} million frame pixels (e.g. "
                        f"{MAX_VIDEO_PIXELS / (640 * 480 * 30):.0f} s of 640×480 at 30 frames/s).")
        if TRAINING:
            refresh, seen, shown = train_tab.build(model, list(MODELS))
            demo.load(refresh, seen, shown, api_visibility="private", queue=False)
        with gr.Accordion("About these models", open=False):
            gr.Markdown(about(MODELS))
        with gr.Accordion("More options", open=False):
            large = gr.Radio([("translate in tiles", "tile"), ("downscale", "downscale")], value="tile",
                             label=f"Images larger than {MAX_SIDE} px")
            show_heat_map = gr.Checkbox(value=False, label="show the cycle error heat map")
        show_heat_map.change(lambda on: gr.Image(visible=on), show_heat_map, out_heat, queue=False,
                             api_visibility="private")
        # The toggle picks one of a pair; a single model has nothing to switch to.
        model.change(lambda m: gr.Checkbox(interactive=m not in MODELS or MODELS[m][True] != MODELS[m][False]),
                     model, identity, queue=False, api_visibility="private")
        inputs = [image, direction, identity, model, large, show_heat_map]
        button.click(show, inputs, [slider, out_rec, out_heat, summary], api_name="show",
                     api_visibility="undocumented", concurrency_id="model", concurrency_limit=CONCURRENCY)
        for trigger in (button.click, examples.dataset.click):
            trigger(None, js=SCROLL_TO_RESULT)
        # The whole docstring on the API page: Gradio shows only its first paragraph, without the parameters.
        api_button.click(translate_png, inputs, api_outputs, api_name="translate",
                         api_description=" ".join(translate.__doc__.split()), concurrency_id="model",
                         concurrency_limit=CONCURRENCY)
        video_button.click(translate_video, [video, direction, identity, model], video_out, api_name="translate_video",
                           api_description=" ".join(translate_video.__doc__.split()), concurrency_limit=CONCURRENCY)
    return demo


if __name__ == "__main__":
    # SIGTERM (a Space's or a test's stop): WORK removed, then out at once (a fast-path compile running in
    # its child process ends with this one).
    signal.signal(signal.SIGTERM, lambda *_: (WORK.cleanup(), os._exit(0)))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // CONCURRENCY))
    # System fonts: the page then needs no web fonts, offline included, and renders every glyph.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    demo = build_demo()
    # Eager serves from the first request; the fast path, where it is faster, takes over once compiled.
    try:
        backend = "eager" if zerogpu.active() else backends.backend_setting()
    except ValueError as e:
        print(f"{e}; translating eager", file=sys.stderr)
        backend = "eager"
    backends.start([g for s in sorted(LOADED) for g in (load_model(s).G_AB, load_model(s).G_BA)], backend)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64).launch(
        theme=theme, css=CSS,
        server_name=SERVER_NAME,
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(ROOT / "weights"), str(EXAMPLES), *([str(WEB_DIR)] if HAS_WEB else [])],
    )
