"""The training step, the loop, checkpoints and resume, train.py, and DDP on CPU."""
import contextlib
import copy
import csv
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.sections.profiling import in_fused_adam
from cyclegan import CycleGAN
from cyclegan.runstatus import read_status
from cyclegan.training import Trainer, TrainConfig, load_checkpoint, lr_factor, train
from cyclegan.training.graphs import CaptureBroken, StepGraph, undone
from cyclegan.training.signals import StopSignals
from tests.conftest import TINY, TINY_FLAGS, free_port, measured_precision, run_python

ROOT = Path(__file__).resolve().parents[1]


def batch(seed: int = 0, n: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, "B": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1}


def run(args: list[str]) -> subprocess.CompletedProcess:
    return run_python(["train.py", *args])


def test_train_step_updates_every_network_with_finite_losses():
    trainer = Trainer(TrainConfig(), TINY)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    losses = trainer.train_step(batch())
    assert set(losses) == {"G_AB", "G_BA", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        net = getattr(trainer.model, name)
        changed = [not torch.equal(before[f"{name}.{k}"], v) for k, v in net.state_dict().items()]
        assert all(changed), f"{name}: some parameters did not change"
    assert trainer.step == 1
    # The discriminators are left trainable for the next step.
    assert all(p.requires_grad for p in trainer.model.D_A.parameters())


def test_identity_off_skips_the_identity_passes():
    calls = []
    trainer = Trainer(TrainConfig(lambda_identity=0), TINY)
    for name in ("G_AB", "G_BA"):
        getattr(trainer.model, name).register_forward_hook(lambda m, i, o, name=name: calls.append((name, len(i[0]))))
    losses = trainer.train_step(batch(n=2))
    assert "idt_A" not in losses and "idt_B" not in losses
    assert sorted(calls) == [("G_AB", 2), ("G_AB", 2), ("G_BA", 4)]  # G_BA's fake and reconstruction batched
    calls.clear()
    trainer.config.lambda_identity = 0.5
    trainer.train_step(batch(n=2))
    assert sorted(calls) == [("G_AB", 2), ("G_AB", 4), ("G_BA", 6)]  # and G(x) with the identity G(y)


def test_batched_identity_call_matches_separate_calls():
    trainer = Trainer(TrainConfig(), TINY)
    b = batch(n=2)
    with torch.no_grad():
        together = trainer.model.G_AB(torch.cat([b["A"], b["B"]]))
        separate = torch.cat([trainer.model.G_AB(b["A"]), trainer.model.G_AB(b["B"])])
    assert torch.allclose(together, separate, atol=1e-5)


def test_bf16_autocast_on_the_cpu():
    trainer = Trainer(TrainConfig(amp="bf16"), TINY)
    dtypes = set()
    trainer.model.G_AB.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    losses = trainer.train_step(batch())
    reference = Trainer(TrainConfig(amp="none"), TINY).train_step(batch())
    assert dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # the weights stay fp32
    for name, value in losses.items():  # same initialisation and batch: the losses agree to bf16 precision
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert value.item() == pytest.approx(reference[name].item(), rel=0.05, abs=0.02), name
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        Trainer(TrainConfig(amp="fp16", device="cpu"), TINY)


def state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Copies of every weight and every optimiser state tensor."""
    out = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for name, opt in (("G", trainer.opt_G), ("D", trainer.opt_D)):
        for i, p in enumerate(opt.param_groups[0]["params"]):
            out.update({f"opt_{name}.{i}.{k}": v.clone() for k, v in opt.state.get(p, {}).items()})
    return out


def changed(before: dict, after: dict, prefix: str | tuple = "") -> list[str]:
    """Keys whose tensors differ; optimiser state created by a skipped step must be all zeros, as new."""
    return [k for k, v in after.items() if k.startswith(prefix)
            and not torch.equal(before.get(k, torch.zeros_like(v)), v)]


def nan_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    bad = batch(seed)
    bad["A"][0, 0, 0, 0] = float("nan")
    return bad


def test_a_non_finite_loss_changes_nothing_and_stops_at_the_next_read():
    trainer = Trainer(TrainConfig(on_nan="stop", amp="none"), TINY)
    trainer.train_step(batch())
    assert trainer.tally.check_finite() == 0
    before = state(trainer)
    trainer.train_step(nan_batch())  # nothing is read back during a step: no error yet
    trainer.train_step(nan_batch(2))
    assert changed(before, state(trainer)) == []  # weights, Adam's moments and step counts
    with pytest.raises(FloatingPointError, match=r"^step 2: the generator loss is nan; its update was skipped"):
        trainer.tally.check_finite()


def test_on_nan_skip_counts_the_skipped_steps_and_leaves_them_out_of_the_means(capsys):
    trainer = Trainer(TrainConfig(on_nan="skip", amp="none"), TINY)
    first = trainer.train_step(batch())
    before = state(trainer)
    trainer.train_step(nan_batch())
    assert changed(before, state(trainer)) == []
    third = trainer.train_step(batch(3))
    assert changed(before, state(trainer), "G_AB.") and changed(before, state(trainer), "opt_G.")
    assert trainer.tally.check_finite() == 1
    assert "step 2: the generator loss is nan; skipped 1 such step(s) since the last check, 1 in all" in capsys.readouterr().err
    assert trainer.tally.check_finite() == 1  # said once
    means = trainer.tally.read()
    assert means["skipped_steps"] == 1
    for k in first:
        assert means[k] == pytest.approx((first[k].item() + third[k].item()) / 2, rel=1e-5), k
    assert trainer.tally.read() == {"skipped_steps": 1}  # a new window: no finite step yet
    assert trainer.state_dict()["skipped_steps"] == 1


def test_a_bad_discriminator_loss_stops_or_skips_only_the_discriminators():
    def nan_on_the_discriminator_step(module, inputs, output):
        # The D step sees real and fake images in one batch of 2; the generator step one fake.
        return output * float("nan") if len(inputs[0]) == 2 else output

    for on_nan in ("stop", "skip"):
        trainer = Trainer(TrainConfig(on_nan=on_nan, amp="none"), TINY)
        trainer.model.D_A.register_forward_hook(nan_on_the_discriminator_step)
        before = state(trainer)
        trainer.train_step(batch())
        after = state(trainer)
        assert changed(before, after, ("D_A.", "D_B.", "opt_D.")) == []
        assert changed(before, after, "G_AB.") and trainer.step == 1
        if on_nan == "stop":
            with pytest.raises(FloatingPointError, match="step 1: the discriminator loss is nan"):
                trainer.tally.check_finite()
        else:
            assert trainer.tally.check_finite() == 1


def test_no_value_is_read_back_between_log_windows(dataroot, tmp_path, monkeypatch):
    """Whole runs inside one epoch: 4 more steps (two more --log-every windows) add exactly the two
    reads of each window (LossTally.check_finite and read), nothing per step. Reads are scalar reads
    seen by torch.profiler (.item(), bool(), float()) and .tolist()/.numpy() calls, which it does not see."""
    calls = []
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _f=original, **k: calls.append(1) or _f(t, *a, **k))

    def reads(steps: int) -> int:
        config = TrainConfig(dataroot=str(dataroot), output=str(tmp_path / f"run{steps}"), max_steps=steps,
                             log_every=2, save_every=1000, sample_every=1000, workers=0, crop_size=32, load_size=36,
                             epochs=10, amp="none")
        calls.clear()
        with torch.profiler.profile() as prof:
            train(config, TINY)
        return len(calls) + sum(e.name == "aten::_local_scalar_dense" and not in_fused_adam(e) for e in prof.events())

    assert reads(6) - reads(2) == 4


def test_amp_auto_is_measured_recorded_and_kept_on_resume(monkeypatch):
    timed = measured_precision(monkeypatch, 1.0, 1.3)  # bf16 slower on this "CPU": float32
    trainer = Trainer(TrainConfig(amp="auto"), TINY)
    assert trainer.amp_dtype is None and trainer.precision == ("fp32 (auto: measured at 128 px: fp32 1000 ms, "
                                                               "bf16 1300 ms a training step)")
    assert timed == [("Generator", True)] and trainer.state_dict()["amp"] == "none"
    measured_precision(monkeypatch, 1.0, 0.4)  # faster
    trainer = Trainer(TrainConfig(amp="auto"), TINY)
    assert trainer.amp_dtype == torch.bfloat16 and "bf16 1000 ms" not in trainer.precision
    assert trainer.precision == "bf16 autocast (auto: measured at 128 px: fp32 1000 ms, bf16 400 ms a training step)"
    resumed = Trainer(TrainConfig(amp="auto"), TINY, recorded_amp="none")  # the checkpoint's choice wins
    assert resumed.amp_dtype is None and "recorded in the checkpoint" in resumed.precision
    assert Trainer(TrainConfig(amp="bf16"), TINY).precision == "bf16 autocast"
    measured_precision(monkeypatch, 1.0, None)  # --amp bf16 asked for on a CPU that emulates it: said so
    trainer = Trainer(TrainConfig(amp="bf16"), TINY)
    assert trainer.amp_dtype == torch.bfloat16 and "emulated" in trainer.precision
    assert Trainer(TrainConfig(amp="none"), TINY).amp_dtype is None  # "none" stays fp32 on any CPU


def test_the_loss_plot_of_a_log_with_scores_before_losses(tmp_path):
    """A run resumed into a due validation logs scores before any losses: the plot is still drawn, and
    without matplotlib's "no artists with labels" warning in the middle of the progress bar."""
    import warnings

    from cyclegan.runlog import LossLog
    log = LossLog(tmp_path, resume_step=0)
    log.write(2, 0.5, {"val_fid_A2B": 250.0, "val_fid_B2A": 240.0}, lr=2e-4, seconds=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log.plot()
    with open(tmp_path / "losses.csv", newline="") as f:
        assert [r["val_fid_A2B"] for r in csv.DictReader(f)] == ["250.00000"]
    assert (tmp_path / "losses.png").stat().st_size > 1000


def test_ema_is_the_moving_average_of_the_generators():
    trainer = Trainer(TrainConfig(ema_decay=0.75, amp="none"), TINY)
    start = {k: v.clone() for k, v in trainer.model.G_AB.state_dict().items()}
    assert all(torch.equal(v, trainer.ema.G_AB.state_dict()[k]) for k, v in start.items())
    trainer.train_step(batch())
    after = trainer.model.G_AB.state_dict()
    for k, v in trainer.ema.G_AB.state_dict().items():
        assert torch.allclose(v, 0.75 * start[k] + 0.25 * after[k], atol=1e-6), k
    assert not any(p.requires_grad for p in trainer.ema.parameters())
    assert Trainer(TrainConfig(), TINY).ema is None  # off by default (the paper has none)


def test_validation_images_are_held_out_the_same_for_any_seed(dataroot):
    from cyclegan.data import UnpairedDataset
    a = UnpairedDataset(dataroot, crop_size=32, load_size=36, seed=0, val_count=2)
    b = UnpairedDataset(dataroot, crop_size=32, load_size=36, seed=5, val_count=2)
    assert (a.val_A, a.val_B) == (b.val_A, b.val_B) and len(a.val_A) == len(a.val_B) == 2
    assert len(a.files_A) == 3 and len(a.files_B) == 5 and len(a) == 5
    assert not set(a.val_A) & set(a.files_A) and not set(a.val_B) & set(a.files_B)
    assert UnpairedDataset(dataroot, val_count=0).val_A == []
    with pytest.raises(ValueError, match="trainA: holding out 5 validation images leaves none of its 5"):
        UnpairedDataset(dataroot, val_count=5)


def test_eval_every_logs_validation_scores_and_keeps_the_best(dataroot, tmp_path, monkeypatch):
    import cyclegan.evaluate
    seen, fids = [], iter([300.0, 200.0, 250.0, 400.0])  # raw, ema at step 2; raw, ema at step 4

    def fake_evaluate(model, files, cache, progress):
        seen.append({d: [p.name for p in files[d]] for d in "AB"})
        value = next(fids)
        return {d: {"fid": value, "kid": value / 1000} for d in ("A2B", "B2A")}
    monkeypatch.setattr(cyclegan.evaluate, "evaluate", fake_evaluate)
    out = tmp_path / "run"
    train(config_for(dataroot, out, max_steps=4, val_count=2, eval_every=2, ema_decay=0.9), TINY)
    listed = (out / "validation.txt").read_text().split()
    assert len(listed) == 4 and all(p.startswith(("trainA/", "trainB/")) for p in listed)
    assert [f"train{d}/{n}" for d in "AB" for n in seen[0][d]] == listed  # validation = the held-out files
    with open(out / "losses.csv") as f:
        scored = [r for r in csv.DictReader(f) if r["val_fid_A2B"]]
    assert [(r["step"], float(r["val_fid_A2B"]), float(r["ema_val_fid_B2A"])) for r in scored] == \
        [("2", 300.0, 200.0), ("4", 250.0, 400.0)]
    best = CycleGAN.from_pretrained(out / "best")
    assert best.info["best"]["step"] == 2 and best.info["best"]["weights"] == "ema"
    assert best.info["best"]["val_fid"] == 400.0 and load_checkpoint(out)["best"]["step"] == 2
    # The run's final model/ is the raw step-4 generator; best/ holds other (averaged, earlier) weights.
    final = CycleGAN.from_pretrained(out / "model")
    assert not all(torch.equal(v, final.state_dict()[k]) for k, v in best.state_dict().items())


def test_a_stop_during_validation_cuts_it_short_and_the_resume_runs_it_first(dataroot, tmp_path, monkeypatch, capsys):
    """A validation takes minutes on a CPU: the first stop signal ends it at once rather than after it,
    and the step is saved with its validation due, which the resumed run measures before training on."""
    import cyclegan.evaluate
    calls = []

    def slow_evaluate(model, files, cache, progress):
        calls.append(model)
        if len(calls) == 1:  # the first validation (step 2): a stop arrives during it
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)  # the measuring the signal cuts short
            raise AssertionError("the stop signal did not end the validation")
        return {d: {"fid": 100.0 * len(calls), "kid": 0.1} for d in ("A2B", "B2A")}
    monkeypatch.setattr(cyclegan.evaluate, "evaluate", slow_evaluate)
    out = tmp_path / "run"
    config = config_for(dataroot, out, max_steps=4, val_count=2, eval_every=2)
    started = time.monotonic()
    train(config, TINY)
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "SIGTERM: validation at step 2 cut short; it runs first on --resume" in err
    assert f"SIGTERM: saved {out / 'checkpoint.pt'} at step 2" in err
    state = load_checkpoint(out)
    assert state["step"] == 2 and state["validation_due"] is True and "best" not in state
    assert not (out / "best").exists()

    train(dataclasses.replace(config, resume=str(out)), TINY, state)
    assert len(calls) == 3  # step 2's validation again, then step 4's
    with open(out / "losses.csv") as f:
        scored = [(r["step"], float(r["val_fid_A2B"])) for r in csv.DictReader(f) if r["val_fid_A2B"]]
    assert scored == [("2", 200.0), ("4", 300.0)]
    state = load_checkpoint(out)
    assert state["step"] == 4 and "validation_due" not in state and state["best"]["step"] == 2
    assert CycleGAN.from_pretrained(out / "best").info["best"]["step"] == 2


def test_eval_every_needs_validation_images(dataroot, tmp_path):
    with pytest.raises(ValueError, match="--eval-every needs validation images"):
        train(config_for(dataroot, tmp_path / "run", max_steps=2, eval_every=2), TINY)


def test_lr_schedule_is_constant_then_linear_to_zero():
    assert lr_factor(0, 10, 2, 2) == 1.0
    assert lr_factor(19, 10, 2, 2) == 1.0
    assert lr_factor(30, 10, 2, 2) == pytest.approx(0.5)
    assert lr_factor(40, 10, 2, 2) == 0.0


def config_for(dataroot: Path, output: Path, **kw) -> TrainConfig:
    return TrainConfig(dataroot=str(dataroot), output=str(output), load_size=36, crop_size=32, workers=0,
                       device="cpu", epochs=1, decay_epochs=1, save_every=2, sample_every=100, log_every=1, **kw)


def test_resume_matches_an_uninterrupted_run(dataroot, tmp_path):
    # 7 steps per epoch, so 9 steps cross an epoch boundary and the lr decay begins.
    whole = train(config_for(dataroot, tmp_path / "whole", max_steps=9, ema_decay=0.9), TINY)
    train(config_for(dataroot, tmp_path / "split", max_steps=4, ema_decay=0.9), TINY)
    state = load_checkpoint(tmp_path / "split")
    assert state["step"] == 4
    config = config_for(dataroot, tmp_path / "split", max_steps=9, resume=str(tmp_path / "split"), ema_decay=0.9)
    train(config, TINY, state)
    a, b = load_checkpoint(whole), load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 9
    for name in ("G_AB", "G_BA", "D_A", "D_B", "G_AB_ema", "G_BA_ema"):
        for k, v in a[name].items():
            assert torch.allclose(v, b[name][k], atol=1e-6), f"{name}.{k}"
    assert len(a["pool_A"]["images"]) == len(b["pool_A"]["images"]) == 9
    with open(tmp_path / "split" / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    seconds = [float(r["seconds"]) for r in rows]
    assert seconds == sorted(seconds) and b["seconds"] >= seconds[3]  # time adds up across the resume
    assert a["opt_G"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * (1 - 1 / 7))


def test_a_second_signal_stops_at_once_and_keeps_the_last_save(dataroot, tmp_path, monkeypatch, capsys):
    """A second Ctrl-C arrives mid-step (G updated, D not, the step not counted): nothing of that step
    may reach checkpoint.pt, which keeps the last save whole."""
    step = Trainer.train_step

    def cut_short(self, batch):
        if self.step == 5:
            with torch.no_grad():
                next(self.model.G_AB.parameters()).add_(1.0)  # half a step's worth of change
            raise KeyboardInterrupt  # what StopSignals raises on a second signal
        return step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", cut_short)
    with pytest.raises(KeyboardInterrupt):
        train(config_for(dataroot, tmp_path / "run", max_steps=9), TINY)  # saves every 2 steps
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] == 4
    assert "stopped at once: the last save stands (step 4); continue with --resume" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "train_step", step)
    whole = train(config_for(dataroot, tmp_path / "whole", max_steps=4), TINY)
    assert all(torch.equal(v, load_checkpoint(whole)["G_AB"][k]) for k, v in state["G_AB"].items())


def test_stop_signals_ask_once_then_interrupt():
    """The real handlers: the first signal is a request the loop reads; the second interrupts."""
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_each_save_completes_the_model_folder_before_the_checkpoint(dataroot, tmp_path, monkeypatch):
    # A kill right after checkpoint.pt appears must still leave a loadable model/ of that step or later.
    import cyclegan.training.loop as loop
    seen = []

    def checking_save(state, path):
        model = CycleGAN.from_pretrained(path.parent / "model")
        seen.append((state["step"], model.info["steps"]))
        return save_checkpoint(state, path)

    save_checkpoint = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", checking_save)
    train(config_for(dataroot, tmp_path / "run", max_steps=4), TINY)
    assert seen == [(2, 2), (4, 4)]


def test_train_py_writes_every_output_and_resumes(dataroot, tmp_path):
    out = tmp_path / "run"
    result = run(["--dataroot", str(dataroot), "--max-steps", "4", "--output", str(out), "--sample-every", "2",
                  "--log-every", "2", *TINY_FLAGS])
    assert result.returncode == 0, result.stderr
    assert "4/" in result.stderr and "step/s" in result.stderr  # the progress bar
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["model_config"]["ngf"] == 8 and state["train_config"]["crop_size"] == 32
    assert {"G_AB", "G_BA", "D_A", "D_B", "opt_G", "opt_D", "pool_A", "pool_B", "rng_cpu"} <= set(state)
    model = CycleGAN.from_pretrained(out / "model")
    assert model.config.domain_A == "A" and model.info["steps"] == 4
    assert (out / "model" / "README.md").read_text().startswith("---")
    with open(out / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4"] and float(rows[0]["cycle_A"]) > 0
    assert (out / "losses.png").stat().st_size > 1000
    grids = sorted(p.name for p in (out / "samples").iterdir())
    assert grids == ["step_0000002.png", "step_0000004.png"]
    from PIL import Image
    assert Image.open(out / "samples" / grids[0]).size == (6 * 32 + 8, 2 * 32)  # 2 test images per domain

    result = run(["--resume", str(out), "--max-steps", "6", "--lr", "1e-4"])  # a flag given with --resume wins
    assert result.returncode == 0, result.stderr
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and state["train_config"]["lr"] == 1e-4
    assert state["opt_G"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # still in the constant phase
    assert torch.load(out / "checkpoint.prev.pt", weights_only=True)["step"] == 4  # the save before
    result = run(["--resume", str(out), "--ngf", "16", "--max-steps", "8"])
    assert result.returncode == 1 and "--ngf 16 (checkpoint: 8)" in result.stderr


def test_train_py_names_the_domains(dataroot, tmp_path):
    out = tmp_path / "run"
    result = run(["--dataroot", str(dataroot), "--output", str(out), "--max-steps", "1", "--domain-A", "summer",
                  "--domain-B", "winter", *TINY_FLAGS])
    assert result.returncode == 0, result.stderr
    model = CycleGAN.from_pretrained(out / "model")
    assert model.domains("A2B") == ("summer", "winter") and "summer ↔ winter" in (out / "model" / "README.md").read_text()


def test_train_py_downloads_a_dataset(tmp_path, zip_server):
    url, _, _ = zip_server
    result = run(["--dataset", "tiny", "--dataset-url", url, "--data-dir", str(tmp_path / "ds"), "--max-steps", "1",
                  "--output", str(tmp_path / "run"), *TINY_FLAGS])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ds" / "tiny" / "trainA").is_dir() and (tmp_path / "run" / "checkpoint.pt").is_file()


def test_ctrl_c_during_the_download_says_so_and_the_next_run_goes_on(tmp_path, zip_server):
    url, _, requests = zip_server
    args = [sys.executable, "train.py", "--dataset", "big", "--dataset-url", f"{url}/slow", "--data-dir",
            str(tmp_path / "ds"), "--max-steps", "1", "--output", str(tmp_path / "run"), *TINY_FLAGS]
    part = tmp_path / "ds" / "big.zip.part"
    child = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)  # 100 kB/s: seconds
    deadline = time.monotonic() + 120
    while not (part.is_file() and part.stat().st_size > 0) and child.poll() is None:
        assert time.monotonic() < deadline, "the download never began"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    err = child.communicate(timeout=60)[1]
    assert child.returncode == 130 and "interrupted while fetching big; the next run goes on from what was received" in err
    assert "Traceback" not in err and part.stat().st_size > 0
    kept = part.stat().st_size
    result = run(args[2:])
    assert result.returncode == 0, result.stderr
    assert requests[-1] == ("/slow/big.zip", f"bytes={kept}-") and (tmp_path / "run" / "checkpoint.pt").is_file()


def test_train_py_bad_data_is_a_one_line_error(tmp_path):
    result = run(["--dataroot", str(tmp_path / "nowhere"), *TINY_FLAGS])
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'nowhere' / 'trainA'}: no such folder"
    (tmp_path / "empty" / "trainA").mkdir(parents=True)
    (tmp_path / "empty" / "trainB").mkdir()
    result = run(["--dataroot", str(tmp_path / "empty"), *TINY_FLAGS])
    assert result.returncode == 1 and "trainA: contains no images" in result.stderr
    assert "Traceback" not in result.stderr


def test_push_to_hub_without_a_token_stops_before_training(dataroot, tmp_path, monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))  # no stored token either
    result = run(["--dataroot", str(dataroot), "--output", str(tmp_path / "run"), "--push-to-hub", "me/tiny",
                  "--max-steps", "2", *TINY_FLAGS])
    assert result.returncode == 1 and "--push-to-hub me/tiny: no Hugging Face token" in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_failed_push_after_training_keeps_the_run_and_says_failed(dataroot, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    out = tmp_path / "run"
    result = run(["--dataroot", str(dataroot), "--output", str(out), "--push-to-hub", "me/tiny", "--max-steps", "2",
                  *TINY_FLAGS])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert load_checkpoint(out)["step"] == 2 and (out / "model" / "model.safetensors").exists()
    status = read_status(out)
    assert status["state"] == "failed" and status["step"] == 2
    assert status["message"].startswith("trained to step 2 and saved, but the push to me/tiny failed: "), status


def test_a_push_interrupted_after_training_says_stopped(dataroot, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test")

    def interrupted(self, repo_id):
        raise KeyboardInterrupt
    monkeypatch.setattr(CycleGAN, "push_to_hub", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config_for(dataroot, out, max_steps=2, push_to_hub="me/tiny"), TINY)
    status = read_status(out)
    assert (status["state"], status["step"]) == ("stopped", 2) and load_checkpoint(out)["step"] == 2
    assert status["message"] == ("trained to step 2 and saved, but the push to me/tiny was interrupted (retry: "
                                 "python -m cyclegan.hub push run/model me/tiny)")  # status.json names no absolute path


def test_ddp_with_two_cpu_processes(dataroot, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "train.py"),
                             "--dataroot", str(dataroot), "--output", str(out), "--max-steps", "4",
                             "--log-every", "1", *TINY_FLAGS], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(out)
    assert state["step"] == 4
    with open(out / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    # 7 images split between 2 ranks: 3 steps per epoch, so step 3 ends epoch 1.
    assert [r["epoch"] for r in rows[:3]] == ["0.3333", "0.6667", "1.0000"]
    assert len(rows) == 4  # only rank 0 writes


def test_data_on_the_device_trains_exactly_as_the_loader(dataroot, tmp_path):
    """--data-on-device yes: the same batches, so the same weights after a run across an epoch's end."""
    weights = {}
    for on_device in ("yes", "no"):
        config = TrainConfig(dataroot=str(dataroot), output=str(tmp_path / on_device), max_steps=9, workers=0,
                             crop_size=32, load_size=36, epochs=10, amp="none", data_on_device=on_device, seed=4,
                             save_every=1000, sample_every=1000)
        weights[on_device] = CycleGAN.from_pretrained(train(config, TINY) / "model").state_dict()
    assert weights["yes"].keys() == weights["no"].keys()
    assert all(torch.equal(weights["yes"][k], weights["no"][k]) for k in weights["no"])


def assert_same_training_state(want: Trainer, got: Trainer) -> None:
    """The same losses since the last read, and bit-identical weights, averages, optimiser states and pools."""
    assert want.tally.read() == got.tally.read()
    a_state, b_state = want.state_dict(), got.state_dict()
    flat = lambda d: [v for v in torch.utils._pytree.tree_leaves(d) if isinstance(v, torch.Tensor)]  # noqa: E731
    for key in ("G_AB", "G_BA", "D_A", "D_B", "G_AB_ema", "opt_G", "opt_D", "pool_A", "pool_B"):
        a, b = flat(a_state[key]), flat(b_state[key])
        assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b)), key


def test_the_graph_warm_up_leaves_no_trace_and_the_lr_tensor_is_read():
    """What --cuda-graphs relies on, on the CPU (the capture itself needs CUDA: tests/test_cuda.py):
    warm-up steps inside `undone()` change nothing a later step sees, and the learning
    rate lives in a tensor that the optimiser reads at each step (a replayed graph reads it too)."""
    g = torch.Generator().manual_seed(0)
    batches = [{d: torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for d in "AB"} for _ in range(5)]
    config = TrainConfig(amp="none", pool_size=2, ema_decay=0.9)
    plain, warmed = Trainer(config, TINY, graph_ready=True), Trainer(config, TINY, graph_ready=True)
    for i, b in enumerate(batches):
        if i in (0, 3):  # before the first step (state built lazily) and with the pools full
            with undone(warmed):
                for _ in range(3):
                    warmed.step_on(b["A"], b["B"])
        plain.train_step(b)
        warmed.train_step(b)
        for t in (plain, warmed):
            t.set_lr(0.5)
    assert_same_training_state(plain, warmed)
    lr = plain.opt_G.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.item() == pytest.approx(1e-4)
    plain.set_lr(0.0)
    before = state(plain)
    plain.train_step(batches[0])
    assert changed(before, state(plain), ("G_AB.", "G_BA.", "D_A.", "D_B.")) == []  # lr 0: no weight moves
    with pytest.raises(ValueError, match="--cuda-graphs needs a CUDA device"):
        Trainer(TrainConfig(cuda_graphs=True), TINY)


class CudaStandIns:
    """CPU stand-ins for the CUDA calls of StepGraph.capture: streams (the current one kept here),
    a graph object, and `torch.cuda.graph` as the context manager `capture` (default: refused at once)."""

    class Stream:
        def wait_stream(self, other):
            pass

    class Graph:
        def register_generator_state(self, generator):
            pass

        def replay(self):  # replays nothing: the losses stay what the (eager) capture computed
            pass

    def __init__(self, monkeypatch, capture=None):
        self.current = self.default = self.Stream()
        def refuse(graph, **kw):
            raise RuntimeError("operation not permitted")

        for name, value in (("Stream", lambda device=None: self.Stream()),
                            ("current_stream", lambda device=None: self.current),
                            ("set_stream", lambda stream: setattr(self, "current", stream)),
                            ("stream", lambda stream: contextlib.nullcontext()), ("CUDAGraph", self.Graph),
                            ("graph", capture or refuse)):
            monkeypatch.setattr(torch.cuda, name, value)


def graph_trainers(n: int = 6):
    g = torch.Generator().manual_seed(0)
    batches = [{d: torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for d in "AB"} for _ in range(n)]
    config = TrainConfig(amp="none", pool_size=2, ema_decay=0.9)
    plain, graphed = Trainer(config, TINY, graph_ready=True), Trainer(config, TINY, graph_ready=True)
    graphed.graph = StepGraph(graphed)
    return batches, plain, graphed


def test_a_refused_capture_falls_back_to_the_eager_step(monkeypatch, capsys):
    """--cuda-graphs where the capture is refused as it starts (a torch or GPU without it, found at the
    first step with the pools full): one warning, then the eager step, from exactly where training
    was: the warm-up's steps and the failed capture leave weights, averages, optimiser states and
    pools as a trainer that never tried has them."""
    CudaStandIns(monkeypatch)
    batches, plain, graphed = graph_trainers()
    for b in batches:
        for t in (plain, graphed):
            t.set_lr(0.5)
            t.train_step(b)
    assert graphed.graph is None
    err = capsys.readouterr().err
    assert err.count("warning: --cuda-graphs: the training step could not be captured (RuntimeError: "
                     "operation not permitted); training goes on without CUDA graphs") == 1
    assert_same_training_state(plain, graphed)


def test_a_graph_that_differs_from_the_eager_step_is_dropped(monkeypatch, capsys):
    """A capture that completes but whose replay gives other losses than the eager step (here a
    'graph' that replays nothing) is refused by its check: a warning naming the loss, then eager steps."""
    CudaStandIns(monkeypatch, capture=lambda graph, **kw: contextlib.nullcontext())
    batches, plain, graphed = graph_trainers()
    for b in batches:
        losses = graphed.train_step(b)
    assert graphed.graph is None and all(torch.isfinite(v) for v in losses.values())
    assert re.search(r"warning: --cuda-graphs: the training step could not be captured \(RuntimeError: the "
                     r"replayed step's \w+ loss is \S+, the eager step's \S+\); training goes on", capsys.readouterr().err)


def test_a_capture_cuda_ends_midway_stops_training(monkeypatch):
    """Where CUDA itself ends a capture (a forbidden call inside it), torch.cuda.graph cannot end it and
    the process stays in capture mode: training stops with what to do instead of going on in it, and
    the stream is put back."""
    class EndedByCuda:
        def __init__(self, graph, **kw):
            pass

        def __enter__(self):
            stand_ins.current = CudaStandIns.Stream()  # the capture's own stream

        def __exit__(self, *exc):
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    stand_ins = CudaStandIns(monkeypatch, capture=EndedByCuda)
    batches, plain, graphed = graph_trainers(4)
    with pytest.raises(CaptureBroken, match=r"--cuda-graphs: CUDA refused to capture the training step \(RuntimeError: "
                       r"CUDA error: .*\); this process cannot safely go on: rerun \(or --resume\) without --cuda-graphs"):
        for b in batches:
            graphed.train_step(b)
    assert stand_ins.current is stand_ins.default


def test_the_capture_check_compares_a_replay_with_the_eager_step():
    """StepGraph.check: a replay that does the step gives the eager step's losses and, at another
    learning rate than the capture's, its update (both inside undone(): the same state, pool draws
    included, and no trace); one that replays something else is refused naming the loss, one that
    skips its update or keeps the capture's learning rate naming the update. The 'graph' is a CPU
    stand-in that runs the step on its inputs."""
    g = torch.Generator().manual_seed(0)
    batches = [{d: torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for d in "AB"} for _ in range(4)]
    trainer, plain = (Trainer(TrainConfig(amp="none", pool_size=2, ema_decay=0.9), TINY, graph_ready=True)
                      for _ in range(2))
    for b in batches[:3]:  # the pools full, as at a capture
        trainer.train_step(b)
        plain.train_step(b)
    graph = StepGraph(trainer)
    graph.inputs = (batches[3]["A"].clone(), batches[3]["B"].clone())
    graph.losses = {k: torch.zeros(()) for k in trainer.tally.names}

    class Replay:  # copies the losses of a step on `inputs` into the static outputs
        def __init__(self, inputs):
            self.inputs = inputs

        def replay(self):
            for k, v in trainer.step_on(*self.inputs).items():
                graph.losses[k].copy_(v)

    class SkipsUpdate(Replay):  # the right losses, but the update skipped (a skip flag stuck on)
        def replay(self):
            trainer.skip.fill_(True)
            super().replay()

    class FrozenLR(Replay):  # the right losses, but the learning rate the capture saw
        lr = [opt.param_groups[0]["lr"].clone() for opt in (trainer.opt_G, trainer.opt_D)]

        def replay(self):
            now = [opt.param_groups[0]["lr"].clone() for opt in (trainer.opt_G, trainer.opt_D)]
            for opt, lr in zip((trainer.opt_G, trainer.opt_D), self.lr):
                opt.param_groups[0]["lr"].copy_(lr)
            super().replay()
            for opt, lr in zip((trainer.opt_G, trainer.opt_D), now):
                opt.param_groups[0]["lr"].copy_(lr)

    graph.graph = Replay(graph.inputs)
    graph.check()
    graph.graph = Replay((batches[0]["A"], batches[3]["B"]))  # a stale input
    with pytest.raises(RuntimeError, match=r"the replayed step's \w+ loss is .*, the eager step's"):
        graph.check()
    for wrong in (SkipsUpdate, FrozenLR):  # each moves the weights by the whole update away from the eager step
        graph.graph = wrong(graph.inputs)
        with pytest.raises(RuntimeError, match=r"the replayed step's update differs from the eager step's by 100% "
                                               r"of its norm \(\S+\) at lr 0.0001"):
            graph.check()
    trainer.train_step(batches[3])
    plain.train_step(batches[3])
    assert_same_training_state(plain, trainer)  # the checks left no trace


def test_a_resumed_optimiser_state_takes_this_runs_layout():
    """A checkpoint from a CUDA run holds Adam's moments in channels_last; resumed in NCHW (the CPU,
    or --memory-format nchw), the fused kernel walks them as it walks the weights, so they are
    converted on loading: the next step's moments and weights are the ones the saving run computes."""
    g = torch.Generator().manual_seed(0)
    batches = [{d: torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for d in "AB"} for _ in range(3)]
    config = TrainConfig(amp="none", ema_decay=0.9)
    saving = Trainer(config, TINY)
    for b in batches[:2]:
        saving.train_step(b)
    checkpoint = copy.deepcopy(saving.state_dict())
    saving.tally.read()  # a new window, as the resumed run starts one
    for name in ("opt_G", "opt_D"):  # as a CUDA run saves them (training on the CPU here: PyTorch's CPU
        for moments in checkpoint[name]["state"].values():  # instance norm misreads channels_last gradients)
            for key in ("exp_avg", "exp_avg_sq"):
                if moments[key].ndim == 4:
                    moments[key] = moments[key].contiguous(memory_format=torch.channels_last)
    resumed = Trainer(config, TINY)
    resumed.load_state_dict(checkpoint)
    loaded = [v for opt in (resumed.opt_G, resumed.opt_D) for st in opt.state.values() for v in st.values() if v.ndim == 4]
    assert loaded and all(v.is_contiguous() for v in loaded)
    for t in (saving, resumed):
        t.train_step(batches[2])
    assert_same_training_state(saving, resumed)


# Recorded with the single-module training.py (commit b606afd) by the same steps, one thread, the CPU.
BEFORE_THE_SPLIT = {
    "losses": [[0.9440081119537354, 0.9940469861030579, 5.228869438171387, 5.223626613616943, 2.6107254028320312,
                2.576763391494751, 0.4915366768836975, 0.4547363817691803],
               [0.9373915791511536, 0.9816094040870667, 5.209558486938477, 5.166836261749268, 2.614793539047241,
                2.571694850921631, 0.4881964921951294, 0.45595186948776245],
               [0.9198369979858398, 0.9713131785392761, 5.077002048492432, 5.110444068908691, 2.5951523780822754,
                2.589797019958496, 0.4807211458683014, 0.4413529634475708],
               [0.9215530753135681, 0.9609280228614807, 5.160983085632324, 5.116512298583984, 2.588705062866211,
                2.5848278999328613, 0.46881020069122314, 0.4396197497844696]],
    "weights": [-0.4210826204325713, 301.20010977551647],  # sum and sum of |w| of every network after 4 steps
    "ema": [-1.0106395507593362, 275.57092119183307],
}


@pytest.mark.parametrize("resumed", [False, True], ids=["fresh", "from-a-checkpoint-of-then"])
def test_training_steps_as_before_the_split(resumed):
    """The package layout changed nothing a run computes: four steps on fixed batches give the losses and
    weights recorded before the move (relative 1e-6: oneDNN may choose other kernels on another CPU), and
    a checkpoint the old layout wrote after two steps (tests/data/) resumes into the same last two."""
    from cyclegan import ModelConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = ModelConfig(ngf=4, ndf=4, n_blocks=1, n_layers=1, domain_A="horse", domain_B="zebra")
        trainer = Trainer(TrainConfig(amp="none", pool_size=2, ema_decay=0.9, seed=3), model)
        g = torch.Generator().manual_seed(7)
        batches = [{d: torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for d in "AB"} for _ in range(4)]
        if resumed:
            state = load_checkpoint(ROOT / "tests" / "data" / "checkpoint-before-the-split.pt")
            assert state["step"] == 2
            trainer.load_state_dict(state)
        first = 2 if resumed else 0
        losses = [list(trainer.train_step(b).values()) for b in batches[first:]]
    finally:
        torch.set_num_threads(threads)
    checksum = lambda m: [sum(p.double().sum().item() for p in m.parameters()),  # noqa: E731
                          sum(p.double().abs().sum().item() for p in m.parameters())]
    recorded = [v for step in BEFORE_THE_SPLIT["losses"][first:] for v in step]
    assert [v.item() for step in losses for v in step] == pytest.approx(recorded, rel=1e-6)
    assert checksum(trainer.model) == pytest.approx(BEFORE_THE_SPLIT["weights"], rel=1e-6)
    assert checksum(trainer.ema) == pytest.approx(BEFORE_THE_SPLIT["ema"], rel=1e-6)
