"""Who may train (train_tab.py): the Train tab exists only where the operator turns it on, acts only for
its owners where login is required (through the page and the API alike), and refuses to serve an open
network without login."""
from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading

import gradio as gr
import pytest

import train_tab
from scripts.screenshot import serve_app
from tests.conftest import ROOT


def profile(name: str, orgs=()) -> gr.OAuthProfile:
    return gr.OAuthProfile({"preferred_username": name, "name": name, "profile": f"https://huggingface.co/{name}",
                            "picture": "", "orgs": [{"preferred_username": o} for o in orgs]})


def test_only_owners_act_where_login_is_required(monkeypatch):
    for name in ("SPACE_ID", "SPACE_AUTHOR_NAME", "CYCLEGAN_TRAINING_LOGIN", "CYCLEGAN_TRAINING_OWNERS"):
        monkeypatch.delenv(name, raising=False)
    train_tab.check_access(None)  # no login asked for: a local app
    monkeypatch.setenv("SPACE_ID", "alice/cyclegan")
    monkeypatch.setenv("SPACE_AUTHOR_NAME", "alice")
    monkeypatch.setenv("CYCLEGAN_TRAINING_OWNERS", "zebra-lab")
    train_tab.check_access(profile("alice"))
    train_tab.check_access(profile("bob", orgs=["zebra-lab"]))
    with pytest.raises(gr.Error, match="Training here needs a Hugging Face login as alice or zebra-lab"):
        train_tab.check_access(None)
    with pytest.raises(gr.Error, match="mallory may not train here: only alice, zebra-lab"):
        train_tab.check_access(profile("mallory", orgs=["other"]))


def test_an_open_address_without_login_is_refused_unless_the_operator_allows_it(monkeypatch, capsys):
    for name in ("SPACE_ID", "CYCLEGAN_TRAINING_LOGIN", "CYCLEGAN_TRAINING_OPEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CYCLEGAN_TRAINING", "1")
    assert train_tab.refuse_exposure("127.0.0.1") is None
    assert "without login" in train_tab.refuse_exposure("0.0.0.0")
    monkeypatch.setenv("CYCLEGAN_TRAINING_OPEN", "1")
    assert train_tab.refuse_exposure("0.0.0.0") is None
    assert "open to anyone who reaches 0.0.0.0" in capsys.readouterr().err
    monkeypatch.delenv("CYCLEGAN_TRAINING_OPEN")
    monkeypatch.setenv("CYCLEGAN_TRAINING_LOGIN", "1")
    assert train_tab.refuse_exposure("0.0.0.0") is None
    monkeypatch.setenv("CYCLEGAN_TRAINING", "0")
    assert train_tab.refuse_exposure("0.0.0.0") is None  # no Train tab: nothing to refuse


def test_app_py_says_why_it_will_not_serve_training_to_a_network(tmp_path):
    env = {"CYCLEGAN_TRAINING": "1", "GRADIO_SERVER_NAME": "0.0.0.0", "CYCLEGAN_RUNS": str(tmp_path / "runs"),
           "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        "app.py: CYCLEGAN_TRAINING=1 on 0.0.0.0, a non-loopback address, without login")


@pytest.fixture(scope="module")
def whoami():
    """A stand-in for the Hub's whoami, which Gradio asks at start-up for the login button of a local app."""
    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"type": "user", "name": "alice", "fullname": "Alice", "avatarUrl": ""}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_with_login_an_api_call_without_an_owners_login_is_refused(whoami, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    runs = tmp_path / "runs"
    with serve_app(CYCLEGAN_TRAINING="1", CYCLEGAN_TRAINING_LOGIN="1", CYCLEGAN_TRAINING_OWNERS="alice",
                   CYCLEGAN_RUNS=str(runs), HF_TOKEN="hf_test", HF_ENDPOINT=whoami, HF_HUB_OFFLINE="0") as url:
        client = Client(url, verbose=False)
        assert client.predict(api_name="/train_status")["state"] == "idle"  # reading is for everyone
        for args, endpoint in (((None, "horse2zebra", "quick", True, 0), "/train_start"), ((), "/train_stop"),
                               ((0,), "/train_resume")):
            with pytest.raises(AppError, match="Training here needs a Hugging Face login as alice"):
                client.predict(*args, api_name=endpoint)
    assert not runs.exists() or [p.name for p in runs.iterdir() if not p.name.startswith(".")] == []


def test_push_uses_the_users_token_never_the_operators(monkeypatch, tmp_path):
    """Locally: the push finds HF_TOKEN or `hf auth login`'s itself (token None); where login is required:
    the visitor's OAuth token, and without one no push."""
    import cyclegan.hub
    from cyclegan import CycleGAN
    from tests.conftest import TINY

    pushed = []
    monkeypatch.setattr(cyclegan.hub, "push", lambda folder, repo, token=None: pushed.append((repo, token)) or "url")
    monkeypatch.setenv("CYCLEGAN_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("CYCLEGAN_TRAINING_LOGIN", raising=False)
    train_tab.jobs.cache_clear()
    CycleGAN(TINY).save_pretrained(tmp_path / "runs" / "mine" / "model")
    try:
        assert train_tab.push_run("mine", " me/h2z ", None, None).startswith("Pushed mine to [me/h2z](url)")
        monkeypatch.setenv("CYCLEGAN_TRAINING_LOGIN", "1")
        monkeypatch.setenv("CYCLEGAN_TRAINING_OWNERS", "alice")
        with pytest.raises(gr.Error, match="Pushing needs your Hugging Face login with write access"):
            train_tab.push_run("mine", "alice/h2z", profile("alice"), None)
        train_tab.push_run("mine", "alice/h2z", profile("alice"), gr.OAuthToken(token="hf_visitor", scope="write-repos",
                                                                                 expires_at=0))
        with pytest.raises(gr.Error, match="may not train here"):
            train_tab.push_run("mine", "bob/h2z", profile("bob"), gr.OAuthToken("hf_bob", "write-repos", 0))
    finally:
        train_tab.jobs.cache_clear()
    assert pushed == [("me/h2z", None), ("alice/h2z", "hf_visitor")]


def test_the_estimate_times_steps_here_and_counts_the_zips_images(tmp_path, monkeypatch):
    """(The Train tab's Estimate, beside its access rules: both are train_tab.py's own logic.)"""
    import re
    import zipfile

    monkeypatch.setenv("CYCLEGAN_RUNS", str(tmp_path / "runs"))
    train_tab.jobs.cache_clear()
    archive = tmp_path / "mine.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(7):
            zf.writestr(f"mine/trainA/{i}.png", b"")
        zf.writestr("mine/trainB/0.png", b"")
    try:
        assert train_tab.zip_largest_domain(str(archive)) == 7
        line = train_tab.estimate(str(archive), "preview", True, 0, 32, 36, 1, steps=1)
        assert re.fullmatch(r"≈ \S+ s a step here: 98 steps ≈ \d+ (s|min)", line), line  # 14 epochs of 7 steps
        assert re.fullmatch(r"≈ \S+ s a step here: 300 steps ≈ \d+ (s|min)", train_tab.estimate(None, "quick", True, 0,
                                                                                              32, 36, 1, steps=1))
    finally:
        train_tab.jobs.cache_clear()


def test_the_plot_and_the_grid_are_sent_again_only_when_their_files_change(tmp_path, monkeypatch):
    """Each page refreshes every 2 s: a long run's loss curves (thousands of points) and its sample grid
    go out only when losses.csv or the newest grid changed since that page's last refresh."""
    from PIL import Image

    monkeypatch.setenv("CYCLEGAN_RUNS", str(tmp_path / "runs"))
    folder = tmp_path / "runs" / "r1"
    (folder / "samples").mkdir(parents=True)
    (folder / "request.json").write_text("{}")
    monkeypatch.setattr(train_tab, "train_status", lambda: {"run": "r1", "state": "running", "step": 2, "total_steps": 9})
    losses = folder / "losses.csv"
    losses.write_text("step,G_AB,G_BA,cycle_A,cycle_B,D_A,D_B\n2,1,1,2,2,0.5,0.5\n")
    Image.new("RGB", (12, 8)).save(folder / "samples" / "step_000002.png")
    skip = gr.skip()

    first = train_tab.view([], None)  # a page's first refresh: everything
    assert len(first[1]) == 3 and first[1]["loss"].tolist() == [2.0, 4.0, 1.0] and first[2].size == (12, 8)
    again = train_tab.view([], first[-1])
    assert again[1] == skip and again[2] == skip and again[0] == first[0]  # the progress is always sent
    with open(losses, "a") as f:
        f.write("4,1,1,1,1,0.5,0.5\n")
    grown = train_tab.view([], again[-1])
    assert len(grown[1]) == 6 and grown[2] == skip
    Image.new("RGB", (12, 8), "white").save(folder / "samples" / "step_000004.png")
    newer = train_tab.view([], grown[-1])
    assert newer[1] == skip and newer[2].getpixel((0, 0)) == (255, 255, 255)
    assert train_tab.view([], None)[1] is not skip  # a reloaded page starts afresh
    other = train_tab.view([], ("r0", *newer[-1][1:]))  # another run shown before: sent
    assert len(other[1]) == 6 and other[2].size == (12, 8)


def test_a_refusal_reaches_the_log_as_one_line(capsys):
    """Both tabs refuse with train_tab.Refusal: the visitor gets the message, the server's log one line
    instead of Gradio's 30-line traceback for each bad upload."""
    error = train_tab.Refusal("Cannot use notes.png: not an image file\n(or an unsupported format)")
    assert isinstance(error, gr.Error) and error.print_exception is False
    assert capsys.readouterr().err == "refused: Cannot use notes.png: not an image file (or an unsupported format)\n"
    for source in ("app.py", "train_tab.py"):
        assert "raise gr.Error(" not in (ROOT / source).read_text(), source
