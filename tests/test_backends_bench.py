"""benchmarks/backends.py on a tiny generator: its rows have their fields, and ONNX Runtime computes
what eager float32 computes (an accuracy check; speed is never asserted)."""
from __future__ import annotations

import json

from cyclegan import CycleGAN, ModelConfig
from tests.conftest import missing_modules, require

require(missing_modules("onnx", "onnxruntime", "onnxscript"), "pip install -r requirements-dev.txt")

from benchmarks.backends import FIELDS, bench_backends, verdict  # noqa: E402


def test_backends_rows_and_onnxruntime_accuracy(tmp_path):
    model = CycleGAN(ModelConfig(ngf=4, ndf=4, n_blocks=1, n_layers=1)).init_weights(seed=0)
    # torch.compile is left out: minutes of C++ compilation on a small CPU
    result = bench_backends({"tiny": model}, {32: 1}, tmp_path / "no-data", tmp_path,
                            backends=("eager fp32", "onnxruntime", "onnxruntime int8"), int8=True, warmup=0)
    rows = json.loads(json.dumps(result["rows"]))  # as written to backends.json (inf is JSON's Infinity)
    assert [r["backend"] for r in rows] == ["eager fp32", "onnxruntime", "onnxruntime int8"]
    assert all(set(FIELDS) <= r.keys() and r["size"] == 32 and r["n"] == 1 and r["median_ms"] > 0 for r in rows)
    eager, ort, _ = rows
    assert eager["speedup"] == 1 and eager["psnr_db"] == float("inf")
    assert ort["psnr_db"] >= 45 and ort["max_levels"] <= 1
    assert result["skipped"] == {} and result["onnxruntime_session"]["providers"] == ["CPUExecutionProvider"]
    assert set(verdict(rows, size=32)) == {"onnxruntime", "onnxruntime int8"}
