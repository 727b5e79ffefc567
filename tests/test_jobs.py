"""Job control without a browser (cyclegan.jobs): real training jobs on a tiny set, started, stopped,
killed and resumed; the uploaded zips it refuses; the recipes; the status file's log lines."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cyclegan.jobs import DataError, Jobs, Limits
from cyclegan.jobs import recipes
from cyclegan.jobs.data import unpack_zip
from cyclegan.runstatus import log_tail, read_status
from tests.conftest import ROOT, make_images

# A job of the tiny model on 32 px crops: a step takes a fraction of a second here.
TINY_JOB = dict(crop_size=32, load_size=36, ngf=8, ndf=8, n_blocks=1, n_layers=2, workers=0, amp="none",
                log_every=2, sample_every=1000, epochs=1000, decay_epochs=0)
ENDED = ("stopped", "finished", "failed")


@pytest.fixture(scope="module")
def tiny_zip(tmp_path_factory) -> Path:
    """trainA/, trainB/ and testA/ one folder down, as a zip of a folder is made."""
    folder = tmp_path_factory.mktemp("data")
    for i, domain in enumerate(("trainA", "trainB", "testA")):
        make_images(folder / "tiny" / domain, 6, seed=i, color=(200, 60, 40) if i != 1 else (40, 60, 200))
    path = folder / "tiny.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted((folder / "tiny").rglob("*.png")):
            zf.write(file, file.relative_to(folder))
    return path


@pytest.fixture
def jobs(tmp_path) -> Jobs:
    return Jobs(tmp_path / "runs", threads=1, niceness=5)


def running_at(jobs: Jobs, step: int, timeout: float = 120) -> dict:
    return jobs.wait(lambda s: s["state"] == "running" and s["step"] >= step or s["state"] in ENDED, timeout)


def ended(jobs: Jobs, timeout: float = 180) -> dict:
    return jobs.wait(lambda s: s["state"] in ENDED, timeout)


def zombies() -> list[int]:
    """This process's children that have ended and were not waited for."""
    pids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            pids.append(int(stat_file.parent.name))
    return pids


def test_a_job_stops_with_a_checkpoint_and_resumes_to_its_target(jobs, tiny_zip, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")  # the app's token stays out of the job's environment
    started = jobs.start("quick", True, 40, zip_path=str(tiny_zip), save_every=1000, **TINY_JOB)
    run = started["run"]
    assert started["state"] == "preparing" and started["message"].startswith("starting: images: trainA 6, trainB 6")
    runs = tmp_path / "runs"  # as given to Jobs: the command names the folder the run is in
    assert started["command"].startswith(f"python train.py --dataroot {runs}/{run}/data --output {runs}/{run} --ngf 8")
    s = running_at(jobs, 4)
    assert s["state"] == "running" and s["total_steps"] == 40 and s["steps_per_s"] > 0
    assert b"hf_secret" not in Path(f"/proc/{s['pid']}/environ").read_bytes()
    with pytest.raises(ValueError, match=f"{run} is running: stop it first"):
        jobs.delete(run)
    again = jobs.start("quick", True, 40, zip_path=str(tiny_zip), **TINY_JOB)  # one job at a time
    assert again["run"] == run and again["message"] == f"a job is already running: {run}; stop it first"
    assert jobs.stop()["message"] == "stop asked: saving"
    s = ended(jobs)
    stopped_at = s["step"]
    assert (s["state"], s["message"], s["checkpoint_step"], s["exit_code"]) == (
        "stopped", f"stopped at step {stopped_at}", stopped_at, 0)
    assert s["model"] == f"run: {run}" and (jobs.folder(run) / "checkpoint.pt").is_file()
    assert 4 <= stopped_at < 40
    jobs.resume()  # the target stays 40
    s = ended(jobs)
    assert (s["state"], s["step"], s["total_steps"], s["message"]) == ("finished", 40, 40, "finished at step 40")
    with open(jobs.folder(run) / "losses.csv", newline="") as f:
        logged = [int(r["step"]) for r in csv.DictReader(f)]
    assert logged == list(range(2, 41, 2))  # no gap and no step twice across the stop
    time.sleep(0.5)  # the supervisor is reaped by a thread as it ends
    assert zombies() == [] and jobs.running() is None
    jobs.delete(run)
    assert not jobs.folder(run).exists() and jobs.runs() == []


def test_a_killed_trainer_is_failed_with_its_log_and_resumes(jobs, tiny_zip):
    run = jobs.start("quick", True, 2000, zip_path=str(tiny_zip), save_every=2, **TINY_JOB)["run"]
    s = running_at(jobs, 3)
    os.kill(s["pid"], signal.SIGKILL)
    s = ended(jobs)
    assert s["state"] == "failed" and s["message"].startswith("the training process ended with signal SIGKILL; "
                                                              "the last save (step ")
    assert any(line.startswith("training on cpu") for line in s["log"])
    assert not any(str(jobs.root) in line for line in s["log"])  # no path of the server
    saved = s["checkpoint_step"]
    s = jobs.resume(saved + 4)
    assert s["state"] == "preparing"
    s = ended(jobs)
    assert (s["state"], s["step"], s["total_steps"]) == ("finished", saved + 4, saved + 4)
    # Supervisor and trainer both gone without a word: the reader says failed, and writes nothing.
    jobs.resume(2000)
    s = running_at(jobs, saved + 6)
    job = json.loads((jobs.root / ".job.json").read_text())
    os.killpg(job["pid"], signal.SIGKILL)
    os.kill(s["pid"], signal.SIGKILL)
    s = jobs.wait(lambda s: s["state"] != "running", 30)
    assert s["state"] == "failed" and "ended without saying why" in s["message"]
    assert read_status(jobs.folder(run))["state"] == "running"


def test_a_stop_before_the_first_step_leaves_no_checkpoint_and_starts_again(jobs, tiny_zip):
    run = jobs.start("quick", False, 6, zip_path=str(tiny_zip), save_every=1000, **TINY_JOB)["run"]
    jobs.stop()
    s = ended(jobs)
    assert s["state"] == "stopped" and s["message"] == "stopped before the first step; no checkpoint was written"
    assert not (jobs.folder(run) / "checkpoint.pt").exists() and s["model"] is None
    assert "idt_A" not in json.loads((jobs.folder(run) / "request.json").read_text())["command"]
    s = jobs.resume()  # from the start: there is nothing to resume from
    s = ended(jobs)
    assert (s["state"], s["step"]) == ("finished", 6)


def test_a_second_stop_or_no_answer_kills_and_says_so(tmp_path, tiny_zip):
    """A trainer that does not answer (frozen here with SIGSTOP): a second Stop kills it, and so does the
    supervisor's timeout after one Stop; the state says it was killed and which save stands."""
    jobs = Jobs(tmp_path / "runs", threads=1, stop_timeout=1)
    for stops, why in ((2, "a second Stop"), (1, "no answer to Stop in 1 s")):
        jobs.start("quick", True, 2000, zip_path=str(tiny_zip), save_every=2, **TINY_JOB)
        s = running_at(jobs, 3)
        os.kill(s["pid"], signal.SIGSTOP)
        for _ in range(stops):
            jobs.stop()
        s = ended(jobs)
        assert s["state"] == "stopped" and s["exit_code"] == -signal.SIGKILL
        assert s["message"] == f"killed after {why}; the last save (step {s['checkpoint_step']}) stands"


def test_the_job_outlives_the_process_that_started_it(jobs, tiny_zip):
    """The app that started a job killed (kill -9) mid-run: the job goes on, and the next app process
    reads it running, then finished."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from cyclegan.jobs import Jobs; "
            f"s = Jobs({str(jobs.root)!r}, threads=1).start('quick', True, 30, zip_path={str(tiny_zip)!r}, "
            f"**{TINY_JOB!r}); print(s['run'], flush=True); time.sleep(600)")
    app = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    run = app.stdout.readline().strip()
    running_at(jobs, 2)
    app.kill()
    app.wait()
    assert jobs.running() == run
    s = ended(jobs)
    assert (s["state"], s["step"], s["run"]) == ("finished", 30, run)


def test_a_dataset_is_downloaded_and_checked_before_training(tmp_path, zip_server):
    url, _, _ = zip_server
    jobs = Jobs(tmp_path / "runs", threads=1, datasets_url=url)
    jobs.start("quick", True, 2, dataset="tiny", **TINY_JOB)
    s = ended(jobs)
    assert (s["state"], s["step"]) == ("finished", 2)
    assert s["data"] == "images: trainA 1, trainB 1, testA 1, testB 1; sizes 8×8 to 8×8 px"
    assert (tmp_path / "runs" / ".datasets" / "tiny" / "trainA" / "0.png").is_file()
    jobs.start("quick", True, 2, dataset="broken", **TINY_JOB)
    s = ended(jobs)
    assert s["state"] == "failed" and s["message"].startswith("…/broken.zip: downloaded file is not a valid zip")


def test_a_stop_during_the_download_keeps_what_came_and_the_resume_goes_on(tmp_path, zip_server):
    url, _, requests = zip_server
    jobs = Jobs(tmp_path / "runs", threads=1, datasets_url=url + "/slow")  # 100 kB/s
    run = jobs.start("quick", True, 2, dataset="big", **TINY_JOB)["run"]
    part = tmp_path / "runs" / ".datasets" / "big.zip.part"
    jobs.wait(lambda s: part.is_file() and part.stat().st_size > 0 or s["state"] in ENDED, 60)
    jobs.stop()
    s = ended(jobs, timeout=30)
    kept = part.stat().st_size
    assert s["state"] == "stopped" and s["message"].startswith(f"stopped during the download of {url}/slow/big.zip: "
                                                               f"the ") and s["message"].endswith("; no checkpoint was written")
    assert 0 < kept < len((tmp_path / "served" / "big.zip").read_bytes()) / 2  # stopped well before the end
    jobs.wait(lambda s: jobs.running() is None, 10)
    assert jobs.resume()["run"] == run
    s = ended(jobs)
    assert (s["state"], s["step"]) == ("finished", 2)
    assert requests[-1] == ("/slow/big.zip", f"bytes={kept}-")  # went on from what was kept
    assert Image.open(tmp_path / "runs" / ".datasets" / "big" / "trainA" / "1.png").size == (300, 300)


def test_status_before_any_job_and_names_that_are_not_runs(jobs):
    assert jobs.status() == {"state": "idle", "run": None, "step": 0, "total_steps": 0, "steps_per_s": None,
                             "eta_s": None, "message": "no training job yet", "model": None}
    assert jobs.stop()["message"] == "no job is running"
    for name in ("../etc", "/tmp/x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="is not a run name"):
            jobs.folder(name)
    with pytest.raises(ValueError, match="no run to resume"):
        jobs.resume()
    with pytest.raises(ValueError, match="give either a zip"):
        jobs.start("quick", zip_path="a.zip", dataset="horse2zebra")
    with pytest.raises(ValueError, match="not an official CycleGAN dataset"):
        jobs.start("quick", dataset="cats2dogs")


def test_the_runs_folder_cap_refuses_a_new_run(tmp_path, tiny_zip):
    jobs = Jobs(tmp_path / "runs", max_bytes=1000)
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "checkpoint.pt").write_bytes(b"x" * 2000)
    with pytest.raises(ValueError, match=r"the runs folder holds 0.0 GB, its cap is 0.0 GB \(CYCLEGAN_RUNS_MAX_SIZE\)"):
        jobs.start("quick", zip_path=str(tiny_zip))
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")) == ["old"]


# ---- uploaded zips ------------------------------------------------------------------------------

def png(size=(40, 36)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def write_zip(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if isinstance(data, zipfile.ZipInfo):
                data, info = data.comment, data  # a prepared member: its bytes ride in .comment
                zf.writestr(info, data)
            else:
                zf.writestr(name, data)
    return path


def link(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.comment = target.encode()
    return info


GOOD = {"trainA/a.png": png(), "trainB/b.png": png()}


@pytest.mark.parametrize("members, limits, message", [
    ({"../evil/trainA/a.png": png(), **GOOD}, {}, r"\.\./evil/trainA/a\.png: a path with '\.\.' in the zip"),
    ({"/tmp/evil.png": png(), **GOOD}, {}, r"/tmp/evil\.png: an absolute path in the zip"),
    ({"C:\\evil\\a.png": png(), **GOOD}, {}, r"C:\\evil\\a\.png: an absolute path in the zip"),
    ({"trainA/l.png": link("trainA/l.png", "/etc/passwd"), **GOOD}, {}, r"trainA/l\.png: a link in the zip"),
    ({"trainA/big.png": b"\0" * 3_000_000, **GOOD}, {"unpacked_bytes": 2_000_000},
     r"data\.zip: 3 MB unpacked, more than the limit of 2 MB"),
    ({f"trainA/{i}.png": png() for i in range(6)} | GOOD, {"files": 5}, r"data\.zip: 8 files, more than the limit of 5"),
    (GOOD, {"pixels": 1000}, r"data\.zip: train[AB]/[ab]\.png: 40×36 pixels, above the limit of 0\.001 million"),
    ({"trainB/b.png": png()}, {}, r"data\.zip: no trainA/ folder at its top or one folder down"),
    ({"x/trainA/a.txt": b"notes", "x/trainB/b.png": png()}, {}, r"data\.zip: trainA/ has no readable image"),
    ({"trainA/a.png": b"not a png", "trainB/b.png": png()}, {}, r"data\.zip: trainA/ has no readable image"),
    (GOOD, {"zip_bytes": 100}, r"data\.zip: 0 MB, above the upload limit of 0 MB \(CYCLEGAN_MAX_ZIP_SIZE\)"),
], ids=["zip-slip", "absolute", "drive-letter", "link", "bomb", "too-many-files", "decompression-bomb", "no-trainA",
        "no-image", "unreadable", "too-large"])
def test_a_bad_zip_is_refused_in_one_line_and_nothing_is_unpacked(tmp_path, members, limits, message):
    archive = write_zip(tmp_path / "data.zip", members)
    target = tmp_path / "runs" / "run" / "data"
    target.parent.mkdir(parents=True)
    with pytest.raises(DataError, match=message) as refused:
        unpack_zip(archive, target, Limits(**limits))
    assert "\n" not in str(refused.value)
    assert list(target.parent.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["data.zip", "runs"]


def test_not_a_zip(tmp_path):
    (tmp_path / "photo.zip").write_bytes(png())
    with pytest.raises(DataError, match=r"^photo\.zip: not a zip file$"):
        unpack_zip(tmp_path / "photo.zip", tmp_path / "data", Limits())


def test_a_zip_one_folder_down_is_unpacked_with_what_it_skipped_named(tmp_path):
    members = {"mine/trainA/a.png": png((50, 40)), "mine/trainA/notes.txt": b"hi", "mine/trainB/b.png": png(),
               "mine/trainB/c.png": png((64, 48)), "mine/testB/broken.jpg": b"\xff\xd8 cut",
               "mine/trainB/deeper/d.png": png(), "__MACOSX/mine/trainA/._a.png": b"junk", "mine/other/e.png": png()}
    target = tmp_path / "data"
    report = unpack_zip(write_zip(tmp_path / "mine.zip", members), target, Limits())
    assert report.images == {"trainA": 1, "trainB": 2, "testB": 0}
    assert report.skipped == ["trainA/notes.txt: not an image", "testB/broken.jpg: unreadable"]
    assert report.summary() == ("images: trainA 1, trainB 2, testB 0; sizes 40×36 to 64×48 px; 2 file(s) skipped "
                                "(trainA/notes.txt: not an image; testB/broken.jpg: unreadable)")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "testB", "trainA", "trainA/a.png", "trainB", "trainB/b.png", "trainB/c.png"]


# ---- recipes and the status file ----------------------------------------------------------------

def test_recipes_have_bounds_a_command_and_a_length():
    values = recipes.settings("preview", identity=False, max_steps=0, crop_size=96, load_size=None)
    assert values["crop_size"] == 96 and values["load_size"] == 286 and values["lambda_identity"] == 0.0
    assert recipes.command(["--dataroot", "runs/x/data"], "runs/x", values) == (
        "python train.py --dataroot runs/x/data --output runs/x --ngf 32 --ndf 64 --n-blocks 6 --load-size 286 "
        "--crop-size 96 --epochs 8 --decay-epochs 6 --lambda-identity 0")
    assert recipes.total_steps(values, 1334) == 14 * 1334  # the preview's 18,676 steps on horse2zebra
    assert recipes.total_steps(recipes.settings("quick"), 1334) == 300
    assert recipes.total_steps(recipes.settings("paper", batch_size=4), 1067) == 200 * 266
    for changes, message in (({"crop_size": 16}, "crop size must be between 32 and 512, not 16"),
                             ({"batch_size": 17}, "batch size must be between 1 and 16, not 17"),
                             ({"crop_size": 256, "load_size": 128}, "load size 128 is smaller than the crop size 256")):
        with pytest.raises(ValueError, match=message):
            recipes.settings("quick", **changes)
    with pytest.raises(ValueError, match="recipe must be one of 'quick', 'preview', 'paper', not 'fast'"):
        recipes.settings("fast")
    assert recipes.estimate_line(0.62, 18676) == "≈ 0.62 s a step here: 18,676 steps ≈ 3.2 h"


def test_the_log_tail_is_what_a_person_reads(tmp_path):
    run = tmp_path / "my-run"
    run.mkdir()
    (run / "train.log").write_text(
        f"training on cpu\n  0%|   | 0/9\r 50%|#  | 4/9\r100%|###| 9/9\n\x1b[31mwarning\x1b[0m: slow\n"
        f"SIGINT: saved {run.resolve()}/checkpoint.pt; data in /srv/data/horses/trainA\n")
    assert log_tail(run) == ["training on cpu", "100%|###| 9/9", "warning: slow",
                             "SIGINT: saved my-run/checkpoint.pt; data in …/trainA"]
