"""The sharper-decoder parts: the resconv backbone trains on tiny data, and the adversarial patch
term (loss=mse_patchgan): its discriminator learns through the real loop (hinge loss falls), it
is exactly nothing before `start_step`, its adaptive weight is VQGAN's formula by hand (and a
fixed weight for a model without `last_layer`), and a run killed mid-way resumes exactly."""
import pytest
import torch
from torch import nn

from aexp import checkpoint
from aexp.assemble import build, build_loss
from aexp.errors import ConfigError
from aexp.io import read_csv
from aexp.models import Output
from aexp.run.train import train
from test_disentangling_models import assert_same_end, stop_then_resume

# resconv on the bundled 8x8 digits (20 batches an epoch), a 2-layer patch discriminator
TINY = ["dataset=digits", "model=resconv", "model.channels=[8,16]", "model.groups=4",
        "train.batch_size=64", "train.threads=1", "frames.enabled=false", "eval.enabled=false",
        "device=cpu"]
GAN = ["loss=mse_patchgan", "loss.terms.gan.width=8", "loss.terms.gan.layers=2"]


def test_resconv_trains_on_tiny_data(compose_cfg, tmp_path):
    train(compose_cfg([*TINY, "loss=mse", "train.epochs=3"]), tmp_path / "run")
    mse = [float(r["val_mse"]) for r in read_csv(tmp_path / "run" / "metrics.csv")]
    assert mse[-1] < mse[0], mse


def test_the_discriminator_learns_and_its_hinge_loss_falls(compose_cfg, tmp_path):
    train(compose_cfg([*TINY, *GAN, "train.epochs=3"]), tmp_path / "run")
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    disc = [float(r["train_gan_disc_loss"]) for r in rows]
    assert disc[-1] < disc[0] and disc[-1] < 0.95, disc           # 1.0: logits all zero
    assert all(float(r["train_gan_real"]) > float(r["train_gan_fake"]) for r in rows[1:]), rows
    assert all(float(r["train_gan_adaptive"]) > 0 for r in rows)
    saved = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert set(saved["loss"]["gan"]) == {"net", "optimizer", "steps", "lam"}
    assert saved["loss"]["gan"]["steps"] == 60


def _batch(channels=1, n=4, side=8):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, channels, side, side, generator=g), torch.rand(n, channels, side, side, generator=g)


def test_before_start_step_the_loss_is_exactly_the_base_loss(compose_cfg):
    torch.manual_seed(0)
    loss = build_loss(compose_cfg([*GAN, "loss.terms.gan.start_step=3"]).loss, channels=1)
    base = build_loss(compose_cfg(["loss=mse"]).loss)
    model = build(compose_cfg(TINY).model, in_shape=(1, 8, 8), out_shape=(1, 8, 8)).train()
    x, _ = _batch()
    before = {k: v.clone() for k, v in loss.terms["gan"].net.state_dict().items()}
    for step in range(5):
        out = model(x)
        terms, plain = loss(out, x, x, model), base(out, x, x, model)
        if step < 3:
            assert terms["gan"] == 0 and torch.equal(terms["loss"], plain["loss"])
        else:
            assert terms["gan"] != 0 and not torch.equal(terms["loss"], plain["loss"])
        logged = loss.auxiliary_step(out, x, x, model)
        assert set(logged) == {"gan_disc_loss", "gan_real", "gan_fake", "gan_adaptive"}
        moved = any(not torch.equal(before[k], v) for k, v in loss.terms["gan"].net.state_dict().items())
        assert moved == (step >= 3), step                  # not stepped while off


class NoLastLayer(nn.Module):
    """A decoder-only stand-in without a `last_layer`."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, 1, 1)


def test_the_adaptive_weight_is_vqgans_formula_and_falls_back_to_fixed(compose_cfg):
    torch.manual_seed(0)
    gan = build_loss(compose_cfg(GAN).loss, channels=1).terms["gan"]
    model = build(compose_cfg(TINY).model, in_shape=(1, 8, 8), out_shape=(1, 8, 8)).train()
    x, y = _batch()
    out = model(x)
    g = gan(out, x, y, model, "sum")
    w = model.last_layer.weight
    rec = ((out.x_hat - y) ** 2).flatten(1).sum(1).mean()
    by_hand = (torch.autograd.grad(rec, w, retain_graph=True)[0].norm()
               / (torch.autograd.grad(g.mean(), w, retain_graph=True)[0].norm() + 1e-4))
    assert torch.allclose(gan.lam, by_hand) and gan.weight_at(1) == pytest.approx(0.5 * by_hand.item())
    other = NoLastLayer()
    gan(Output(other.conv(x), None, {}), x, y, other, "sum")
    assert gan.lam.item() == 1.0                           # no last layer: the fixed weight
    with pytest.raises(ConfigError):                       # not images of its channels
        gan(Output(torch.rand(4, 3), None, {}), x, y, model, "sum")
    with pytest.raises(ConfigError):
        build_loss(compose_cfg(GAN).loss)                  # no image channels known


def test_a_killed_patchgan_run_resumes_exactly(compose_cfg, tmp_path):
    # start_step 25: the term switches on in epoch 2, before the kill at call 32 (epoch 2, step 11)
    cfg = compose_cfg([*TINY, *GAN, "loss.terms.gan.start_step=25", "train.epochs=3"])
    assert_same_end(*stop_then_resume(cfg, tmp_path))
