"""README.md and docs/*.md cannot rot: every relative link (and its #anchor), every repository file they
name, every `python -m cyclegan.X`, `python scripts/X.py`, console command and `train.py` flag exists,
each flag in its command's --help; and docs/training.md names every flag of train.py."""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONSOLE = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]  # name -> "cyclegan.cli:fn"
# Paths below these are files of the repository (runs/, datasets/, site/ and the like are what commands write).
TRACKED = r"(?:\.ci|cyclegan|scripts|benchmarks|tests|docs|examples|weights)/[\w./-]*"
ROOT_FILES = r"(?:requirements(?:-\w+)?\.txt|pyproject\.toml|app\.py|train\.py)"
PATH = re.compile(rf"(?<![\w/.~-])(--out[ =]|--output[ =])?({TRACKED}|{ROOT_FILES}(?![\w/]))")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")
PLACEHOLDER = re.compile(r"[A-Z]{2,}|<|\*")  # weights/NAME, models/NAME/A2B.onnx, <horse2zebra>, *.onnx


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_snippets(text: str) -> list[str]:
    """The shell lines of code blocks (indented or fenced, `\\` continuations joined) and the inline code
    spans of the prose, whitespace collapsed: where commands, flags and paths are named."""
    snippets, prose, fenced = [], [], False
    lines = text.splitlines()
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            if snippets and snippets[-1].endswith("\\"):
                snippets[-1] = snippets[-1][:-1] + " " + line.strip()
            else:
                snippets.append(line.strip())
        else:
            prose.append(line)
    for match in re.finditer(r"(`+)(.+?)\1", "\n".join(prose), re.S):
        snippets.append(" ".join(match.group(2).split()))
    return [s for s in snippets if s]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"(?m)^#+ (.+)$", text)}


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_relative_links_and_their_anchors_exist(doc):
    broken = []
    for match in LINK.finditer(doc.read_text()):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {doc_id(path)}")
    assert not broken, f"{doc_id(doc)}: broken links: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_named_repository_files_exist(doc):
    missing = set()
    for snippet in code_snippets(doc.read_text()):
        for match in PATH.finditer(snippet):
            out, path = match.groups()
            path = path.rstrip(".")
            if out or PLACEHOLDER.search(path) or "node_modules" in path:  # written by the command; a placeholder; npm's
                continue
            if not (ROOT / path).exists():
                missing.add(path)
    assert not missing, f"{doc_id(doc)} names files that do not exist: {sorted(missing)}"


def segments(snippet: str) -> list[list[str]]:
    """A shell snippet's simple commands, as tokens (comments dropped; unbalanced quotes split on spaces)."""
    try:
        tokens = shlex.split(snippet, comments=True)
    except ValueError:
        tokens = snippet.split()
    out = [[]]
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            out.append([])
        else:
            out[-1].append(token)
    return [s for s in out if s]


def find_script(name: str) -> Path | None:
    """A script named as `scripts/X.py`, `benchmarks/X.py` or plainly `bench.py`."""
    candidates = [ROOT / name] if "/" in name else [ROOT / d / name for d in ("scripts", "benchmarks")]
    return next((c for c in candidates if c.is_file()), None)


def commands(snippet: str) -> list[tuple[str, list[str]]]:
    """(command, the tokens after it) for each command the snippet runs: `train`, `cyclegan.X` (also for
    the console command cyclegan-X), or a script's path relative to the repository."""
    found = []
    for tokens in segments(snippet):
        for name, value in (t.split("=", 1) for t in tokens if re.match(r"[A-Z_]+=", t)):
            if name == "GPU_CHECK_TRAIN":  # train.py flags that gpu_check.sh passes on
                found.append(("train", value.split()))
        tokens = [t for t in tokens if not re.match(r"[A-Z_]+=", t)]
        if tokens and re.fullmatch(r"cyclegan-[a-z-]+", tokens[0]) and tokens[0] != "cyclegan-kit":
            found.append((tokens[0], tokens[1:]))
            continue
        for i, token in enumerate(tokens):
            if token == "-m" and i + 1 < len(tokens) and tokens[i + 1].startswith("cyclegan."):
                found.append((tokens[i + 1], tokens[i + 2:]))
                break
            if token.endswith("train.py") and not token.startswith("cyclegan/"):
                found.append(("train", tokens[i + 1:]))
                break
            if re.fullmatch(r"(scripts/|benchmarks/)?[\w.-]+\.(py|sh)", token):
                script = find_script(token)
                if script is not None or "/" in token:
                    found.append((str(script.relative_to(ROOT)) if script else token, tokens[i + 1:]))
                    break
    return found


def in_process_help(main, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(argv)
    return out.getvalue()


@functools.lru_cache(maxsize=None)
def help_text(command: str, sub: str | None = None) -> str:
    """What a command's flags are read from: its --help (of its subcommand `sub`, for cyclegan.hub); for a
    Python script, its source, where each flag is an add_argument("--flag", ...) (no subprocess to start)."""
    if command == "train":
        from cyclegan.train import build_parser
        return build_parser().format_help()
    if command.startswith("cyclegan."):
        return in_process_help(importlib.import_module(command).main, [*([sub] if sub else []), "--help"])
    if command.endswith(".py"):
        return " ".join(re.findall(r"[\"'](--[\w-]+)[\"']", (ROOT / command).read_text()))
    done = subprocess.run(["bash", str(ROOT / command), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    return done.stdout + done.stderr


def test_the_commands_the_docs_run_exist_with_the_flags_they_give():
    problems = []
    for doc in DOCS:
        snippets = code_snippets(doc.read_text())
        for snippet in snippets:
            if doc.name == "training.md" and snippet.startswith("--"):
                snippet = "train.py " + snippet  # a flag named alone on the training page is train.py's
            for command, args in commands(snippet):
                where = f"{doc_id(doc)}: `{snippet}`"
                if command.startswith("cyclegan-"):
                    if PLACEHOLDER.search(command[9:]) or command[9:] == "X":
                        continue
                    if command not in CONSOLE:
                        problems.append(f"{where}: no console command {command} in pyproject.toml")
                        continue
                    command = "cyclegan." + CONSOLE[command].split(":")[1]
                if command.startswith("cyclegan."):
                    if re.fullmatch(r"[A-Z]+", command[9:]):  # python -m cyclegan.X
                        continue
                    if not (ROOT / "cyclegan" / f"{command[9:]}.py").is_file():
                        problems.append(f"{where}: no module {command}")
                        continue
                elif command != "train" and not (ROOT / command).is_file():
                    problems.append(f"{where}: no script {command}")
                    continue
                sub = next((a for a in args if not a.startswith("-")), None) if command == "cyclegan.hub" else None
                flags = {a.split("=")[0] for a in args if re.fullmatch(r"--[\w-]+(=.*)?", a)}
                if not flags:
                    continue
                text = help_text(command, sub)
                unknown = sorted(f for f in flags if not re.search(rf"{re.escape(f)}(?![\w-])", text))
                if unknown:
                    problems.append(f"{where}: {command} has no {', '.join(unknown)}")
    assert not problems, "\n".join(problems)


def test_training_page_names_every_flag():
    flags = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", help_text("train"))) - {"--help"}
    page = (ROOT / "docs" / "training.md").read_text()
    missing = sorted(f for f in flags if not re.search(rf"`{re.escape(f)}[` ]", page))
    assert not missing, f"docs/training.md does not name these flags of train.py: {missing}"


def test_the_checks_see_what_they_check():
    """The parsers find what the docs hold (a parser that found nothing would pass everything)."""
    snippets = code_snippets((ROOT / "README.md").read_text())
    found = [c for s in snippets for c, _ in commands(s)]
    assert {"train", "cyclegan.translate", "cyclegan.hub", "cyclegan.evaluate"} <= set(found), found
    assert commands("GPU_CHECK_SKIP=bench scripts/gpu_check.sh OUT && python -m cyclegan.evaluate --model m") == [
        ("scripts/gpu_check.sh", ["OUT"]), ("cyclegan.evaluate", ["--model", "m"])]
    assert commands("torchrun --nproc_per_node 4 train.py --dataset x") == [("train", ["--dataset", "x"])]
    assert commands("pip install 'cyclegan-kit[video]'") == []
    assert [m.group(2) for m in PATH.finditer("see `weights/horse2zebra-identity` --out weights/new docs/a.md.")] == [
        "weights/horse2zebra-identity", "weights/new", "docs/a.md."]
    assert slug("Translate in the visitor's browser") == "translate-in-the-visitors-browser"


def test_the_readme_stays_a_front_door():
    """At most 200 lines and 1,800 words, Space front matter included; set-up first (with the CPU-only torch
    line), then translating an image; the Space's gradio the one requirements.txt pins."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200 and len(text.split()) <= 1800, (len(text.splitlines()), len(text.split()))
    front = text.split("\n---\n", 1)[0]
    assert front.startswith("---\n") and "\napp_file: app.py\n" in front and "\nsdk: gradio\n" in front
    pinned = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("gradio"))
    assert f"\nsdk_version: {pinned.split('==')[1]}\n" in front, "the Space's gradio is not the pinned one"
    headings = re.findall(r"(?m)^## (.+)$", text)
    assert headings[0].startswith("Set-up") and headings[1].startswith("Translate"), headings
    setup = text.split("## " + headings[0])[1].split("## ")[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup and "pip install -r requirements.txt" in setup
    assert "python -m cyclegan.translate --model weights/" in text.split("## " + headings[2])[0]
