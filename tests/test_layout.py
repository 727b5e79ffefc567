"""The shape of the code a newcomer reads: small files, classes and functions, one home for each
mechanism, and the CUDA-graph machinery behind its door (docs/training.md: the package's rooms)."""
import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGE = sorted((ROOT / "cyclegan").rglob("*.py"))
LIMITS = {"file": 450, "class": 200, "function": 60}


def test_the_package_has_no_long_file_class_or_function():
    too_long = []
    for path in PACKAGE:
        text = path.read_text()
        name = path.relative_to(ROOT)
        if len(text.splitlines()) > LIMITS["file"]:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            kind = ("class" if isinstance(node, ast.ClassDef) else
                    "function" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None)
            if kind:
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - start + 1 > LIMITS[kind]:
                    too_long.append(f"{name}:{node.lineno}: {kind} {node.name}, {node.end_lineno - start + 1} lines")
    assert not too_long, f"over the limits {LIMITS}:\n" + "\n".join(too_long)


def test_the_benchmark_entry_point_is_short():
    assert len((ROOT / "benchmarks" / "bench.py").read_text().splitlines()) <= 500


@pytest.mark.parametrize("call, home", [("os.replace(", "cyclegan/files.py")])
def test_one_home_for_each_mechanism(call, home):
    sources = [*PACKAGE, ROOT / "app.py", ROOT / "train.py", *(ROOT / "scripts").glob("*.py"),
               *(ROOT / "benchmarks").glob("*.py")]
    found = sorted(str(p.relative_to(ROOT)) for p in sources if call in p.read_text())
    assert found == [home]


def test_importing_training_leaves_the_cuda_graph_machinery_out():
    code = ("import sys, cyclegan.training as t; t.Trainer(t.TrainConfig(), __import__('cyclegan').ModelConfig("
            "ngf=4, ndf=4, n_blocks=1, n_layers=1)); print(sorted(m for m in sys.modules if m.startswith('cyclegan.')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    modules = eval(done.stdout)
    assert "cyclegan.training.step" in modules and "cyclegan.training.graphs" not in modules
