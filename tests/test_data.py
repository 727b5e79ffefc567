"""Reading every kind of image as RGB, the unpaired dataset (cyclegan.data), and the dataset download and
names (cyclegan.datasets)."""
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan.data import DeviceImages, EpochSampler, ImageError, UnpairedDataset, load_rgb, to_image, to_tensor, transform
from cyclegan.datasets import domains_from_name, download_dataset

from tests.conftest import make_images


def save(image: Image.Image, path: Path, **kw) -> Path:
    image.save(path, **kw)
    return path


# 16-bit, CMYK, palette and grey+alpha files, EXIF rotation, animations, and empty, truncated or foreign
# files: one table in test_reliability.py (BAD_INPUTS) runs them through the package, the app and the server.

def test_every_other_mode_becomes_rgb(tmp_path):
    files = {
        "gray.png": save(Image.new("L", (8, 6), 128), tmp_path / "gray.png"),
        "rgba.png": save(Image.new("RGBA", (8, 6), (255, 0, 0, 0)), tmp_path / "rgba.png"),
        "bw.png": save(Image.new("1", (8, 6), 1), tmp_path / "bw.png"),
    }
    out = {name: load_rgb(path) for name, path in files.items()}
    assert all(im.mode == "RGB" for im in out.values())
    assert out["gray.png"].getpixel((0, 0)) == (128, 128, 128)
    assert out["rgba.png"].getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white background
    assert out["bw.png"].getpixel((0, 0)) == (255, 255, 255)


def test_the_pixel_limit_is_a_parameter(tmp_path):
    big = save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    with pytest.raises(ImageError, match="larger than the limit"):
        load_rgb(big, max_pixels=5000)


def test_tensor_round_trip():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    t = to_tensor(image)
    assert t.shape == (3, 5, 7) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(np.asarray(to_image(t)), np.asarray(image))


@pytest.mark.parametrize("preprocess, size", [("resize_and_crop", (24, 24)), ("crop", (24, 24)),
                                              ("scale_width", (20, 32)), ("scale_width_and_crop", (24, 24)),
                                              ("none", (48, 80))])
def test_preprocess_sizes(preprocess, size):
    import random
    image = Image.new("RGB", (81, 50))
    t = transform(image, preprocess, load_size=32, crop_size=24, flip=True, rng=random.Random(0))
    assert t.shape == (3, *size)


def test_flip_mirrors_half_of_the_crops_and_no_flip_none():
    """flip=True mirrors the crop with probability 1/2; --no-flip (flip=False) never does."""
    import random
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    unflipped = to_tensor(image)
    mirrored = unflipped.flip(-1)
    # preprocess "none" crops nothing, so each result is the image or its mirror
    flipped = [transform(image, "none", 40, 40, flip=True, rng=random.Random(seed)) for seed in range(40)]
    assert all(torch.equal(t, unflipped) or torch.equal(t, mirrored) for t in flipped)
    assert 8 <= sum(torch.equal(t, mirrored) for t in flipped) <= 32
    assert all(torch.equal(transform(image, "none", 40, 40, flip=False, rng=random.Random(seed)), unflipped)
               for seed in range(40))


def test_dataset_is_unpaired_deterministic_and_reshuffled_per_epoch(dataroot):
    ds = UnpairedDataset(dataroot, crop_size=16, load_size=20, seed=1)
    assert len(ds) == 7  # the larger domain
    a, b = ds[3], ds[3]
    assert torch.equal(a["A"], b["A"]) and torch.equal(a["B"], b["B"])
    assert a["A"].shape == (3, 16, 16)
    assert a["A"][0].mean() > a["A"][2].mean() and a["B"][2].mean() > a["B"][0].mean()  # red A, blue B
    ds.epoch = 1
    assert not torch.equal(ds[3]["B"], a["B"])
    s = EpochSampler(7, seed=0)
    first = list(s)
    assert sorted(first) == list(range(7))
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0, start=3)
    assert list(s) == first[3:]
    ranks = [list(EpochSampler(7, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3 and not set(ranks[0]) & set(ranks[1])


def test_missing_empty_and_imageless_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainA: no such folder"):
        UnpairedDataset(tmp_path)
    (tmp_path / "trainA").mkdir()
    (tmp_path / "trainA" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="trainA: contains no images"):
        UnpairedDataset(tmp_path)


def test_unreadable_image_is_skipped_with_a_warning(tmp_path):
    make_images(tmp_path / "trainA", 2)
    make_images(tmp_path / "trainB", 2)
    (tmp_path / "trainA" / "000.png").write_bytes(b"broken")
    ds = UnpairedDataset(tmp_path, crop_size=16, load_size=16)
    with pytest.warns(UserWarning, match="000.png"):
        item = ds[0]
    assert item["A"].shape == (3, 16, 16)
    for f in (tmp_path / "trainA").iterdir():
        f.write_bytes(b"broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageError, match="none of the 2 images"):
            ds[0]


def test_download_extracts_and_reuses(tmp_path, zip_server):
    url, data, requests = zip_server
    target = download_dataset("tiny", tmp_path / "ds", base_url=url, sha256=hashlib.sha256(data).hexdigest())
    assert target == tmp_path / "ds" / "tiny"
    assert (target / "trainA" / "0.png").is_file() and (target / "testB" / "0.png").is_file()
    assert not list((tmp_path / "ds").glob("*.zip*"))  # archive and temp files are gone
    assert download_dataset("tiny", tmp_path / "ds", base_url=url) == target
    assert len(requests) == 1  # the extracted copy was reused


def test_download_resumes_a_partial_file(tmp_path, zip_server):
    url, data, requests = zip_server
    (tmp_path / "tiny.zip.part").write_bytes(data[:100])
    download_dataset("tiny", tmp_path, base_url=url)
    assert requests == [("/tiny.zip", "bytes=100-")]
    assert (tmp_path / "tiny" / "trainB" / "0.png").is_file()


def test_download_of_a_complete_part_file_takes_the_416_answer(tmp_path, zip_server):
    url, data, requests = zip_server
    (tmp_path / "tiny.zip.part").write_bytes(data)
    download_dataset("tiny", tmp_path, base_url=url)
    assert requests == [("/tiny.zip", f"bytes={len(data)}-")]
    assert (tmp_path / "tiny" / "testA" / "0.png").is_file()


def test_download_starts_again_when_the_server_ignores_range(tmp_path, zip_server):
    url, data, requests = zip_server
    (tmp_path / "tiny.zip.part").write_bytes(b"stale bytes of an older file")
    download_dataset("tiny", tmp_path, base_url=url + "/norange")
    assert requests == [("/norange/tiny.zip", "bytes=28-")]
    assert (tmp_path / "tiny" / "testA" / "0.png").is_file()  # the zip was complete and valid


def test_download_errors(tmp_path, zip_server):
    url, data, _ = zip_server
    with pytest.raises(RuntimeError, match="HTTP 404"):
        download_dataset("missing", tmp_path, base_url=url)
    with pytest.raises(RuntimeError, match="not a valid zip"):
        download_dataset("broken", tmp_path, base_url=url)
    assert not (tmp_path / "broken.zip").exists()
    with pytest.raises(RuntimeError, match="sha256"):
        download_dataset("tiny", tmp_path, base_url=url, sha256="0" * 64)
    with pytest.raises(ValueError, match="not an official CycleGAN dataset"):
        download_dataset("horse2unicorn", tmp_path)


def test_domain_names_come_from_the_dataset_name():
    assert domains_from_name("horse2zebra") == ("horse", "zebra")
    assert domains_from_name("summer2winter_yosemite") == ("summer", "winter")
    assert domains_from_name("cityscapes_photo2label") == ("photo", "label")
    assert domains_from_name("maps") is None
    import train
    _, model_config, _ = train.configs_from_args({"dataset": "summer2winter_yosemite"})
    assert (model_config.domain_A, model_config.domain_B) == ("summer", "winter")
    _, model_config, _ = train.configs_from_args({"dataroot": "/data/my_photos/"})
    assert (model_config.domain_A, model_config.domain_B) == ("A", "B")


def test_device_images_hold_exactly_the_loaders_pixels(dataroot):
    """--data-on-device: for every item of two epochs, the same A image, B pairing, crop and flip as
    the DataLoader path, to the last bit; an unreadable file is replaced by the next one on both."""
    (dataroot / "trainB" / "001.png").write_bytes(b"not an image")
    dataset = UnpairedDataset(dataroot, "train", "resize_and_crop", 40, 32, True, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = DeviceImages(dataset, "cpu", threads=2)
        assert images.A.dtype == torch.uint8 and images.A.shape == (5, 3, 40, 40) and images.B.shape == (7, 3, 40, 40)
        flips, pairs = set(), set()
        for epoch in (0, 1):
            dataset.epoch = epoch
            sampler = EpochSampler(len(dataset), seed=3)
            for index in sampler:
                expected = dataset[index]
                got = images.batch([index])
                for d in "AB":
                    assert torch.equal(got[d][0], expected[d]), (epoch, index, d)
                _, crop_A, index_B, _ = dataset.draws(index)
                flips.add(crop_A[2])
                pairs.add(index_B)
    assert flips == {True, False} and len(pairs) >= 4  # the draws vary, so agreeing means something
    batches = list(images.batches(iter(range(7)), 3))  # the last, partial batch is dropped, as drop_last
    assert [b["A"].shape for b in batches] == [(3, 3, 32, 32)] * 2
    with pytest.raises(ValueError, match="--data-on-device yes needs --preprocess resize_and_crop"):
        DeviceImages(UnpairedDataset(dataroot, "train", "crop", 40, 32), "cpu")
