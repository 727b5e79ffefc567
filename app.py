"""The cyclegan-kit demo: upload an image, translate it with G, see G(x) and the reconstruction
F(G(x)), and compare the checkpoints trained with and without identity loss.

`python app.py` serves it on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT change that);
CYCLEGAN_MODEL=<Hub repo id or folder> picks the default model, and the bundled weights/ are used offline.
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no analytics calls
# Before torch is imported: OpenMP threads that sleep between operations, instead of spinning, leave
# the cores to NNPACK's convolutions (the generators' fast path) and to the web server's threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr
import numpy as np
import torch
from PIL import Image

from cyclegan import CycleGAN
from cyclegan.data import ImageError, load_rgb

ROOT = Path(__file__).resolve().parent
BUNDLED = {True: ROOT / "weights" / "horse2zebra-identity", False: ROOT / "weights" / "horse2zebra-no-identity"}
BUNDLED_NAME = "horse2zebra preview (bundled)"
MAX_SIDE = int(os.environ.get("CYCLEGAN_MAX_SIDE", 1024))
MAX_PIXELS = int(os.environ.get("CYCLEGAN_MAX_PIXELS", 40_000_000))
CONCURRENCY = int(os.environ.get("CYCLEGAN_CONCURRENCY", 1))


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


@functools.lru_cache(maxsize=8)
def load_model(source: str) -> CycleGAN:
    """Models are loaded once per source and kept; switching the toggle does not touch the disk."""
    return CycleGAN.from_pretrained(source)


def default_sources() -> tuple[dict[bool, str], str]:
    """The checkpoints to show ({identity: source}) and a note on where they came from."""
    wanted = os.environ.get("CYCLEGAN_MODEL", "").strip()
    if wanted:
        try:
            load_model(wanted)
            return {True: wanted, False: wanted}, f"Model: `{wanted}` (from CYCLEGAN_MODEL)."
        except (OSError, ValueError) as e:
            note = f"Could not load CYCLEGAN_MODEL={wanted} ({e}); showing the bundled preview models instead."
            return {k: str(v) for k, v in BUNDLED.items()}, note
    return {k: str(v) for k, v in BUNDLED.items()}, ""


def heat_map(x: Image.Image, rec: Image.Image) -> Image.Image:
    """|x - F(G(x))| averaged over the channels, in a black-red-yellow-white colour ramp."""
    error = np.abs(np.asarray(x, np.float32) - np.asarray(rec, np.float32)).mean(axis=2) / 255.0
    e = np.clip(error * 4, 0, 1)  # a mean error of 0.25 is already fully saturated
    rgb = np.stack([np.clip(3 * e, 0, 1), np.clip(3 * e - 1, 0, 1), np.clip(3 * e - 2, 0, 1)], axis=2)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def translate(image: str | None, direction: str = "A2B", identity: bool = True, source: str = "",
              large: str = "tile", show_heat_map: bool = False):
    """x, G(x), F(G(x)), the error heat map and a summary, for the API and the page alike."""
    if image is None:
        raise gr.Error("Upload an image first.")
    if direction not in ("A2B", "B2A"):
        raise gr.Error(f"direction must be 'A2B' or 'B2A', not {direction!r}")
    name = Path(image).name if isinstance(image, str) else "image"
    try:
        x = load_rgb(image, max_pixels=MAX_PIXELS)
    except ImageError as e:
        raise gr.Error(f"Cannot use {name}: {str(e).split(': ', 1)[-1]}") from None
    source = (source or "").strip() or SOURCES[bool(identity)]
    try:
        model = load_model(source)
    except (OSError, ValueError) as e:
        raise gr.Error(f"Cannot load model {source}: {e}") from None
    start = time.perf_counter()
    fake, rec = model.cycle(x, direction, max_side=MAX_SIDE, large=large)
    seconds = time.perf_counter() - start
    error = float(np.abs(np.asarray(x, np.float32) - np.asarray(rec, np.float32)).mean() / 127.5)
    c = model.config
    src, dst = (c.domain_A, c.domain_B) if direction == "A2B" else (c.domain_B, c.domain_A)
    summary = (f"**{src} → {dst}** with `{Path(source).name if Path(source).is_dir() else source}` · "
               f"{x.width}×{x.height} px · cycle error mean |x − F(G(x))| = **{error:.4f}** (images in [-1, 1]) · "
               f"{seconds:.2f} s")
    return x, fake, rec, heat_map(x, rec) if show_heat_map else None, summary


def describe(source: str) -> str:
    """What is shown: the model, how it was trained and how well it does, from its config.json."""
    try:
        model = load_model(source)
    except (OSError, ValueError) as e:
        return f"Model `{source}` could not be loaded: {e}"
    c, info = model.config, model.info
    training = info.get("training", {})
    lines = [f"**{Path(source).name if Path(source).is_dir() else source}**: {c.domain_A} ↔ {c.domain_B}, "
             f"ResNet generator ngf={c.ngf}, {c.n_blocks} blocks"]
    if info.get("steps"):
        lines.append(f"trained {info['steps']:,} steps ({info.get('epochs', '?')} epochs) at "
                     f"{info.get('image_size', '?')} px on {info.get('dataset', '?')}, "
                     f"λ_identity={training.get('lambda_identity', '?')}")
    metrics = info.get("metrics") or {}
    if metrics:
        lines.append(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    return " · ".join(lines)


SOURCES, SOURCE_NOTE = default_sources()

INTRO = """# CycleGAN: unpaired image-to-image translation
CycleGAN (Zhu et al., ICCV 2017) learns two generators, G: A → B and F: B → A, from two unpaired
sets of images. Adversarial losses make G(x) look like domain B; the cycle-consistency loss asks
F(G(x)) to give back x. An optional identity loss (G(y) ≈ y for y in B) keeps colours in place:
switch it below to compare the two checkpoints on the same image."""


def build_demo() -> gr.Blocks:
    models = [try_load(source) for source in SOURCES.values()]  # loaded once, before the first request
    a, b = (models[0].config.domain_A, models[0].config.domain_B) if models[0] else ("A", "B")
    with gr.Blocks(title="CycleGAN", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        if SOURCE_NOTE:
            gr.Markdown(f"*{SOURCE_NOTE}*")
        gr.Markdown("\n\n".join(f"- {'with' if k else 'without'} identity loss: {describe(v)}"
                                for k, v in SOURCES.items()))
        with gr.Row():
            image = UploadedImage(label="Image", type="filepath", image_mode=None,
                                  sources=["upload", "clipboard", "webcam"])
            with gr.Column():
                direction = gr.Radio([(f"{a} → {b}", "A2B"), (f"{b} → {a}", "B2A")], value="A2B",
                                     label="Direction")
                identity = gr.Checkbox(value=True, label="trained with identity loss")
                with gr.Accordion("More options", open=False):
                    source = gr.Textbox(value="", label="Other model: Hub repo id or local folder (empty: the default)",
                                        placeholder="user/cyclegan-horse2zebra")
                    large = gr.Radio([("translate in tiles", "tile"), ("downscale", "downscale")], value="tile",
                                     label=f"Images larger than {MAX_SIDE} px")
                    show_heat_map = gr.Checkbox(value=False, label="show the cycle error heat map")
                button = gr.Button("Translate", variant="primary")
        with gr.Row():
            out_x = gr.Image(label="input x", type="pil", format="png")
            out_fake = gr.Image(label="translation G(x)", type="pil", format="png")
            out_rec = gr.Image(label="reconstruction F(G(x))", type="pil", format="png")
            # Shown only when asked for: an empty full-width box under the results looked broken.
            out_heat = gr.Image(label="cycle error |x − F(G(x))|", type="pil", format="png", visible=False)
        summary = gr.Markdown()
        show_heat_map.change(lambda on: gr.Image(visible=on), show_heat_map, out_heat, queue=False,
                             api_visibility="private")
        examples = _example_images()
        if examples:
            gr.Examples(examples, inputs=[image, direction])
        button.click(translate, [image, direction, identity, source, large, show_heat_map],
                     [out_x, out_fake, out_rec, out_heat, summary], api_name="translate",
                     concurrency_limit=CONCURRENCY)
    return demo


def try_load(source: str) -> CycleGAN | None:
    try:
        return load_model(source)
    except (OSError, ValueError):
        return None


def _example_images() -> list[list[str]]:
    """Two test images per domain when a horse2zebra copy is at hand (the data sets are not shipped)."""
    for root in (ROOT / "datasets" / "horse2zebra", ROOT.parent / "shared" / "datasets" / "horse2zebra"):
        if (root / "testA").is_dir() and (root / "testB").is_dir():
            a = sorted((root / "testA").glob("*.jpg"))[:2]
            b = sorted((root / "testB").glob("*.jpg"))[:2]
            return [[str(p), "A2B"] for p in a] + [[str(p), "B2A"] for p in b]
    return []


if __name__ == "__main__":
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // CONCURRENCY))
    # System fonts: the page then needs no web fonts, offline included, and renders every glyph.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    build_demo().queue(default_concurrency_limit=CONCURRENCY, max_size=64).launch(
        theme=theme,
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        max_file_size=os.environ.get("CYCLEGAN_MAX_FILE_SIZE", "25mb"),
        allowed_paths=[str(p) for p in (ROOT / "weights",)],
    )
