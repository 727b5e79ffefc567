"""A CycleGAN as users see it: two generators and their config, saved as a model folder
(config.json + model.safetensors + README.md) locally or on the Hugging Face Hub, and
translating PIL images of any size."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from .data import load_rgb, to_image, to_tensor
from .files import write_atomic
from .inference import run_any_size
from .networks import Discriminator, Generator, init_weights

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
DIRECTIONS = ("A2B", "B2A")
# Official CycleGAN datasets that the Hub holds as huggan/NAME: model cards name them by that id.
HUB_DATASETS = ("horse2zebra", "apple2orange", "summer2winter_yosemite")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the networks; saved in config.json and in checkpoints."""

    ngf: int = field(default=64, metadata={"help": "generator width (channels of its first convolution)"})
    ndf: int = field(default=64, metadata={"help": "discriminator width"})
    n_blocks: int = field(default=9, metadata={"help": "residual blocks in the generators (6 for 128 px)"})
    n_layers: int = field(default=3, metadata={"help": "discriminator layers (3: 70x70 PatchGAN)"})
    domain_A: str = field(default="A", metadata={"help": "name of domain A (default: from the dataset name, e.g. horse)"})
    domain_B: str = field(default="B", metadata={"help": "name of domain B (default: from the dataset name, e.g. zebra)"})
    affine_norm: bool = field(default=False, metadata={
        "help": "learned scale and shift in the generators' instance norms (for converted weights)"})

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("ngf", "n_blocks") if n not in d]
        if missing:
            raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
        config = cls(**{k: v for k, v in d.items() if k in names})
        for name in ("ngf", "ndf", "n_blocks", "n_layers"):
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "n_blocks" else 1):
                raise ValueError(f"{source}: {name}={value!r} is not a valid size")
        if not isinstance(config.affine_norm, bool):
            raise ValueError(f"{source}: affine_norm={config.affine_norm!r} is not true or false")
        return config


class CycleGAN(nn.Module):
    """G_AB translates domain A to B and G_BA back; D_A and D_B exist only when training."""

    def __init__(self, config: ModelConfig | None = None, with_discriminators: bool = False,
                 info: dict | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        # Training recipe, steps, dataset and measured metrics: carried into config.json and the card.
        self.info: dict = dict(info or {})
        c = self.config
        self.G_AB = Generator(c.ngf, c.n_blocks, affine_norm=c.affine_norm)
        self.G_BA = Generator(c.ngf, c.n_blocks, affine_norm=c.affine_norm)
        if with_discriminators:
            self.D_A = Discriminator(c.ndf, c.n_layers)
            self.D_B = Discriminator(c.ndf, c.n_layers)

    def init_weights(self, seed: int = 0) -> "CycleGAN":
        generator = torch.Generator().manual_seed(seed)
        for net in self.children():
            init_weights(net, generator=generator)
        return self

    def generators(self, direction: str) -> tuple[Generator, Generator]:
        """(G, F): the generator for `direction` and the one that maps back."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction={direction!r}: choose 'A2B' or 'B2A'")
        return (self.G_AB, self.G_BA) if direction == "A2B" else (self.G_BA, self.G_AB)

    def domains(self, direction: str) -> tuple[str, str]:
        """(source, target): the names of the domains `direction` translates from and to."""
        self.generators(direction)  # checks the direction
        c = self.config
        return (c.domain_A, c.domain_B) if direction == "A2B" else (c.domain_B, c.domain_A)

    # ---- the model folder -------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, dtype: str = "float32") -> Path:
        """Write config.json, model.safetensors (generators only) and a README.md model card."""
        from safetensors.torch import save

        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype={dtype!r}: choose float32, float16 or bfloat16")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"{name}.{k}": v.detach().to("cpu", getattr(torch, dtype)).contiguous()
                   for name in ("G_AB", "G_BA") for k, v in getattr(self, name).state_dict().items()}
        config = {"model_type": "cyclegan", **asdict(self.config), **self.info}
        write_atomic(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt", "dtype": dtype}))
        write_atomic(directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
        write_atomic(directory / CARD_NAME, model_card(self.config, self.info).encode())
        return directory

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, revision: str | None = None,
                        device: str | torch.device = "cpu", token: str | None = None) -> "CycleGAN":
        """Load a model folder from a local path or a Hub repo id (cached; works offline once cached)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        config_path, weights_path = resolve_files(source, revision, token)
        try:
            raw = json.loads(Path(config_path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{config_path}: expected a JSON object")
        config = ModelConfig.from_dict(raw, source=str(config_path))
        names = {f.name for f in dataclasses.fields(ModelConfig)} | {"model_type"}
        # Built without memory (meta tensors) and given the file's tensors only once their names and
        # shapes match: a wrong or hostile config.json (ngf=100000) cannot allocate anything.
        with torch.device("meta"):
            model = cls(config, info={k: v for k, v in raw.items() if k not in names})
        try:
            tensors = load_file(weights_path)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{weights_path}: cannot be read as safetensors ({e})") from None
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:
            wrong = [f"{k} is {found[k]}, expected {v}" for k, v in expected.items() if k in found and found[k] != v]
            missing, extra = [k for k in expected if k not in found], [k for k in found if k not in expected]
            problems = wrong[:3] + ([f"{len(missing)} missing ({missing[0]}, ...)"] if missing else []) + \
                ([f"{len(extra)} unexpected ({extra[0]}, ...)"] if extra else [])
            raise ValueError(f"{weights_path}: does not match {config_path} (ngf={config.ngf}, "
                             f"n_blocks={config.n_blocks}, affine_norm={config.affine_norm}): {'; '.join(problems)}")
        model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True, assign=True)
        return model.to(device).eval()

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    dtype: str = "float16", commit_message: str = "Upload CycleGAN", card: str | None = None) -> str:
        """Upload the model folder to the Hub (with `card` as README.md instead of a generated one);
        returns the URL of the commit."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, dtype=dtype)
            if card is not None:
                write_atomic(Path(tmp) / CARD_NAME, card.encode())
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        return str(getattr(info, "commit_url", info))

    # ---- translation --------------------------------------------------------------------

    def _prepare(self, image) -> torch.Tensor:
        device = next(self.parameters()).device
        return to_tensor(load_rgb(image)).unsqueeze(0).to(device)

    def translate(self, image, direction: str = "A2B", max_side: int | None = 1024, large: str = "tile",
                  tile: int = 512, overlap: int = 64, precision: str = "auto") -> Image.Image:
        """G(x) for a PIL image or path, as a PIL image of the input's size.

        Inputs whose longer side exceeds `max_side` are translated in overlapping `tile`-px tiles
        (`large="tile"`, memory bounded at any size) or downscaled and the result scaled back
        (`large="downscale"`); `max_side=None` runs the whole image at once. `precision`: "auto" (bf16
        where the hardware has it, see `inference.autocast_dtype`), "fp32" or "bf16".
        """
        G, _ = self.generators(direction)
        return to_image(run_any_size(G, self._prepare(image), max_side, large, tile, overlap, precision)[0])

    def cycle(self, image, direction: str = "A2B", max_side: int | None = 1024, large: str = "tile",
              tile: int = 512, overlap: int = 64, precision: str = "auto") -> tuple[Image.Image, Image.Image]:
        """(G(x), F(G(x))) as PIL images of the input's size; the arguments are translate's."""
        G, F_ = self.generators(direction)
        fake = run_any_size(G, self._prepare(image), max_side, large, tile, overlap, precision)
        rec = run_any_size(F_, fake, max_side, large, tile, overlap, precision)
        return to_image(fake[0]), to_image(rec[0])


def resolve_files(source: str | os.PathLike, revision: str | None = None,
                  token: str | None = None) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of a local model folder, or of a Hub repo id (cached downloads)."""
    path = Path(source)
    if path.is_dir():
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: model folder has no {' or '.join(missing)}")
        return path / CONFIG_NAME, path / WEIGHTS_NAME
    source = str(source)
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"{source}: not a model folder and not a Hub repo id (user/name)")
    if path.parent.name and path.parent.is_dir():  # "weights/typo" is a mistyped path, not Hub user "weights"
        raise FileNotFoundError(f"{source}: no such model folder in {path.parent}/ (not looked up on the Hub)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    try:
        files = [Path(hf_hub_download(source, name, revision=revision, token=token))
                 for name in (CONFIG_NAME, WEIGHTS_NAME)]
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{source}: no such model repo on the Hub (or it is private: log in "
                                f"or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{source}: revision {revision!r} not found on the Hub") from None
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is a subclass of it
        raise ConnectionError(f"{source}: the Hub cannot be reached and no cached copy exists; "
                              f"download the folder elsewhere and pass its local path instead") from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{source}: the Hub repo has no {CONFIG_NAME} and {WEIGHTS_NAME}") from None
    except HFValidationError:
        raise FileNotFoundError(f"{source}: not a model folder and not a valid Hub repo id") from None
    return files[0], files[1]


def model_card(config: ModelConfig, info: dict) -> str:
    """README.md of a model folder: Hub metadata (licence, dataset, FID/KID as model-index), then what
    the model is and how it was made."""
    dataset = info.get("dataset")
    hub_dataset = dataset if dataset and "/" in dataset else f"huggan/{dataset}" if dataset in HUB_DATASETS else None
    lines = ["---", "library_name: cyclegan-kit", f"license: {info.get('license', 'mit')}", "pipeline_tag: image-to-image",
             "tags:", "- cyclegan", "- image-to-image", "- unpaired-image-translation"]
    if hub_dataset:
        lines += ["datasets:", f"- {hub_dataset}"]
    metrics = info.get("metrics") or {}
    scores = [(k, v) for k, v in metrics.items() if k.split()[0] in ("FID", "KID") and isinstance(v, (int, float))]
    if scores:  # the Hub's machine-readable results; "reference" scores of untranslated images stay in the table
        lines += ["model-index:", f"- name: cyclegan-{config.domain_A}2{config.domain_B}", "  results:",
                  "  - task:", "      type: image-to-image", "      name: Image-to-Image", "    dataset:",
                  f"      name: {dataset or 'test images'}", f"      type: {hub_dataset or dataset or 'custom'}",
                  "      split: test", "    metrics:"]
        lines += [line for k, v in scores for line in (f"    - type: {k.split()[0].lower()}", f"      value: {v}",
                                                       f"      name: {json.dumps(k, ensure_ascii=False)}")]
    lines += ["---", "", f"# CycleGAN {config.domain_A} ↔ {config.domain_B}", "",
              f"Unpaired image-to-image translation (Zhu et al., ICCV 2017) between *{config.domain_A}* (A) and "
              f"*{config.domain_B}* (B), made with cyclegan-kit. `G_AB` maps A→B and `G_BA` maps B→A.", "",
              "```python", "from cyclegan import CycleGAN", "model = CycleGAN.from_pretrained(\"<this repo or folder>\")",
              f"fake, rec = model.cycle(\"photo.jpg\", \"A2B\")  # {config.domain_A} -> {config.domain_B} -> back", "```",
              "", "## Architecture", "",
              f"ResNet generators with ngf={config.ngf} and {config.n_blocks} residual blocks; "
              f"PatchGAN discriminators (ndf={config.ndf}, {config.n_layers} layers) were used in training "
              "and are not published.", ""]
    if info.get("license_link"):
        lines += [f"Licence: {info['license'].upper()}, that of the weights' source ({info['license_link']}).", ""]
    training = info.get("training")
    if training:
        lines += ["## Training", ""]
        for k, v in training.items():
            if isinstance(v, list):  # e.g. the commands of a run that was resumed
                lines += [f"- {k}:", "", "```", *map(str, v), "```", ""]
            else:
                lines.append(f"- {k}: `{v}`")
        lines.append("")
    if info.get("steps"):
        lines += [f"Trained {info['steps']:,} steps ({info.get('epochs', '?')} epochs) at {info.get('image_size', '?')} px"
                  + (f" on {dataset}." if dataset else "."), ""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines.append("")
        if info.get("evaluation"):
            lines += [f"Measured with {info['evaluation']}.", ""]  # Markdown: the command in backticks
    return "\n".join(lines)
