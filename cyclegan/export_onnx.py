"""Export one generator of a model folder (or Hub repo) to ONNX, for any batch size and image size:
`python -m cyclegan.export_onnx weights/horse2zebra-identity --out horse2zebra_A2B.onnx`
(`--fp16-weights`: half the size)."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .cli import prog
from .files import one_line, write_atomic
from .model import DIRECTIONS, CycleGAN

# Reflect padding needs opset >= 11, but torch's (dynamo) exporter writes opset 18 natively and, asked for
# less, silently keeps 18; 18 runs on onnxruntime >= 1.14.
OPSET = 18


class PaddedGenerator(nn.Module):
    """The generator for inputs of any size: reflect-pad to a multiple of 4, run, crop back.
    Input and output: float32 (N, 3, H, W) RGB in [-1, 1]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.net(F.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="reflect"))
        # narrow, unlike slicing, lets the exporter prove the output is exactly (height, width)
        return y.narrow(2, 0, h).narrow(3, 0, w)


def export(source: str, out: str, direction: str = "A2B", opset: int = OPSET) -> None:
    """Write the `direction` generator of `source` as an ONNX model with dynamic batch, height and width."""
    if opset < OPSET:
        raise ValueError(f"opset {opset}: torch's ONNX exporter writes opset {OPSET} or newer")
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it; say so before any work)
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from None
    model = CycleGAN.from_pretrained(source)
    G, _ = model.generators(direction)
    net = PaddedGenerator(G).eval()
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=8), 3: torch.export.Dim("width", min=8)}
    with warnings.catch_warnings():  # the exporter warns about deprecations inside torch itself
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), dynamo=True, opset_version=opset,
                                    input_names=["image"], output_names=["translated"],
                                    dynamic_shapes={"x": dims}, verbose=False)
    if program.model.opset_imports.get("") != opset:
        raise RuntimeError(f"the exporter wrote opset {program.model.opset_imports.get('')}, not {opset}")
    src, dst = model.domains(direction)
    program.model.metadata_props.update({"direction": direction, "from": src, "to": dst,
                                         "image": "float32 NCHW RGB in [-1, 1]"})
    program.save(out, external_data=False)


def half_weights(path: str) -> None:
    """Store the float32 weights of the ONNX file `path` as float16, each cast back to float32 by a Cast node:
    half the download, while inputs, outputs and arithmetic stay float32 (runtimes fold the casts when they
    load the model). Weights beyond float16's range are an error."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(path)
    graph, casts = model.graph, []
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type != TensorProto.FLOAT:
            continue
        name, weights = tensor.name, numpy_helper.to_array(tensor)
        if np.abs(weights).max(initial=0) > np.finfo(np.float16).max:
            raise ValueError(f"{path}: weight {name} exceeds float16's range; keep it float32")
        graph.initializer[i].CopyFrom(numpy_helper.from_array(weights.astype(np.float16), f"{name}.fp16"))
        casts.append(helper.make_node("Cast", [f"{name}.fp16"], [name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    write_atomic(path, model.SerializeToString())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("python -m cyclegan.export_onnx"), description=__doc__)
    parser.add_argument("source", help="model folder or Hub repo id")
    parser.add_argument("--out", required=True, help="ONNX file to write, e.g. model_A2B.onnx")
    parser.add_argument("--direction", choices=DIRECTIONS, default="A2B")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default: {OPSET})")
    parser.add_argument("--fp16-weights", action="store_true", help="store the weights as float16 (I/O stays float32)")
    args = parser.parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # it warns about torchvision ops we do not use
    try:
        export(args.source, args.out, args.direction, args.opset)
        if args.fp16_weights:
            half_weights(args.out)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    print(args.out)
    return 0


if __name__ == "__main__":  # a missing extra is a one-line message, as for the console command
    from .cli import run
    run("export_onnx")
