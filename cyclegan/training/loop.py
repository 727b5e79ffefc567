"""The loop of a run (`train.py`): data, the learning-rate schedule, and every so many steps the
logs, checkpoints, sample grids and validation around `Trainer.train_step`."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..datasets import download_dataset
from ..files import one_line
from ..model import ModelConfig
from ..runlog import LossLog, sample_images, save_samples, write_validation_list
from ..runstatus import RunStatus
from .checkpoints import save_checkpoint
from .recipe import TrainConfig, cudnn_benchmark, lr_factor, resolve_device
from .batches import TrainingData
from .signals import StopRequested, StopSignals
from .step import Trainer
from .validation import Validation


def prepare_run(config: TrainConfig, main: bool = True, barrier=lambda: None) -> TrainConfig:
    """Check what a run needs before any training: the data (downloaded with --dataset), a writable
    output folder and, with --push-to-hub, a Hub token. Returns the config with dataroot and output filled in."""
    dataroot = config.dataroot
    if config.dataset and not dataroot:
        if main:
            try:
                download_dataset(config.dataset, config.data_dir, config.dataset_url)
            except KeyboardInterrupt:  # what came is kept in a .part file: files.download
                print(f"interrupted while fetching {config.dataset}; the next run goes on from what was received",
                      file=sys.stderr)
                raise
        barrier()
        dataroot = str(Path(config.data_dir) / config.dataset)
    if not dataroot:
        raise ValueError("give --dataroot DIR (with trainA/ and trainB/) or --dataset NAME")
    output = Path(config.output or Path("runs") / (config.dataset or Path(dataroot).name))
    if config.push_to_hub:
        from huggingface_hub import get_token
        if get_token() is None:
            raise RuntimeError(f"--push-to-hub {config.push_to_hub}: no Hugging Face token; run "
                               "`hf auth login` or set HF_TOKEN before training")
    if config.eval_every and not config.val_count:
        raise ValueError("--eval-every needs validation images: give --val-count N as well")
    if main:
        probe = output / ".write-test"
        try:
            output.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as e:
            raise RuntimeError(f"{output}: output directory cannot be created or written to ({e.strerror})") from None
    return dataclasses.replace(config, dataroot=dataroot, output=str(output))


class Training:
    """A run of `train.py`: the constructor prepares data, trainer and logs; `run` loops; `save`,
    `sample` and `validate` are what the loop does every so many steps. Only rank 0 writes."""

    def __init__(self, config: TrainConfig, model_config: ModelConfig, resume_state: dict | None = None) -> None:
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        rank, world_size = 0, 1
        device = resolve_device(config.device)
        if self.distributed:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            rank, world_size = dist.get_rank(), dist.get_world_size()
            if device.type == "cuda":
                torch.cuda.set_device(device)
        self.main = rank == 0
        self.config = c = prepare_run(config, self.main, dist.barrier if self.distributed else lambda: None)
        self.output = Path(c.output)
        self.data = TrainingData(c, device, rank, world_size)
        self.steps_per_epoch = self.data.steps_per_epoch
        self.total_steps = (c.epochs + c.decay_epochs) * self.steps_per_epoch
        if c.max_steps:
            self.total_steps = min(self.total_steps, c.max_steps)
        self.trainer = Trainer(c, model_config, device, self.distributed,
                               recorded_amp=resume_state.get("amp") if resume_state is not None else None)
        if resume_state is not None:
            self.trainer.load_state_dict(resume_state, source=c.resume)
        self.log = LossLog(self.output, self.trainer.step) if self.main else None
        self.samples = sample_images(Path(c.dataroot), c.n_samples, c.crop_size) if self.main else None
        self.validation = Validation(self.data.validation_files(), self.output)
        if self.main and c.val_count:
            write_validation_list(self.output / "validation.txt", Path(c.dataroot), self.validation.files)
        self.start_time, self.seconds_before = time.time(), self.trainer.seconds
        self.saved_step = self.trainer.step if resume_state is not None else None  # step of checkpoint.pt
        self.status: RunStatus | None = None  # status.json, while the loop runs

    def seconds(self) -> float:
        return self.seconds_before + time.time() - self.start_time

    def info(self) -> dict:
        c = self.config
        recipe = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.metadata.get("recipe", True)}
        return {"dataset": c.dataset or Path(c.dataroot).name, "training": recipe, "steps": self.trainer.step,
                "epochs": round(self.trainer.step / self.steps_per_epoch, 3), "train_seconds": round(self.seconds()),
                "image_size": c.crop_size, "lambda_identity": c.lambda_identity}

    def save(self) -> None:
        if not self.main:
            return
        self.trainer.seconds = self.seconds()
        self.trainer.model.info = self.info()
        # The model folder first: whenever a checkpoint exists, so does a complete model/ (a kill
        # between the two leaves model/ one save ahead, which the resumed run overwrites).
        self.trainer.model.save_pretrained(self.output / "model")
        save_checkpoint(self.trainer.state_dict(), self.output / "checkpoint.pt")
        self.saved_step = self.trainer.step
        if self.status is not None:
            self.status.update(checkpoint_step=self.saved_step)
        self.log.plot()

    def sample(self) -> None:
        if self.main:
            with cudnn_benchmark(False):  # test images of any size: no timing of algorithms for each
                save_samples(self.trainer.model, *self.samples,
                             self.output / "samples" / f"step_{self.trainer.step:07d}.png")

    def validate_and_log(self, stop: StopSignals, bar, lr: float) -> None:
        """Validate at this step and log the scores; a stop signal during it leaves the validation due,
        saved with the step, to run first when the run is resumed."""
        t = self.trainer
        try:
            scores = self.validation.run(t, self.info(), stop)
        except StopRequested:
            t.validation_due = True
            bar.write(f"{stop.name}: validation at step {t.step} cut short; it runs first on --resume", file=sys.stderr)
            return
        t.validation_due = False
        self.log.write(t.step, t.step / self.steps_per_epoch, scores, lr, self.seconds())
        bar.write(f"step {t.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))

    def start_line(self) -> str:
        """What the run does, as it starts: device, precision (and how "auto" chose it), data path, steps."""
        t = self.trainer
        data = (f"images decoded into {t.device.type} memory" if self.data.images is not None
                else f"{self.config.workers} loader workers")
        return (f"training on {t.device} in {t.precision}; {data}; {self.steps_per_epoch} steps per epoch, "
                f"{self.total_steps} in all")

    def run(self) -> Path:
        from tqdm.auto import tqdm

        c, t = self.config, self.trainer
        if self.main:
            print(self.start_line(), file=sys.stderr)
        bar = tqdm(total=self.total_steps, initial=t.step, disable=not self.main, dynamic_ncols=True, unit="step")
        self.status = self.status_file()
        t.model.train()
        try:
            with StopSignals(on_first=self.stopping) as stop:
                if self.main and c.eval_every and t.validation_due:  # cut short by the stop before this resume
                    self.validate_and_log(stop, bar, t.opt_G.param_groups[0]["lr"])  # the saved step's lr
                    if not t.validation_due:
                        self.save()
                while t.step < self.total_steps and stop.name is None:
                    self.epoch(stop, bar)
                if stop.name is not None:
                    self.save_on_stop(stop, bar)
        except KeyboardInterrupt:  # a second signal: stop at once, and do not save a step cut short
            kept = "no checkpoint yet" if self.saved_step is None else f"the last save stands (step {self.saved_step})"
            self.say(bar, f"stopped at once: {kept}; continue with --resume {self.output}", "stopped")
            raise
        except BaseException as e:
            self.say(bar, None, "failed", f"{type(e).__name__}: {one_line(e, 300)}")
            raise
        finally:
            bar.close()
            if self.log is not None:
                self.log.close()
        if self.main and stop.name is None and c.push_to_hub:
            push_at_end(self, bar)
        if stop.name is None:
            self.say(bar, None, "finished", f"finished at step {t.step}")
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()
        return self.output

    def epoch(self, stop: StopSignals, bar) -> None:
        """The steps of the epoch the run is in, from where it is; stops early at the end or on a signal."""
        c, t = self.config, self.trainer
        for batch in self.data.epoch(t.step):
            lr = t.set_lr(lr_factor(t.step, self.steps_per_epoch, c.epochs, c.decay_epochs))
            t.train_step(batch)  # nothing read back: the device runs ahead
            bar.update(1)
            if self.status is not None:
                self.status.update(step=t.step, epoch=round(t.step / self.steps_per_epoch, 3))
            self.after_step(lr, stop, bar)
            if t.step == self.total_steps or stop.name is not None:
                break

    def after_step(self, lr: float, stop: StopSignals, bar) -> None:
        """What is due at this step: losses read and logged, validation, a save, a sample grid."""
        c, t = self.config, self.trainer
        step, last = t.step, t.step == self.total_steps
        evaluated = self.main and c.eval_every and (step % c.eval_every == 0 or last)
        saving = evaluated or step % c.save_every == 0 or step % self.steps_per_epoch == 0 or last
        if step % c.log_every == 0 or saving:  # the only reads of the device
            t.tally.check_finite()
        if step % c.log_every == 0 or last:
            self.write_losses(t.tally.read(), lr, bar)
        if evaluated:
            self.validate_and_log(stop, bar, lr)
        if saving:
            self.save()
        if step % c.sample_every == 0 or last:
            self.sample()

    def save_on_stop(self, stop: StopSignals, bar) -> None:
        if self.saved_step != self.trainer.step:  # a stop at a save (or cut-short validation) step: saved once
            self.save()
        self.say(bar, f"{stop.name}: saved {self.output / 'checkpoint.pt'} at step {self.trainer.step}; "
                      f"continue with --resume {self.output}", "stopped", f"stopped at step {self.trainer.step}")

    def status_file(self) -> RunStatus | None:
        if not self.main:
            return None
        t = self.trainer
        return RunStatus(self.output, {"state": "running", "step": t.step, "total_steps": self.total_steps,
                                       "epoch": round(t.step / self.steps_per_epoch, 3),
                                       "checkpoint_step": self.saved_step}).start()

    def stopping(self, name: str) -> None:
        """The first stop signal (in the signal handler): said in status.json at once."""
        if self.status is not None:
            self.status.update(state="stopping", message=f"{name}: finishing the step, then saving")

    def say(self, bar, line: str | None, state: str, message: str = "") -> None:
        """A run's last word: a line for the terminal, and the final state in status.json."""
        if not self.main:
            return
        if line:
            bar.write(line, file=sys.stderr)
        if self.status is not None:
            self.status.close(state, message or line or "")

    def write_losses(self, means: dict[str, float], lr: float, bar) -> None:
        """The mean losses of the last logging window, into losses.csv and the progress bar."""
        if self.main:
            self.log.write(self.trainer.step, self.trainer.step / self.steps_per_epoch, means, lr, self.seconds())
            shown = {k: f"{v:.3f}" for k, v in means.items() if k != "skipped_steps"}
            if means.get("skipped_steps"):
                shown["skipped"] = int(means["skipped_steps"])
            bar.set_postfix(shown, refresh=False)


def push_at_end(run: Training, bar) -> None:
    """A finished run's model/ to the Hub (float16, as `python -m cyclegan.hub push`). The run stays saved
    whatever happens; a failure ends status.json as failed, an interrupt as stopped, each with the retry."""
    repo, folder, step = run.config.push_to_hub, run.output / "model", run.trainer.step
    try:
        url = run.trainer.model.push_to_hub(repo)
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        what = "was interrupted" if interrupted else f"failed: {type(e).__name__}: {one_line(e, 300)}"
        message = (f"trained to step {step} and saved, but the push to {repo} {what} "
                   f"(retry: python -m cyclegan.hub push {folder} {repo})")
        run.say(bar, None, "stopped" if interrupted else "failed", message)
        if interrupted:
            raise
        raise RuntimeError(message) from e
    print(f"pushed {folder} to {url}")


def train(config: TrainConfig, model_config: ModelConfig, resume_state: dict | None = None) -> Path:
    """Run (or continue) training as `config` says; returns the run directory."""
    return Training(config, model_config, resume_state).run()
