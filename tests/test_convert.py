"""Converting generators saved by the authors' code (pytorch-CycleGAN-and-pix2pix) into a model folder:
our Generator must compute what theirs computes, and a file that is not their layout is refused."""
from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch import nn

from cyclegan import CycleGAN
from cyclegan.convert import main as convert_main
from tests.conftest import TINY, max_level_difference, psnr


# ---- the authors' ResnetGenerator layout, rebuilt from its description -------------------------

class TheirResnetBlock(nn.Module):
    def __init__(self, dim: int, norm, dropout: bool) -> None:
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), norm(dim), nn.ReLU(True)]
        layers += [nn.Dropout(0.5)] if dropout else []
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class TheirResnetGenerator(nn.Module):
    def __init__(self, ngf: int, n_blocks: int, affine: bool = False, dropout: bool = False,
                 running_stats: bool = False) -> None:
        super().__init__()
        norm = functools.partial(nn.InstanceNorm2d, affine=affine, track_running_stats=running_stats)
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), norm(ngf), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [TheirResnetBlock(ngf * 4, norm, dropout) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def theirs(seed: int, affine: bool = False, dropout: bool = False) -> TheirResnetGenerator:
    torch.manual_seed(seed)
    net = TheirResnetGenerator(TINY.ngf, TINY.n_blocks, affine, dropout)
    with torch.no_grad():  # random scales and shifts, so that a misplaced one shows
        for m in net.modules():
            if isinstance(m, nn.InstanceNorm2d) and affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def with_running_stats(state: dict) -> dict:
    """What old PyTorch saved: running statistics of every InstanceNorm, which instance norm never uses
    (the authors' code deletes them on loading)."""
    old = TheirResnetGenerator(TINY.ngf, TINY.n_blocks, running_stats=True).state_dict()
    stats = {k: v.float().uniform_(0.5, 2) if v.is_floating_point() else v + 100
             for k, v in old.items() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert len(stats) == 3 * (5 + 2 * TINY.n_blocks)
    return {**state, **stats}


def test_the_reference_layout_has_the_documented_keys():
    keys = theirs(0).state_dict().keys()
    assert {"model.1.weight", "model.4.bias", "model.7.weight", "model.10.conv_block.1.weight",
            "model.10.conv_block.5.bias", "model.11.conv_block.5.weight", "model.12.weight", "model.15.weight",
            "model.19.weight", "model.19.bias"} <= keys
    assert len(keys) == 2 * (6 + 2 * TINY.n_blocks)  # weight and bias of the convolutions only


def same(state: dict) -> dict:
    return state


VARIANTS = {  # name: (how their generator was built, what was saved, torch.save options)
    "plain": (dict(), same, dict()),
    "old running stats": (dict(), with_running_stats, dict()),
    "affine norm": (dict(affine=True), same, dict()),
    "dropout blocks": (dict(dropout=True), same, dict()),
    "wrapped, DataParallel": (dict(), lambda s: {"state_dict": {"module." + k: v for k, v in s.items()}}, dict()),
    "pre-1.6 file format": (dict(), same, dict(_use_new_zipfile_serialization=False)),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_generators_compute_what_theirs_compute(variant, tmp_path, capsys):
    kwargs, transform, save_options = VARIANTS[variant]
    nets = {"a2b": theirs(1, **kwargs), "b2a": theirs(2, **kwargs)}
    for name, net in nets.items():
        torch.save(transform(net.state_dict()), tmp_path / f"latest_net_{name}.pth", **save_options)
    assert convert_main(["--a2b", str(tmp_path / "latest_net_a2b.pth"), "--b2a", str(tmp_path / "latest_net_b2a.pth"),
                         "--out", str(tmp_path / "model"), "--domains", "horse", "zebra"]) == 0
    assert "horse <-> zebra" in capsys.readouterr().out
    model = CycleGAN.from_pretrained(tmp_path / "model")
    c = model.config
    assert (c.ngf, c.n_blocks, c.affine_norm, c.domain_A, c.domain_B) == (
        TINY.ngf, TINY.n_blocks, variant == "affine norm", "horse", "zebra")
    assert model.info["training"]["converted_from"] == "junyanz/pytorch-CycleGAN-and-pix2pix"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for ours, name in ((model.G_AB, "a2b"), (model.G_BA, "b2a")):
            diff = max_level_difference(ours(x), nets[name](x))
            assert diff <= 1, (name, diff)  # the same 8-bit images, but for rounding
        assert psnr(model.G_AB(x), nets["b2a"](x)) < 30  # the directions are not swapped (11-13 dB measured)


def run_error(tmp_path, capsys, a2b, b2a) -> str:
    for name, obj in (("a.pth", a2b), ("b.pth", b2a)):
        if obj is not None:
            torch.save(obj, tmp_path / name)
    code = convert_main(["--a2b", str(tmp_path / "a.pth"), "--b2a", str(tmp_path / "b.pth"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    return err


def test_unexpected_layouts_are_refused_naming_a_few_keys(tmp_path, capsys):
    good = theirs(1).state_dict()
    extra = {**good, **{f"netD.layer{i}.weight": torch.zeros(1) for i in range(30)}}
    err = run_error(tmp_path, capsys, extra, good)
    assert "unexpected keys: netD.layer0.weight, netD.layer1.weight" in err and "and 25 more" in err
    assert "layer29" not in err
    assert "holds a list, not a state dict" in run_error(tmp_path, capsys, [torch.zeros(1)], good)
    no_bias = {k: v for k, v in good.items() if not k.endswith("bias")}
    assert "only instance-norm generators" in run_error(tmp_path, capsys, good, no_bias)
    wide = TheirResnetGenerator(16, TINY.n_blocks).state_dict()
    assert "ngf=16" in run_error(tmp_path, capsys, good, wide)
    gray = dict(good, **{"model.1.weight": torch.zeros(TINY.ngf, 1, 7, 7)})
    assert "model.1.weight has shape (8, 1, 7, 7), expected (8, 3, 7, 7)" in run_error(tmp_path, capsys, gray, good)
    (tmp_path / "sub").mkdir()
    assert "b.pth: no such file" in run_error(tmp_path / "sub", capsys, good, None)


class Evil:
    """Unpickling this would create a file: a stand-in for any code a checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    good = theirs(1).state_dict()
    err = run_error(tmp_path, capsys, {**good, "model.1.weight": Evil(marker)}, good)
    assert "a.pth: cannot be read as a state dict of tensors" in err and "open" in err
    assert not marker.exists()


@pytest.fixture
def authors_server(tmp_path):
    """The two files of horse2zebra, served over HTTP from 127.0.0.1 like the authors' server."""
    root = tmp_path / "served"
    (root / "pretrained_models").mkdir(parents=True)
    nets = {"horse2zebra": theirs(1), "zebra2horse": theirs(2)}
    for name, net in nets.items():
        torch.save(net.state_dict(), root / "pretrained_models" / f"{name}.pth")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pretrained_models", nets
    server.shutdown()
    server.server_close()


def test_name_downloads_both_directions_then_uses_the_cache(authors_server, tmp_path, capsys):
    url, nets = authors_server
    args = ["--name", "horse2zebra", "--base-url", url, "--cache", str(tmp_path / "cache"), "--dtype", "float16"]
    assert convert_main(args + ["--out", str(tmp_path / "m")]) == 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["horse2zebra.pth", "zebra2horse.pth"]
    model = CycleGAN.from_pretrained(tmp_path / "m")
    assert (model.config.domain_A, model.config.domain_B) == ("horse", "zebra")
    assert model.info["training"]["G_BA"] == "zebra2horse.pth"
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():  # float16 weights: close, not exact (1 level at most, 62 dB, measured)
        for ours, name in ((model.G_AB, "horse2zebra"), (model.G_BA, "zebra2horse")):
            assert max_level_difference(ours(x), nets[name](x)) <= 2, name
    (tmp_path / "served" / "pretrained_models" / "horse2zebra.pth").unlink()  # a second run must not need the server
    assert convert_main(args + ["--out", str(tmp_path / "m2")]) == 0
    again = CycleGAN.from_pretrained(tmp_path / "m2").state_dict()
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    # monet2photo has no photo2monet on the server: a one-line error naming the missing file
    assert convert_main(["--name", "monet2photo", "--base-url", url, "--cache", str(tmp_path / "cache"),
                         "--out", str(tmp_path / "m3")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot download") and "monet2photo.pth: HTTP 404" in err


def test_pair_names():
    from cyclegan.convert import pair

    assert pair("horse2zebra") == ("zebra2horse", "horse", "zebra")
    assert pair("summer2winter_yosemite") == ("winter2summer_yosemite", "summer", "winter")
    assert pair("cityscapes_photo2label") == ("cityscapes_label2photo", "photo", "label")
    with pytest.raises(ValueError, match="style_monet"):
        pair("style_monet")
