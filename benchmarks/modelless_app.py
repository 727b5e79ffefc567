"""A Gradio app with /translate's inputs and six outputs (four PNG images, a PNG slider, a summary) and no
model: it returns the input where the app returns x, G(x), F(G(x)) and the heat map. What Gradio itself
costs a request, for benchmarks/serving.py to measure beside app.py (`python benchmarks/modelless_app.py`;
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT as for app.py)."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402


def translate(image: str, direction: str = "A2B", identity: bool = True, model: str | None = None,
              large: str = "tile", show_heat_map: bool = False):
    x = Image.open(image).convert("RGB")
    return x, x, x, x if show_heat_map else None, (x, x), f"{direction} · {x.width}×{x.height} px · 0.00 s"


with gr.Blocks(analytics_enabled=False) as demo:
    inputs = [gr.Image(type="filepath"), gr.Radio(["A2B", "B2A"], value="A2B"), gr.Checkbox(value=True),
              gr.Dropdown(["none"], value="none", allow_custom_value=True), gr.Radio(["tile", "downscale"], value="tile"),
              gr.Checkbox(value=False)]
    outputs = [*(gr.Image(type="pil", format="png") for _ in range(4)), gr.ImageSlider(type="pil", format="png"),
               gr.Markdown()]
    gr.Button().click(translate, inputs, outputs, api_name="translate", concurrency_limit=1)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=1, max_size=64).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
