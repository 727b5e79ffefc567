"""Turn the generators of the authors' PyTorch CycleGAN (junyanz/pytorch-CycleGAN-and-pix2pix) into a
model folder: `python -m cyclegan.convert --name horse2zebra --out weights/horse2zebra`."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

from .cli import prog
from .datasets import DATASET_PAIR
from .files import download, one_line
from .model import CycleGAN, ModelConfig
from .networks import Generator

AUTHORS_REPO = "junyanz/pytorch-CycleGAN-and-pix2pix"
BASE_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cyclegan-kit" / "pretrained"
# Their ResnetGenerator is one nn.Sequential `model`; a residual block's layers sit in its `conv_block`.
KEY = re.compile(r"model\.(\d+)\.(?:conv_block\.(\d+)\.)?(weight|bias|running_mean|running_var|num_batches_tracked)")
# Old PyTorch saved running statistics for InstanceNorm; instance norm never uses them (the authors drop them too).
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a saved state dict: plain, under "state_dict", or with DataParallel's "module." prefix.
    Only tensors are unpickled (weights_only): a file that needs code to load is refused, never run."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails with many types on foreign bytes: all mean "not a state dict"
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        detail = found[1].split(". ")[0] if found else f"{type(e).__name__}: {str(e).strip()[:200]}"
        raise ValueError(f"{path}: cannot be read as a state dict of tensors ({detail})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def parse(state: dict, path: str | os.PathLike) -> tuple[list[tuple[str, dict[str, torch.Tensor]]], ModelConfig]:
    """The layers with weights of an authors' ResnetGenerator in forward order, and the ngf, n_blocks
    and affine_norm they imply."""
    layers: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, value in state.items():
        m = KEY.fullmatch(key)
        if m is None or not isinstance(value, torch.Tensor):
            unexpected.append(key)
        elif m[3] not in RUNNING_STATS:
            layers.setdefault((int(m[1]), int(m[2] or -1)), {})[m[3]] = value
    if unexpected or not layers:
        raise ValueError(f"{path}: not a ResnetGenerator of pytorch-CycleGAN-and-pix2pix; "
                         f"unexpected keys: {_few(unexpected) or 'none of its layers'}")
    ordered = [(f"model.{i}" + (f".conv_block.{j}" if j >= 0 else ""), layers[i, j]) for i, j in sorted(layers)]
    no_bias = [name for name, p in ordered if "bias" not in p]
    if no_bias:  # their batch-norm generators drop the conv biases; ours keep them (instance norm only)
        raise ValueError(f"{path}: layers without bias ({_few(no_bias)}): only instance-norm generators "
                         f"(the authors' default, --norm instance) can be converted")
    first = ordered[0][1]["weight"]
    config = ModelConfig(ngf=first.shape[0], n_blocks=len({i for i, j in layers if j >= 0}),
                         affine_norm=any(p["weight"].dim() == 1 for _, p in ordered))
    return ordered, config


def to_generator(layers: list[tuple[str, dict[str, torch.Tensor]]], config: ModelConfig,
                 path: str | os.PathLike) -> Generator:
    """Our Generator with their weights: both list the same layers in the same order."""
    G = Generator(config.ngf, config.n_blocks, affine_norm=config.affine_norm)
    ours = [name for name, m in G.named_modules()
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) or getattr(m, "affine", False)]
    if len(ours) != len(layers):
        raise ValueError(f"{path}: {len(layers)} layers with weights, but a ResnetGenerator with ngf={config.ngf} "
                         f"and {config.n_blocks} blocks has {len(ours)}")
    state = {}
    for name, (theirs, params) in zip(ours, layers):
        for p, tensor in params.items():
            expected = G.get_parameter(f"{name}.{p}").shape
            if tensor.shape != expected:
                raise ValueError(f"{path}: {theirs}.{p} has shape {tuple(tensor.shape)}, expected {tuple(expected)} "
                                 f"(ngf={config.ngf}, {config.n_blocks} blocks, RGB in and out)")
            state[f"{name}.{p}"] = tensor.float()
    G.load_state_dict(state, strict=True)
    return G.eval()


def fetch(url: str, cache: Path) -> Path:
    """`url` into the cache folder, kept there for next time."""
    target = cache / url.rsplit("/", 1)[-1]
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        download(url, target)
    return target


def pair(name: str) -> tuple[str, str, str]:
    """horse2zebra -> (zebra2horse, horse, zebra); summer2winter_yosemite -> (winter2summer_yosemite, ...)."""
    m = DATASET_PAIR.fullmatch(name)
    if m is None:
        raise ValueError(f"--name {name!r}: expected a pair like horse2zebra (the authors publish both "
                         f"directions only for those); otherwise pass --a2b and --b2a files")
    return f"{m[1]}{m[3]}2{m[2]}{m[4]}", m[2], m[3]


def convert(a2b: str | os.PathLike, b2a: str | os.PathLike, domains: tuple[str, str] = ("A", "B"),
            info: dict | None = None) -> CycleGAN:
    """A CycleGAN whose G_AB and G_BA are the authors' generators saved in `a2b` and `b2a`."""
    (layers_ab, config), (layers_ba, config_ba) = (parse(read_state_dict(p), p) for p in (a2b, b2a))
    if config != config_ba:
        raise ValueError(f"{b2a}: ngf={config_ba.ngf}, {config_ba.n_blocks} blocks, affine_norm={config_ba.affine_norm} "
                         f"differs from {a2b} (ngf={config.ngf}, {config.n_blocks} blocks, "
                         f"affine_norm={config.affine_norm})")
    config.domain_A, config.domain_B = domains
    # Their weights come with their code's BSD licence, which the model card then states.
    model = CycleGAN(config, info={"license": "bsd", "license_link": f"https://github.com/{AUTHORS_REPO}/blob/master/LICENSE",
                                   **(info or {})})
    model.G_AB = to_generator(layers_ab, config, a2b)
    model.G_BA = to_generator(layers_ba, config, b2a)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("python -m cyclegan.convert"), description=__doc__)
    parser.add_argument("--a2b", help="generator A->B (their latest_net_G_A.pth, or e.g. horse2zebra.pth)")
    parser.add_argument("--b2a", help="generator B->A (their latest_net_G_B.pth, or e.g. zebra2horse.pth)")
    parser.add_argument("--name", help="download a published pair instead, e.g. horse2zebra (and zebra2horse)")
    parser.add_argument("--base-url", default=BASE_URL, help="where --name files are (default: the authors' server)")
    parser.add_argument("--cache", default=str(CACHE), help=f"folder for downloads (default: {CACHE})")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--domains", nargs=2, metavar=("A", "B"), help="domain names (default: from --name, or A B)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="precision of the weights")
    args = parser.parse_args(argv)
    if len([f for f in (args.a2b, args.b2a) if f]) != (0 if args.name else 2):
        parser.error("give --name, or both --a2b and --b2a")
    try:
        domains = tuple(args.domains or ("A", "B"))
        if args.name:
            reverse, a, b = pair(args.name)
            domains = tuple(args.domains or (a, b))
            url = args.base_url.rstrip("/")
            args.a2b, args.b2a = (fetch(f"{url}/{n}.pth", Path(args.cache)) for n in (args.name, reverse))
        training = {"converted_from": AUTHORS_REPO,
                    "G_AB": Path(args.a2b).name, "G_BA": Path(args.b2a).name}
        model = convert(args.a2b, args.b2a, domains, info={"training": training})
        out = model.save_pretrained(args.out, dtype=args.dtype)
    except (OSError, ValueError) as e:
        print(f"error: {one_line(e, 2000)}", file=sys.stderr)
        return 1
    c = model.config
    print(f"{out}: {c.domain_A} <-> {c.domain_B}, ngf={c.ngf}, {c.n_blocks} blocks"
          + (", affine instance norm" if c.affine_norm else ""))
    return 0


if __name__ == "__main__":  # a missing extra is a one-line message, as for the console command
    from .cli import run
    run("convert")
