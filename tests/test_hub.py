"""The model folder (save/load in float32 and float16), loading from a Hub repo id against a local
stand-in for the Hub, and the `python -m cyclegan.hub` push/pull commands."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cyclegan import CycleGAN
from cyclegan.hub import main as hub_main
from tests.conftest import TINY, free_port, max_level_difference

ROOT = Path(__file__).resolve().parents[1]
FILES = ("config.json", "model.safetensors", "README.md")


def same_weights(a: CycleGAN, b: CycleGAN) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def folder_bytes(folder: Path, names=FILES) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}


# ---- the model folder ------------------------------------------------------------------------

def test_round_trip_float32_is_exact(tiny_model, tmp_path):
    tiny_model.info = {"dataset": "horse2zebra", "metrics": {"fid": 12.5}}
    tiny_model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(FILES)
    loaded = CycleGAN.from_pretrained(tmp_path / "m")
    assert loaded.config == TINY and loaded.info == tiny_model.info
    assert same_weights(loaded, tiny_model)
    assert "horse" in (tmp_path / "m" / "README.md").read_text()


def test_round_trip_float16_halves_the_file_and_loads_as_float32(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "f32")
    tiny_model.save_pretrained(tmp_path / "f16", dtype="float16")
    ratio = (tmp_path / "f16/model.safetensors").stat().st_size / (tmp_path / "f32/model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    with safe_open(tmp_path / "f16/model.safetensors", "pt") as f:
        assert f.metadata()["dtype"] == "float16"
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    loaded = CycleGAN.from_pretrained(tmp_path / "f16")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float()), k
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert max_level_difference(loaded.G_AB(x), tiny_model.G_AB(x)) <= 1  # float16 weights: 1 level measured


# ---- a local stand-in for the Hub's file endpoints ------------------------------------------

class FakeHub(ThreadingHTTPServer):
    """Answers what hf_hub_download of huggingface_hub 2.4 asks: HEAD, then
    GET, of /{repo_id}/resolve/{revision}/{filename}, with X-Repo-Commit, ETag and Content-Length;
    a 404 carries X-Error-Code so that the client can tell a missing repo, revision or file apart.
    Its only /api/ request, GET /api/agent-harnesses (telemetry, which cyclegan turns off), gets a 404."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}  # repo -> revision -> (commit, files)
        self.requests: list[tuple[str, str]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, repo_id: str, revision: str, files: dict[str, bytes]) -> str:
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        self.repos.setdefault(repo_id, {})[revision] = self.repos[repo_id][commit] = (commit, files)
        return commit


class HubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(send_body=False)

    def do_GET(self) -> None:
        self.answer(send_body=True)

    def answer(self, send_body: bool) -> None:
        self.server.requests.append((self.command, self.path))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
        repo = self.server.repos.get(m[1]) if m else None
        revision = repo.get(urllib.parse.unquote(m[2])) if repo else None
        if repo is None or revision is None:
            return self.reply(404, {"X-Error-Code": "RepoNotFound" if repo is None else "RevisionNotFound"})
        commit, files = revision
        body = files.get(urllib.parse.unquote(m[3]))
        if body is None:
            return self.reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        self.reply(200, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'},
                   body, send_body)

    def reply(self, status: int, headers: dict, body: bytes = b"", send_body: bool = True) -> None:
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body)), "Content-Type": "application/octet-stream"}.items():
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def use_endpoint(monkeypatch, tmp_path: Path, endpoint: str) -> None:
    """Point huggingface_hub at `endpoint`, with its cache and token file inside tmp_path.

    huggingface_hub reads HF_ENDPOINT, HF_HOME, ... into `constants` when it is first imported, so
    the environment (for subprocesses) and those constants (for this process) are both set."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    values = {"ENDPOINT": endpoint, "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
              "HF_HUB_CACHE": str(home / "hub"), "HF_TOKEN_PATH": str(home / "token"),
              "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"), "HF_HUB_OFFLINE": False,
              "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json")}
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value)
    for name in ("HF_TOKEN", "HF_HUB_CACHE", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def hub(monkeypatch, tmp_path, tiny_model):
    """A running FakeHub serving me/tiny: `main` (tiny_model, with a card) and tag `v1` (other weights,
    no card); huggingface_hub pointed at it."""
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    use_endpoint(monkeypatch, tmp_path, server.url)
    main, v1 = tmp_path / "served_main", tmp_path / "served_v1"
    tiny_model.save_pretrained(main)
    CycleGAN(TINY).init_weights(seed=1).save_pretrained(v1, dtype="float16")
    server.add("me/tiny", "main", folder_bytes(main))
    server.add("me/tiny", "v1", folder_bytes(v1, FILES[:2]))
    yield server
    server.shutdown()
    server.server_close()


def test_from_pretrained_downloads_a_repo_then_works_offline(hub, tiny_model, monkeypatch):
    model = CycleGAN.from_pretrained("me/tiny")
    assert same_weights(model, tiny_model) and model.config == TINY
    # (Telemetry, GET /api/agent-harnesses, is off where cyclegan is imported first: see below.)
    assert [r for r in hub.requests if "/resolve/" in r[1]] == [
        (method, f"/me/tiny/resolve/main/{name}") for name in FILES[:2] for method in ("HEAD", "GET")]
    # With HF_HUB_OFFLINE, and then with the server gone, the cached copy is used.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    n = len(hub.requests)
    assert same_weights(CycleGAN.from_pretrained("me/tiny"), tiny_model)
    assert len(hub.requests) == n
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    hub.shutdown()
    hub.server_close()
    assert same_weights(CycleGAN.from_pretrained("me/tiny"), tiny_model)


def test_from_pretrained_revision(hub, tiny_model):
    model = CycleGAN.from_pretrained("me/tiny", revision="v1")
    expected = CycleGAN(TINY).init_weights(seed=1)
    for k, v in expected.state_dict().items():
        assert torch.equal(model.state_dict()[k], v.half().float()), k
    assert not same_weights(model, tiny_model)
    assert ("HEAD", "/me/tiny/resolve/v1/config.json") in hub.requests
    with pytest.raises(FileNotFoundError, match=r"me/tiny: revision 'v9' not found"):
        CycleGAN.from_pretrained("me/tiny", revision="v9")


def test_from_pretrained_unknown_repo_is_a_one_line_error(hub):
    with pytest.raises(FileNotFoundError, match=r"^nobody/missing: no such model repo on the Hub") as e:
        CycleGAN.from_pretrained("nobody/missing")
    assert "\n" not in str(e.value)


def test_a_mistyped_local_folder_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    """"weights/typo" where weights/ is a local folder: a one-line error at once, no Hub requests."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens: must not be asked
    with pytest.raises(FileNotFoundError, match=r"^weights/typo: no such model folder in weights/") as e:
        CycleGAN.from_pretrained("weights/typo")
    assert "\n" not in str(e.value)


def test_from_pretrained_without_server_or_cache_suggests_a_local_folder(monkeypatch, tmp_path):
    use_endpoint(monkeypatch, tmp_path, f"http://127.0.0.1:{free_port()}")
    # huggingface_hub retries a refused connection with backoff (about 20 s of sleeps): skip the waits.
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with pytest.raises(ConnectionError, match=r"^me/tiny: the Hub cannot be reached.*local path") as e:
        CycleGAN.from_pretrained("me/tiny")
    assert "\n" not in str(e.value)


# ---- python -m cyclegan.hub ----------------------------------------------------------------

def test_pull_writes_the_published_files(hub, tmp_path, capsys):
    assert hub_main(["pull", "me/tiny", "--out", str(tmp_path / "pulled")]) == 0
    assert folder_bytes(tmp_path / "pulled") == hub.repos["me/tiny"]["main"][1]
    assert capsys.readouterr().out.strip() == str(tmp_path / "pulled")
    # v1 has no README.md on the Hub: the folder gets a generated card; weights stay float16.
    assert hub_main(["pull", "me/tiny", "--revision", "v1", "--out", str(tmp_path / "v1")]) == 0
    files = folder_bytes(tmp_path / "v1")
    assert files["model.safetensors"] == hub.repos["me/tiny"]["v1"][1]["model.safetensors"]
    assert files["README.md"].startswith(b"---\nlibrary_name: cyclegan-kit")
    CycleGAN.from_pretrained(tmp_path / "v1")


def test_pull_errors_are_one_line(hub, tmp_path, capsys):
    assert hub_main(["pull", "nobody/missing", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: nobody/missing: no such model repo") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_the_commands_send_no_telemetry(hub, tmp_path, monkeypatch):
    """A fresh process, as a user runs it: only the model's files are asked for. (Without
    HF_HUB_DISABLE_TELEMETRY, huggingface_hub 2.4 also GETs /api/agent-harnesses, once a day.)"""
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    monkeypatch.delenv("DISABLE_TELEMETRY", raising=False)
    result = subprocess.run([sys.executable, "-m", "cyclegan.hub", "pull", "me/tiny", "--out", str(tmp_path / "pulled")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert hub.requests and all("/resolve/" in path for _, path in hub.requests), hub.requests


def test_push_uploads_a_float16_model_folder(tiny_model, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    use_endpoint(monkeypatch, tmp_path, f"http://127.0.0.1:{free_port()}")  # nothing may leave the machine
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    calls, uploaded = [], tmp_path / "uploaded"

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, uploaded)  # the folder is temporary: keep what was sent
        return type("CommitInfo", (), {"commit_url": f"https://hub.test/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    tiny_model.info = {"dataset": "horse2zebra"}
    tiny_model.save_pretrained(tmp_path / "model")
    assert hub_main(["push", str(tmp_path / "model"), "me/tiny", "--private"]) == 0
    assert capsys.readouterr().out.strip() == "https://hub.test/me/tiny/commit/abc"
    assert [c[:2] for c in calls] == [("create_repo", "me/tiny"), ("upload_folder", "me/tiny")]
    assert calls[0][2]["private"] is True
    assert sorted(p.name for p in uploaded.iterdir()) == sorted(FILES)
    with safe_open(uploaded / "model.safetensors", "pt") as f:
        assert f.metadata()["dtype"] == "float16"
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert json.loads((uploaded / "config.json").read_text())["dataset"] == "horse2zebra"
    assert "datasets:\n- huggan/horse2zebra" in (uploaded / "README.md").read_text()
    back = CycleGAN.from_pretrained(uploaded)
    assert all(torch.equal(back.state_dict()[k], v.half().float()) for k, v in tiny_model.state_dict().items())
    # A hand-edited card is uploaded as it is, unless a new one is asked for.
    edited = (tmp_path / "model" / "README.md").read_text().replace("## Architecture", "## My notes\n\nHello.\n\n## Architecture")
    (tmp_path / "model" / "README.md").write_text(edited)
    for flags, expected in (([], edited), (["--regenerate-card"], (tmp_path / "model" / "README.md").read_text())):
        shutil.rmtree(uploaded)
        assert hub_main(["push", str(tmp_path / "model"), "me/tiny", *flags]) == 0
        assert ((uploaded / "README.md").read_text() == edited) == (not flags)
    assert "My notes" not in (uploaded / "README.md").read_text()


def test_model_card_metadata_reads_as_the_hub_reads_it(tiny_model, tmp_path):
    from huggingface_hub import ModelCard

    tiny_model.info = {"dataset": "horse2zebra", "metrics": {"FID horse→zebra": 80.5, "KID horse→zebra": 0.02,
                                                             "reference FID horse→zebra (untranslated)": 236.4,
                                                             "cycle L1 horse→zebra": 0.1}}
    card = ModelCard.load(tiny_model.save_pretrained(tmp_path / "m") / "README.md")
    assert card.data.license == "mit" and card.data.pipeline_tag == "image-to-image"
    assert card.data.datasets == ["huggan/horse2zebra"]
    results = {(r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results == {("fid", "FID horse→zebra"): 80.5, ("kid", "KID horse→zebra"): 0.02}
    assert {r.dataset_type for r in card.data.eval_results} == {"huggan/horse2zebra"}
    # (Weights converted from the authors' checkpoints say BSD: tests/test_translate_cli.py.)


def test_push_without_token_fails_before_uploading(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    (tmp_path / "empty_home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    # A closed local port as the Hub: if the command tried to upload, it would fail differently.
    env.update(HF_HOME=str(tmp_path / "empty_home"), HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",
               PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "cyclegan.hub", "push", str(tmp_path / "model"), "me/tiny"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no Hugging Face token") and result.stderr.count("\n") == 1
    assert result.stdout == ""
    result = subprocess.run([sys.executable, "-m", "cyclegan.hub", "push", str(tmp_path / "typo"), "me/tiny"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and result.stderr == f"error: {tmp_path / 'typo'}: no such model folder\n"  # first
