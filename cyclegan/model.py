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
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data import load_rgb, to_image, to_tensor
from .files import write_atomic
from .networks import Discriminator, Generator, init_weights

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
DIRECTIONS = ("A2B", "B2A")
PRECISIONS = ("auto", "fp32", "bf16")
# Official CycleGAN datasets that the Hub holds as huggan/NAME: model cards name them by that id.
HUB_DATASETS = ("horse2zebra", "apple2orange", "summer2winter_yosemite")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX), as PyTorch's oneDNN sees
    it. Elsewhere bf16 is emulated and slower than float32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(check is not None for check in checks):
        return any(check() for check in checks)
    try:  # an older or newer torch without these private checks: ask the kernel (Linux only)
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The half-precision type inference on `device` runs in for `precision`, or None for float32.
    "auto": bf16 on a CPU that has it in hardware, bf16 (fp16 where bf16 is missing) on CUDA, float32
    elsewhere; "bf16" asks for it anywhere (slow where the CPU emulates it); "fp32" turns it off."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose {', '.join(map(repr, PRECISIONS))}")
    kind = torch.device(device).type
    if precision == "fp32" or (precision == "auto" and kind not in ("cpu", "cuda")):
        return None
    if kind == "cuda":
        return torch.bfloat16 if precision == "bf16" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" or cpu_has_native_bf16() else None


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
        where the hardware has it, see `autocast_dtype`), "fp32" or "bf16".
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


@torch.inference_mode()
def run_any_size(net: nn.Module, x: torch.Tensor, max_side: int | None = 1024, large: str = "tile",
                 tile: int = 512, overlap: int = 64, precision: str = "auto") -> torch.Tensor:
    """`net` (a generator) on one image (1, 3, H, W) in [-1, 1] of any size, as translate() runs it:
    padded, or tiled or downscaled above `max_side`, in the arithmetic `precision` picks for the
    image's device (see `autocast_dtype`). Returns float32 of the input's size."""
    dtype = autocast_dtype(precision, x.device)
    if dtype is not None:
        net = _autocast(net, x.device.type, dtype)
    h, w = x.shape[-2:]
    if max_side is None or max(h, w) <= max_side:
        return run_padded(net, x)
    if large == "tile":
        return run_tiled(net, x, tile, overlap)
    if large != "downscale":
        raise ValueError(f"large={large!r}: choose 'tile' or 'downscale'")
    scale = max_side / max(h, w)
    small = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True)
    y = run_padded(net, small)
    return F.interpolate(y, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)


def _autocast(net: nn.Module, device_type: str, dtype: torch.dtype):
    """`net` as a function of float32 images that computes in `dtype` and returns float32; on CUDA in
    channels_last, the layout its tensor cores convolve fastest."""
    def run(x: torch.Tensor) -> torch.Tensor:
        if device_type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=dtype):
            return net(x).float()
    return run


def run_padded(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pad (N, 3, H, W) to sides that are multiples of 4 and at least 8, run `net`, crop back."""
    h, w = x.shape[-2:]
    H, W = max(8, -(-h // 4) * 4), max(8, -(-w // 4) * 4)
    if (H, W) == (h, w):
        return net(x)
    # Reflection needs the pad to be smaller than the side; tiny images are replicated instead.
    mode = "reflect" if H - h < h and W - w < w else "replicate"
    return net(F.pad(x, (0, W - w, 0, H - h), mode=mode))[..., :h, :w]


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def run_tiled(net: nn.Module, x: torch.Tensor, tile: int = 512, overlap: int = 64, batch: int = 4) -> torch.Tensor:
    """Run `net` on overlapping tiles of one image (1, 3, H, W), blending the overlaps with linear
    ramps so that the seams of per-tile instance norm statistics do not show."""
    if overlap * 2 >= tile:
        raise ValueError(f"overlap={overlap} must be less than half of tile={tile}")
    _, c, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    boxes = [(y, x0) for y in _starts(h, th, th - overlap) for x0 in _starts(w, tw, tw - overlap)]
    ramp_h = _ramp(th, overlap, x.device)
    ramp_w = _ramp(tw, overlap, x.device)
    weight = (ramp_h[:, None] * ramp_w[None, :])[None]
    out = torch.zeros(c, h, w, device=x.device)
    total = torch.zeros(1, h, w, device=x.device)
    for i in range(0, len(boxes), batch):  # tiles have one size, so they run as a batch
        chunk = boxes[i:i + batch]
        tiles = torch.cat([x[..., y:y + th, x0:x0 + tw] for y, x0 in chunk])
        for (y, x0), t in zip(chunk, run_padded(net, tiles)):
            out[:, y:y + th, x0:x0 + tw] += t * weight
            total[:, y:y + th, x0:x0 + tw] += weight
    return (out / total).unsqueeze(0)


def _ramp(n: int, overlap: int, device) -> torch.Tensor:
    r = torch.ones(n, device=device)
    if overlap > 0 and n > 2 * overlap:
        edge = torch.linspace(0.0, 1.0, overlap + 2, device=device)[1:-1]
        r[:overlap], r[n - overlap:] = edge, edge.flip(0)
    return r


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
            lines += [f"Measured with `{info['evaluation']}`.", ""]
    return "\n".join(lines)
