"""The app's Train tab (CYCLEGAN_TRAINING=1): train a CycleGAN on an uploaded zip or an official dataset
from the browser, watch it, stop and resume it, and use or publish its model. The page only reads and
asks: the job is a process of its own (cyclegan.jobs), so it survives a closed tab, a reload and an
app restart. Its actions are API endpoints too (/train_start, /train_status, /train_stop,
/train_resume; docs/app.md)."""
from __future__ import annotations

import csv
import functools
import html
import os
import sys
import zipfile
from pathlib import Path

import gradio as gr
from PIL import Image

from cyclegan import CycleGAN
from cyclegan.datasets import DATASETS, DATASETS_URL
from cyclegan.files import one_line
from cyclegan.jobs import RECIPES, DataError, Jobs, Limits
from cyclegan.jobs import recipes
from cyclegan.runstatus import ACTIVE

RUN_PREFIX = "run: "  # how /translate names a run's model
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Refusal(gr.Error):
    """What the app (both tabs) answers a request it cannot do: a bad upload, an unknown model, a login
    missing. The visitor reads the message; the server's log gets it as one line, not a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)
        print(f"refused: {' '.join(message.split())[:300]}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """"25mb", "2gb", "500kb" or a number of bytes; units of 1024, as Gradio reads its max_file_size."""
    text = text.strip().lower()
    for unit, factor in (("kb", 2 ** 10), ("mb", 2 ** 20), ("gb", 2 ** 30), ("b", 1)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def enabled() -> bool:
    return os.environ.get("CYCLEGAN_TRAINING") == "1"


def login_required() -> bool:
    """On a Space, or where the operator asks for it: only a logged-in owner may act."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("CYCLEGAN_TRAINING_LOGIN") == "1"


def owners() -> set[str]:
    """The Space's owner (a user or an organisation), and those in CYCLEGAN_TRAINING_OWNERS."""
    listed = {n.strip() for n in os.environ.get("CYCLEGAN_TRAINING_OWNERS", "").split(",") if n.strip()}
    return listed | ({os.environ["SPACE_AUTHOR_NAME"]} if os.environ.get("SPACE_AUTHOR_NAME") else set())


def refuse_exposure(server_name: str) -> str | None:
    """Why the app must not start: the Train tab open to a network without login (None: it may)."""
    if not enabled() or login_required() or server_name in LOOPBACK:
        return None
    if os.environ.get("CYCLEGAN_TRAINING_OPEN") == "1":
        print(f"CYCLEGAN_TRAINING_OPEN=1: the Train tab is open to anyone who reaches {server_name}", file=sys.stderr)
        return None
    return (f"CYCLEGAN_TRAINING=1 on {server_name}, a non-loopback address, without login: anyone who reaches it "
            "could train and delete runs. Set CYCLEGAN_TRAINING_LOGIN=1 (Hugging Face login, owners only), bind to "
            "127.0.0.1, or set CYCLEGAN_TRAINING_OPEN=1 to allow it.")


def check_access(profile: gr.OAuthProfile | None) -> None:
    """Only an owner starts, stops, deletes or pushes where login is required (page and API alike)."""
    if not login_required():
        return
    allowed = owners()
    if profile is None:
        raise Refusal(f"Training here needs a Hugging Face login as {' or '.join(sorted(allowed)) or 'an owner'}.")
    names = {profile.get("preferred_username")} | {o.get("preferred_username") for o in profile.get("orgs") or []}
    if not names & allowed:
        raise Refusal(f"{profile.get('preferred_username')} may not train here: only {', '.join(sorted(allowed))}.")


@functools.cache
def jobs() -> Jobs:
    threads = int(os.environ.get("CYCLEGAN_TRAIN_THREADS", max(1, (os.cpu_count() or 2) - 1)))
    limits = Limits(zip_bytes=parse_size(os.environ.get("CYCLEGAN_MAX_ZIP_SIZE", "2gb")),
                    pixels=int(os.environ.get("CYCLEGAN_MAX_PIXELS", 40_000_000)))
    url = os.environ.get("CYCLEGAN_DATASETS_URL")
    return Jobs(os.environ.get("CYCLEGAN_RUNS", "runs"), threads=threads,
                niceness=int(os.environ.get("CYCLEGAN_TRAIN_NICE", 10)),
                max_bytes=parse_size(os.environ.get("CYCLEGAN_RUNS_MAX_SIZE", "20gb")), limits=limits,
                datasets_url=url if url and url != DATASETS_URL else None)


# ---- models for the Translate tab ------------------------------------------------------------

def run_models(runs: list[str]) -> list[str]:
    """The names of these runs' models, as /translate and the model list take them."""
    return [m for m in map(jobs().model_name, runs) if m]


@functools.lru_cache(maxsize=4)
def _load(folder: str, saved: int) -> CycleGAN:  # keyed by the weights' time: a later save is loaded anew
    return CycleGAN.from_pretrained(folder)


def run_model(choice: str) -> tuple[CycleGAN, str]:
    """The latest saved weights of the run a name names ("run: NAME")."""
    name = choice[len(RUN_PREFIX):]
    try:
        folder = jobs().folder(name) / "model"
        saved = (folder / "model.safetensors").stat().st_mtime_ns
    except (ValueError, OSError):
        raise Refusal(f"Unknown model {choice!r}: no run of that name has saved a model") from None
    try:
        return _load(str(folder), saved), choice
    except (OSError, ValueError) as e:  # caught between two saves: the previous one is read next time
        raise Refusal(f"Model {choice!r} cannot be loaded now ({one_line(e, 200)}); try again") from None


# ---- the API: one output each, the status ----------------------------------------------------

def train_start(zip: str | None, dataset: str, recipe: str, identity: bool, max_steps: int,
                profile: gr.OAuthProfile | None = None, **changes) -> dict:
    """Start a training job.

    Parameters:
        zip: a zip holding trainA/ and trainB/ (at its root or one folder down; testA/, testB/ optional), or None
        dataset: an official CycleGAN dataset's name (e.g. "horse2zebra"), or "" with a zip
        recipe: "quick", "preview" or "paper"
        identity: train with the identity loss
        max_steps: stop at this step (0: the recipe's length)
    Returns:
        the job's status (state, run, step, total_steps, steps_per_s, eta_s, message, model, ...)
    """
    check_access(profile)
    try:
        return jobs().start(recipe, bool(identity), int(max_steps or 0), zip_path=zip or None, dataset=dataset or "",
                            **changes)
    except (DataError, ValueError) as e:
        raise Refusal(str(e)) from None


def train_status() -> dict:
    """The status of the current or last training job (state "idle" before the first)."""
    return jobs().status()


def train_stop(profile: gr.OAuthProfile | None = None) -> dict:
    """Stop the running job: it finishes its step and saves (asked again: killed)."""
    check_access(profile)
    return jobs().stop()


def train_resume(max_steps: int, profile: gr.OAuthProfile | None = None) -> dict:
    """Continue the last job from its checkpoint (max_steps 0: to the target it had)."""
    check_access(profile)
    try:
        return jobs().resume(int(max_steps or 0))
    except ValueError as e:
        raise Refusal(str(e)) from None


# ---- what the page shows ---------------------------------------------------------------------

def progress_html(s: dict) -> str:
    step, total = s.get("step") or 0, s.get("total_steps") or 0
    share = 100 * step / total if total else 0
    parts = [f"<b>{html.escape(s.get('state', 'idle'))}</b>"]
    if s.get("run"):
        parts.append(html.escape(s["run"]))
    if total:
        parts.append(f"step {step:,} / {total:,} ({share:.0f}%)")
    if s.get("epoch") is not None and total:
        parts.append(f"epoch {s['epoch']:.2f}")
    if s.get("steps_per_s"):
        parts.append(f"{s['steps_per_s']:.2f} steps/s")
    if s.get("eta_s") and s.get("state") == "running":
        parts.append(f"{recipes.duration(s['eta_s'])} left")
    message = f"<div>{html.escape(s.get('message') or '')}</div>"
    return (f"<div id='train-progress'><div style='background:#e5e7eb;border-radius:4px;height:12px'>"
            f"<div style='width:{share:.1f}%;background:#f97316;height:12px;border-radius:4px'></div></div>"
            f"<div>{' · '.join(parts)}</div>{message}</div>")


CURVES = {"G adversarial": ("G_AB", "G_BA"), "cycle": ("cycle_A", "cycle_B"), "identity": ("idt_A", "idt_B"),
          "D": ("D_A", "D_B")}  # both directions summed: four curves, a legend a phone shows whole


def loss_curves(run: str | None):
    """losses.csv as rows (step, loss, term) for the plot; None before its first row."""
    import pandas as pd

    if run is None:
        return None
    rows = []
    try:
        with open(jobs().folder(run) / "losses.csv", newline="") as f:
            for r in csv.DictReader(f):
                rows += [(int(r["step"]), sum(float(r[k]) for k in keys), name) for name, keys in CURVES.items()
                         if all(r.get(k) for k in keys)]
    except (OSError, ValueError, KeyError):
        return None
    return pd.DataFrame(rows, columns=["step", "loss", "term"]) if rows else None


def newest_grid(run: str | None) -> Path | None:
    """The run's newest sample grid (samples/step_*.png), or None before its first."""
    grids = sorted((jobs().folder(run) / "samples").glob("step_*.png")) if run is not None else []
    return grids[-1] if grids else None


def latest_samples(run: str | None) -> Image.Image | None:
    """The newest sample grid, as an image (sent as data: the runs folder is never served)."""
    if (grid := newest_grid(run)) is None:
        return None
    try:
        with Image.open(grid) as im:
            return im.convert("RGB")
    except OSError:  # written as we read: the next refresh shows it
        return None


def files_shown(run: str | None) -> tuple:
    """What the plot and the sample grid are drawn from: losses.csv's and the newest grid's name, size and
    time of change (None for a file not there yet)."""
    if run is None:
        return None, None
    stamps = []
    for path in (jobs().folder(run) / "losses.csv", newest_grid(run)):
        try:
            stat = path.stat() if path is not None else None
        except OSError:
            stat = None
        stamps.append(None if stat is None else (path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def view(model_choices: list[str], seen: tuple | None = None):
    """Everything the tab shows of the current or last job, the Translate tab's model list, and which of
    Start, Stop and Resume can be pressed: Stop while a job is active, Start and Resume (of the last run)
    when none is. The loss plot and the sample grid are sent again only where their files changed since
    this page's last refresh (`seen`, returned last): a long run's curves are thousands of points."""
    s = train_status()
    run, active = s.get("run"), s.get("state") in ACTIVE
    runs = jobs().runs()
    now = (run, *files_shown(run))
    changed = [seen is None or seen[0] != run or seen[i] != now[i] for i in (1, 2)]
    return (progress_html(s), loss_curves(run) if changed[0] else gr.skip(),
            latest_samples(run) if changed[1] else gr.skip(), "\n".join((s.get("log") or [])[-8:]),
            s.get("command") or "", s.get("data") or "", gr.Dropdown(choices=runs, value=run if run in runs else None),
            gr.Dropdown(choices=model_choices + run_models(runs)), gr.Timer(active=active),
            gr.Button(interactive=not active), gr.Button(interactive=active), gr.Button(interactive=bool(run) and not active),
            now)


def recipe_text(recipe: str) -> str:
    r = RECIPES[recipe]
    numbers = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in {**r.model, **r.train}.items())
    gpu = " **A GPU's work**: on a CPU, press Estimate first." if r.gpu else ""
    return f"**{r.title}**: {r.about}. ({numbers}){gpu}"


def zip_largest_domain(path: str | None) -> int | None:
    """Images in the larger of trainA/ and trainB/ of a zip, counted from its listing (no unpacking)."""
    if not path:
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n.replace("\\", "/").split("/") for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError):
        return None
    return max(sum(1 for p in names if len(p) >= 2 and p[-2] == d) for d in ("trainA", "trainB")) or None


def estimate(zip: str | None, recipe: str, identity: bool, max_steps, crop, load, batch, steps: int = 2) -> str:
    try:
        values = recipes.settings(recipe, identity, int(max_steps or 0), crop_size=crop or None,
                                  load_size=load or None, batch_size=batch or None)
    except ValueError as e:
        raise Refusal(str(e)) from None
    seconds = recipes.seconds_per_step(values, threads=jobs().threads, steps=steps)
    largest = zip_largest_domain(zip)
    total = recipes.total_steps(values, largest) if largest else values.get("max_steps")
    where = "" if largest or values.get("max_steps") else " (the total depends on the data: upload it first)"
    return recipes.estimate_line(seconds, total) + where


def page_start(zip, dataset, recipe, identity, max_steps, crop, load, batch, profile: gr.OAuthProfile | None = None):
    if RECIPES[recipe].gpu and not _has_cuda() and jobs().running() is None:  # timed before the job takes the CPU
        check_access(profile)
        gr.Warning(f"The paper's recipe is a GPU's work; on this CPU: "
                   f"{estimate(zip, recipe, identity, max_steps, crop, load, batch, steps=1)}")
    return train_start(zip, dataset, recipe, identity, max_steps, profile, crop_size=crop or None,
                       load_size=load or None, batch_size=batch or None)


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def delete_run(run: str | None, profile: gr.OAuthProfile | None = None) -> None:
    check_access(profile)
    if not run:
        raise Refusal("Choose a run first.")
    try:
        jobs().delete(run)
    except ValueError as e:
        raise Refusal(str(e)) from None
    gr.Info(f"{run} deleted")


def push_run(run: str | None, repo_id: str, profile: gr.OAuthProfile | None = None,
             oauth_token: gr.OAuthToken | None = None) -> str:
    """The run's latest model/ to the Hub (fp16 safetensors and the model card), with the user's token:
    on a Space the visitor's login (write scope), elsewhere HF_TOKEN or `hf auth login`'s. Never the
    operator's secret on a visitor's behalf."""
    from cyclegan.hub import push

    check_access(profile)
    if not run or not repo_id.strip():
        raise Refusal("Choose a run and give a Hub repo id (yourname/model-name).")
    token = oauth_token.token if oauth_token is not None else None
    if login_required() and token is None:
        raise Refusal("Pushing needs your Hugging Face login with write access.")
    folder = jobs().folder(run) / "model"
    if not folder.is_dir():
        raise Refusal(f"{run} has saved no model yet.")
    try:
        url = push(str(folder), repo_id.strip(), token=token)
    except Exception as e:  # the Hub's answer (no rights, bad name) in one line, never the token
        raise Refusal(f"Push failed: {one_line(e, 300)}") from None
    return f"Pushed {run} to [{html.escape(repo_id.strip())}]({url})"


def build(model: gr.Dropdown, model_choices: list[str]):
    """The Train tab, inside the app's Blocks; `model` is the Translate tab's model list. Returns the
    refresh function and what it updates, for the page's load event."""
    from cyclegan.training import TrainConfig

    def sizes(key: str) -> list[int]:
        """The recipe's crop size, load size and batch: the fields show what it will do (left empty, they
        showed 0 in red, below their minimum, and Start refused them)."""
        values = {**vars(TrainConfig()), **recipes.settings(key)}
        return [values["crop_size"], values["load_size"], values["batch_size"]]

    def number(value: int, label: str, key: str) -> gr.Number:
        low, high = recipes.BOUNDS[key]  # the bounds settings() holds a start to
        return gr.Number(value, label=label, precision=0, minimum=low, maximum=high)

    with gr.Tab("Train", id="train"):
        if login_required():
            gr.LoginButton()
        gr.Markdown("Train a CycleGAN on two sets of images: a zip holding `trainA/` and `trainB/` (any sizes, "
                    "unpaired), or an official dataset. The job runs on the server until it ends, whether this page "
                    "stays open or not; its model then appears in the model list of the Image tab.")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                zip_in = gr.File(label="zip with trainA/ and trainB/", file_types=[".zip"], type="filepath")
                dataset = gr.Dropdown(["", *DATASETS], value="", label="…or an official dataset (downloaded)")
                recipe = gr.Radio([(r.title, k) for k, r in RECIPES.items()], value="quick", label="Recipe")
                recipe_info = gr.Markdown(recipe_text("quick"))
                with gr.Row(elem_id="train-numbers"):
                    steps = gr.Number(0, label="steps (0: the recipe's)", precision=0, minimum=0)
                    crop, load, batch = (number(v, label, key) for v, label, key in zip(
                        sizes("quick"), ("crop size", "load size", "batch"), ("crop_size", "load_size", "batch_size")))
                identity = gr.Checkbox(True, label="identity loss")
                with gr.Row():
                    estimate_button = gr.Button("Estimate")
                    start = gr.Button("Start training", variant="primary")
                estimate_out = gr.Markdown()
            with gr.Column(scale=2, min_width=300):
                progress = gr.HTML(progress_html({"state": "idle"}))
                with gr.Row():
                    stop = gr.Button("Stop (saves)")
                    resume = gr.Button("Resume")
                # Its own height: at a set one (260 px) the legend below the curves was cut off.
                plot = gr.LinePlot(x="step", y="loss", color="term", label="losses")
                samples = gr.Image(label="latest samples: x, G(x), F(G(x))", type="pil", format="jpeg",
                                   interactive=False, height=300)
                log = gr.Textbox(label="log (the last lines)", lines=8, max_lines=8, interactive=False, autoscroll=True)
                data = gr.Textbox(label="data", interactive=False)
                command = gr.Textbox(label="the same in a terminal", interactive=False)
                with gr.Accordion("Runs: delete, publish", open=False):
                    runs = gr.Dropdown([], label="run")
                    with gr.Row():
                        delete = gr.Button("Delete run", variant="stop")
                        repo = gr.Textbox(label="Hub repo id", placeholder="yourname/cyclegan-my-data")
                        push = gr.Button("Push to the Hub")
                    pushed = gr.Markdown()
        timer = gr.Timer(2.0, active=False)
        # The API: hidden inputs and buttons, each endpoint with one output, the status.
        api_in = [gr.File(visible=False), gr.Textbox(visible=False), gr.Textbox(visible=False),
                  gr.Checkbox(visible=False), gr.Number(visible=False, precision=0)]
        status = gr.JSON(visible=False)
        for name, fn, inputs in (("train_start", train_start, api_in), ("train_status", train_status, []),
                                 ("train_stop", train_stop, []), ("train_resume", train_resume, api_in[4:])):
            gr.Button(visible=False).click(fn, inputs, status, api_name=name, concurrency_id="train",
                                           concurrency_limit=1)

    seen = gr.State()  # what this page's plot and grid show (view)
    shown = [progress, plot, samples, log, command, data, runs, model, timer, start, stop, resume, seen]
    refresh = functools.partial(view, model_choices)
    gr.on([timer.tick], refresh, seen, shown, api_visibility="private", show_progress="hidden", queue=False)
    recipe.change(lambda key: [recipe_text(key), *sizes(key)], recipe, [recipe_info, crop, load, batch],
                  api_visibility="private", queue=False)
    estimate_button.click(estimate, [zip_in, recipe, identity, steps, crop, load, batch], estimate_out,
                          api_visibility="private", concurrency_id="train", concurrency_limit=1)
    for button, fn, inputs in ((start, page_start, [zip_in, dataset, recipe, identity, steps, crop, load, batch]),
                               (stop, train_stop, []), (resume, train_resume, [steps])):
        button.click(fn, inputs, None, api_visibility="private", concurrency_id="train",
                     concurrency_limit=1).then(refresh, seen, shown, api_visibility="private", queue=False)
    delete.click(delete_run, runs, None, api_visibility="private").then(refresh, seen, shown, queue=False,
                                                                         api_visibility="private")
    push.click(push_run, [runs, repo], pushed, api_visibility="private")
    return refresh, seen, shown
