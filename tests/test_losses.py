"""Loss functions on tensors with known answers, and the image pool."""
import pytest
import torch

from cyclegan.losses import ImagePool, adversarial_loss, cycle_loss, discriminator_loss, identity_loss


def test_lsgan_losses():
    pred = torch.tensor([0.0, 0.5, 1.0, 2.0])
    assert adversarial_loss(pred, True).item() == pytest.approx((1 + 0.25 + 0 + 1) / 4)
    assert adversarial_loss(pred, False).item() == pytest.approx((0 + 0.25 + 1 + 4) / 4)
    # Halved: perfect D gives 0, a D that outputs 0.5 everywhere gives 0.5 * (0.25 + 0.25).
    assert discriminator_loss(torch.ones(3), torch.zeros(3)).item() == 0
    assert discriminator_loss(torch.full((3,), 0.5), torch.full((3,), 0.5)).item() == pytest.approx(0.25)


def test_l1_losses():
    real = torch.zeros(1, 3, 2, 2)
    rec = torch.full((1, 3, 2, 2), -0.5)
    rec[0, 0, 0, 0] = 1.5
    expected = (1.5 + 11 * 0.5) / 12
    assert cycle_loss(real, rec).item() == pytest.approx(expected)
    assert identity_loss(real, rec).item() == pytest.approx(expected)


def test_pool_fills_then_mixes_old_and_new():
    pool = ImagePool(size=3, seed=0)
    first = [torch.full((1, 1, 2, 2), float(i)) for i in range(3)]
    for x in first:  # while filling, each image comes straight back
        assert torch.equal(pool.query(x), x)
    assert len(pool.images) == 3
    inserted, returned = [0.0, 1.0, 2.0], []
    for i in range(400):
        value = 100.0 + i
        out = pool.query(torch.full((1, 1, 2, 2), value)).flatten()[0].item()
        returned.append(out)
        if out != value:  # an old image came back: it was in the pool, and the new one took its place
            assert out in inserted
            inserted.remove(out)
            inserted.append(value)
        assert sorted(im.flatten()[0].item() for im in pool.images) == sorted(inserted)
    old = sum(v < 100 + i for i, v in enumerate(returned))
    assert 160 <= old <= 240  # half of them, as in the paper: Binomial(400, 0.5) is within ±40 at 4 sigma


def test_pool_size_zero_passes_through_and_state_round_trips():
    x = torch.randn(2, 3, 4, 4)
    assert ImagePool(0).query(x) is x
    a = ImagePool(2, seed=5)
    for i in range(4):
        a.query(torch.full((1, 1, 1, 1), float(i)))
    b = ImagePool(2, seed=99)
    b.load_state_dict(a.state_dict())
    for i in range(10):
        y = torch.full((1, 1, 1, 1), 10.0 + i)
        assert torch.equal(a.query(y), b.query(y))
