"""The paper's architectures: exact sizes, and the same checks over every model variant."""
import pytest
import torch

from cyclegan import CycleGAN, Discriminator, Generator, ModelConfig


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_parameter_counts():
    assert n_params(Generator()) == 11_378_179
    assert n_params(Discriminator()) == 2_764_737
    assert n_params(Generator(ngf=64, n_blocks=6)) == 11_378_179 - 3 * 2 * (256 * 256 * 9 + 256)


def test_instance_norm_has_no_parameters_or_running_stats():
    g = Generator(ngf=8, n_blocks=1)
    assert not any("norm" in k or "running" in k for k in g.state_dict())
    assert all(not m.affine and not m.track_running_stats
               for m in g.modules() if isinstance(m, torch.nn.InstanceNorm2d))


def test_discriminator_is_a_70x70_patchgan():
    d = Discriminator(ndf=8)
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    # Instance norm mixes the whole image, so measure the convolutions' receptive field without it:
    # the gradient of one central output reaches exactly a 70x70 window of the input.
    for i, m in enumerate(d.model):
        if isinstance(m, torch.nn.InstanceNorm2d):
            d.model[i] = torch.nn.Identity()
    x = torch.randn(1, 3, 256, 256, requires_grad=True)
    d(x)[0, 0, 15, 15].backward()
    rows, cols = (x.grad[0].abs().sum(0) > 0).nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


@pytest.mark.parametrize("config", [ModelConfig(ngf=8, ndf=8, n_blocks=2, n_layers=2),
                                    ModelConfig(ngf=4, ndf=4, n_blocks=0, n_layers=3),
                                    ModelConfig(ngf=8, ndf=8, n_blocks=6, n_layers=1)])
def test_every_variant_forward_backward_save_load_determinism(config, tmp_path):
    model = CycleGAN(config, with_discriminators=True).init_weights(seed=3)
    x = torch.rand(2, 3, 32, 36) * 2 - 1
    for G in (model.G_AB, model.G_BA):
        y = G(x)
        assert y.shape == x.shape and y.std() > 1e-3  # tanh keeps it in [-1, 1]; a constant output would be a bug
    for D in (model.D_A, model.D_B):
        out = D(x)
        assert out.ndim == 4 and out.shape[:2] == (2, 1)
    loss = model.G_AB(x).mean() + model.D_A(x).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.G_AB.parameters())
    # Same seed, same weights; saving and loading keeps the outputs exactly.
    again = CycleGAN(config, with_discriminators=True).init_weights(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    model.save_pretrained(tmp_path / "m")
    loaded = CycleGAN.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded.G_BA(x), model.eval().G_BA(x))


def test_init_is_normal_0_002_with_zero_bias():
    g = CycleGAN(ModelConfig(ngf=32, n_blocks=2)).init_weights(seed=0).G_AB
    w = g.blocks[0].conv1.weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    assert torch.all(g.blocks[0].conv1.bias == 0)


@pytest.mark.parametrize("size", [(32, 32), (36, 44), (8, 8), (64, 12)])
def test_generator_keeps_the_size_of_inputs_divisible_by_4(size):
    g = Generator(ngf=4, n_blocks=1).eval()
    assert g(torch.zeros(1, 3, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (37, 21), (130, 7)])
def test_translate_any_size(tiny_model, size):
    from PIL import Image
    image = Image.new("RGB", size, (120, 40, 200))
    fake, rec = tiny_model.cycle(image, "A2B")
    assert fake.size == size and rec.size == size and fake.mode == "RGB"
    assert tiny_model.translate(image, "B2A").size == size
    with pytest.raises(ValueError, match="direction"):
        tiny_model.translate(image, "sideways")
