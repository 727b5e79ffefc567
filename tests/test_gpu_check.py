"""scripts/gpu_check.sh --dry-run: the GPU check's whole pipeline on the CPU with a tiny model, so that
the one command a GPU machine gets cannot rot; and scripts/pack_dataset.py's archive."""
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open

from cyclegan import CycleGAN
from cyclegan.data import split_validation
from scripts import pack_dataset
from tests.conftest import make_images

ROOT = Path(__file__).resolve().parents[1]
RETURNED = ["gpu_check.log", "grid.jpg", "logs.tar.gz", "model-identity.tar", "model-no-identity.tar",
            "results.json", "runs.tar.gz"]


def test_pack_dataset_leaves_out_the_validation_split(tmp_path):
    source = tmp_path / "h2z"
    make_images(source / "trainA", 9, size=(300, 280), seed=1)
    make_images(source / "trainB", 7, seed=2)
    make_images(source / "testA", 3, seed=3)
    out = tmp_path / "packed.zip"
    pack_dataset.main(["--source", str(source), "--out", str(out), "--val-count", "2", "--test-count", "2",
                       "--size", "64"])
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        held = zf.read("h2z/validation.txt").decode().split()
        meta = json.loads(zf.read("h2z/packed.json"))
        first = Image.open(zf.open(next(n for n in names if n.startswith("h2z/trainA/"))))
    for domain in "AB":  # exactly the images train.py --val-count 2 trains on
        train, val = split_validation(sorted((source / f"train{domain}").iterdir()), 2)
        assert sorted(n for n in names if n.startswith(f"h2z/train{domain}/")) == \
            [f"h2z/train{domain}/{p.stem}.jpg" for p in train]
        assert [h for h in held if h.startswith(f"train{domain}/")] == [f"train{domain}/{p.name}" for p in val]
    assert len([n for n in names if n.startswith("h2z/testA/")]) == 2 and meta["counts"]["trainA"] == 7
    assert first.format == "JPEG" and min(first.size) == 64  # scaled down to the shorter side
    again = tmp_path / "again.zip"
    pack_dataset.main(["--source", str(source), "--out", str(again), "--val-count", "2", "--test-count", "2",
                       "--size", "64"])
    assert again.read_bytes() == out.read_bytes()  # the same input packs to the same bytes


def test_gpu_check_dry_run(tmp_path):
    archive = tmp_path / "synthetic.zip"
    pack_dataset.main(["--synthetic", "--out", str(archive)])
    out = tmp_path / "out"
    # --cuda-graphs, which the CPU refuses: each training run fails at once and runs again without them
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "GPU_CHECK_ARCHIVE": str(archive),
           "GPU_CHECK_SECONDS": "600", "TMPDIR": str(tmp_path), "GPU_CHECK_TRAIN": "--cuda-graphs"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # What the GPU machine returns: at most 8 files of at most 16 MiB, directly in OUT_DIR.
    assert sorted(p.name for p in out.iterdir()) == RETURNED
    assert all(p.is_file() and p.stat().st_size <= 16 * 2**20 for p in out.iterdir())
    results = json.loads((out / "results.json").read_text())
    assert results["dry_run"] and {s["step"]: s["status"] for s in results["steps"]} == {
        name: "ok" for name in ("info", "pace", "tests", "bench", "unpack", "train-identity", "train-no-identity",
                                "export")} and results["failed"] == []
    profile = results["pace_bench"]["profile"]  # Trainer beside the plain loop, for both layouts
    assert [(r["setup"].split(",")[0], r["loop"].split(" ")[0]) for r in profile] == [
        ("previews' layout", "plain"), ("previews' layout", "Trainer"), ("paper's layout", "plain"),
        ("paper's layout", "Trainer")]
    assert all(r["aten_calls"] > 100 and r["wall_ms"]["median"] > 0 for r in profile)
    assert [r["batch_size"] for r in results["pace_bench"]["batches"]] == [1, 2]
    log = (out / "gpu_check.log").read_text()
    assert "plan: " in log  # the schedule was planned from the measured rate
    for run in ("identity", "no-identity"):
        assert re.search(rf"== train-{run}: exit status [1-9]\d* with --cuda-graphs; again without them", log), run
    assert results["machine"]["imports_outside_the_machine"] == []
    assert results["tests"]["counts"]["skipped"] >= 10 and not results["tests"]["failed"]  # collected, skipped
    assert results["bench"]["training"] and results["bench"]["training"][0]["config"] == "ngf 8, 2 blocks, 32 px"
    runs = {t["run"]: t for t in results["training"]}
    assert runs["identity"]["lambda_identity"] == 0.5 and runs["no-identity"]["lambda_identity"] == 0.0
    assert all(t["steps"] == 2 and t["device"] == "cpu" and t["last_losses"]["cycle_A"] > 0 for t in runs.values())
    assert "idt_A" in runs["identity"]["last_losses"] and "idt_A" not in runs["no-identity"]["last_losses"]

    for name in ("identity", "no-identity"):  # loadable float16 model folders that say where they came from
        with tarfile.open(out / f"model-{name}.tar") as tar:  # the raw generators and their moving average
            files = sorted(m.name for m in tar.getmembers() if m.isfile())
            assert files == sorted(f"{run}/{f}" for run in (name, f"{name}-ema")
                                   for f in ("README.md", "config.json", "model.safetensors"))
            tar.extractall(tmp_path / "returned", filter="data")
        models = []
        for folder in (tmp_path / "returned" / name, tmp_path / "returned" / f"{name}-ema"):
            with safe_open(folder / "model.safetensors", "pt") as f:
                assert f.metadata()["dtype"] == "float16"
            models.append(CycleGAN.from_pretrained(folder))
            assert models[-1].config.ngf == 8 and models[-1].info["steps"] == 2
            assert "--dry-run" in models[-1].info["gpu_check"]["command"]
            assert models[-1].translate(Image.new("RGB", (40, 32), "gray")).size == (40, 32)
        raw, ema = (m.state_dict() for m in models)
        assert models[1].info["weights"] == "moving average of the generators (decay 0.9)"
        assert "weights" not in models[0].info
        assert any(not torch.equal(raw[k], ema[k]) for k in raw if k.startswith("G_AB."))  # two steps apart from it
    grid = Image.open(out / "grid.jpg")  # all four models: 4 blocks of x | G(x) | F(G(x)), 2 test images each way
    assert grid.size == (4 * 3 * 32 + 3 * 8, 24 + 4 * 32)
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    for name in ("identity", "no-identity"):
        assert {f"{name}/losses.csv", f"{name}/model/config.json", f"{name}/samples/step_0000002.png"} <= set(names)
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"logs/tests.log", "logs/bench.log", "logs/train-identity.log", "logs/steps.tsv"} <= set(tar.getnames())


def test_gpu_check_fails_when_its_stages_fail(tmp_path):
    """With a Python that has no torch every stage fails: the script still runs them all, reports
    them in results.json, and exits non-zero."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    archive = tmp_path / "synthetic.zip"
    pack_dataset.main(["--synthetic", "--out", str(archive)])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(tmp_path / "bare" / "bin" / "python"), "GPU_CHECK_ARCHIVE": str(archive),
           "GPU_CHECK_SECONDS": "120", "TMPDIR": str(tmp_path)}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {"info (failed)", "pace (failed)", "bench (failed)", "train-identity (failed)"} <= set(results["failed"])
    assert "failed: info (failed), pace (failed)" in result.stdout


def test_gpu_check_help_and_usage(tmp_path):
    """--help prints what the script does; a flag it does not know is a usage error, not an OUT_DIR."""
    script = str(ROOT / "scripts" / "gpu_check.sh")
    shown = subprocess.run(["bash", script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "OUT_DIR" in shown.stdout and "GPU_CHECK_SECONDS" in shown.stdout
    wrong = subprocess.run(["bash", script, "--dryrun"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and wrong.stderr.startswith("usage:")
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_the_fast_path_is_the_fastest_variant_and_the_plan_trains_with_it(tmp_path, capsys):
    """bench.py's pace() takes the variant of the step with the smallest time relative to plain Trainer
    over both models; gpu_check.py plan gives the training runs that variant's flags and a schedule
    from the measured batch rate."""
    from benchmarks.sections.pace import pace
    from benchmarks.sections.profiling import FAST_PATHS
    from scripts import gpu_check
    ms = {"plain loop (reference.PlainLoop)": (110, 90), "Trainer": (75, 60), "Trainer, NCHW": (60, 55),
          "Trainer + CUDA graphs": (30, 12), "Trainer + CUDA graphs, NCHW": (20, 14)}  # (paper, previews)
    profile = [{"setup": setup, "loop": loop, "wall_ms": {"median": both[i]}}
               for loop, both in ms.items() for i, setup in enumerate(("paper's model, 256 px", "previews' model, 256 px"))]
    p = pace(profile)
    # graphs NCHW: 20/75 + 14/60 = 0.50; graphs: 30/75 + 12/60 = 0.60
    assert p["fast_path"] == "Trainer + CUDA graphs, NCHW" and p["cuda_graphs"]
    assert p["train_flags"] == ["--cuda-graphs", "--memory-format", "nchw"]
    assert p["paper_batch1_s_per_step"] == 0.020 and round(p["preview_batch1_steps_per_s"], 2) == 71.43
    assert p["plain"]["paper_batch1_s_per_step"] == 0.110 and set(p["variants"]) == set(FAST_PATHS)
    without_graphs = pace([r for r in profile if "graphs" not in r["loop"]])  # the check failed: not timed
    assert without_graphs["fast_path"] == "Trainer, NCHW" and not without_graphs["cuda_graphs"]
    assert without_graphs["train_flags"] == ["--memory-format", "nchw"]

    make_images(tmp_path / "data" / "trainA", 12, seed=1)
    make_images(tmp_path / "data" / "trainB", 8, seed=2)
    bench = tmp_path / "pace.json"
    bench.write_text(json.dumps({"pace": p, "batches": [{"model": "previews' model", "batch_size": 4,
                                                         "steps_per_s": 10.0}]}))
    gpu_check.main(["plan", "--bench", str(bench), "--seconds", "160", "--dataroot", str(tmp_path / "data"),
                    "--batch-size", "4", "--share", "0.5", "--startup", "10"])
    # 150 s at 5 steps/s over 3 steps an epoch: 250 epochs, half at the full rate, half decaying
    assert capsys.readouterr().out.split() == ["--epochs", "125", "--decay-epochs", "125", "--cuda-graphs",
                                               "--memory-format", "nchw"]
    bench.write_text(json.dumps({"pace": p, "batches": [{"model": "previews' model", "batch_size": 4,
                                                         "steps_per_s": 10.0, "graphed": False}]}))
    gpu_check.main(["plan", "--bench", str(bench), "--seconds", "160", "--dataroot", str(tmp_path / "data"),
                    "--batch-size", "4", "--startup", "10"])
    # that batch size's capture failed in the sweep: no --cuda-graphs, and the eager default share, 0.6
    assert capsys.readouterr().out.split() == ["--epochs", "150", "--decay-epochs", "150", "--memory-format", "nchw"]


def test_the_graph_check_runs_in_a_process_of_its_own():
    """bench.py's check of --cuda-graphs runs in a spawned process (a GPU fault there cannot poison the
    benchmark's CUDA context) and comes back as a record; on the CPU every layout fails with the reason."""
    from benchmarks.sections.profiling import check_graphs
    r = check_graphs(torch.device("cpu"))
    assert set(r) == {"channels_last", "nchw"}
    for layout in r.values():
        assert not layout["ok"] and "--cuda-graphs needs a CUDA device" in layout["none"]["error"]
    hung = check_graphs(torch.device("cpu"), timeout=0.05)  # no answer in time: each process is ended
    assert hung["nchw"] == {"ok": False, "error": "the check's process ended: TimeoutError: no answer in 0.05 s"}
