"""ONNX export: onnxruntime must compute what PyTorch computes, for several batch and image sizes."""
from __future__ import annotations

import pytest
import torch

from cyclegan import CycleGAN
from cyclegan.export_onnx import main as export_main
from cyclegan.inference import run_padded
from tests.conftest import TINY, max_level_difference, missing_modules, psnr, require

require(missing_modules("onnx", "onnxruntime", "onnxscript"), "pip install -r requirements-dev.txt")  # onnxscript: torch's exporter
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model folder and its B2A generator exported once (the export takes a few seconds)."""
    root = tmp_path_factory.mktemp("onnx")
    model = CycleGAN(TINY).init_weights(seed=3).eval()
    model.save_pretrained(root / "model")
    assert export_main([str(root / "model"), "--out", str(root / "B2A.onnx"), "--direction", "B2A"]) == 0
    return model, root / "B2A.onnx"


def test_the_onnx_graph_has_dynamic_sizes_and_says_what_it_does(exported):
    _, path = exported
    graph = onnx.load(path)
    assert {o.domain: o.version for o in graph.opset_import}[""] == 18
    for value in (graph.graph.input[0], graph.graph.output[0]):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == ["batch", 3, "height", "width"]
    assert {p.key: p.value for p in graph.metadata_props}.items() >= {
        "direction": "B2A", "from": "zebra", "to": "horse"}.items()
    assert any(n.op_type == "Pad" and any(a.s == b"reflect" for a in n.attribute) for n in graph.graph.node)


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (2, 3, 48, 40), (1, 3, 50, 37)])
def test_onnxruntime_matches_pytorch(exported, shape):
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    (y,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = run_padded(model.G_BA, x)  # sides not a multiple of 4 are padded and cropped, as translate() does
        other = run_padded(model.G_AB, x)
    assert y.shape == shape
    assert max_level_difference(torch.from_numpy(y), expected) <= 1  # the same 8-bit image, but for rounding
    assert psnr(torch.from_numpy(y), other) < 30  # B2A really is G_BA (13.6-13.7 dB measured)


def test_export_errors_are_one_line(exported, tmp_path, capsys):
    model_dir = exported[1].parent / "model"
    assert export_main([str(model_dir), "--out", str(tmp_path / "old.onnx"), "--opset", "11"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: opset 11:") and err.count("\n") == 1
    assert export_main([str(tmp_path / "missing"), "--out", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and err.count("\n") == 1
    assert not (tmp_path / "old.onnx").exists() and not (tmp_path / "x.onnx").exists()
