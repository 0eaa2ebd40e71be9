"""Training features: max_steps, per-batch schedules, gradient clipping, progressive resizing,
encoder freezing, the overcomplete linear AE learning the identity, `aexp lr-find`, and
incompatible combinations failing through the real CLI."""
import csv

import pytest
import torch

from aexp.run import steps as loop
from aexp.errors import ConfigError
from aexp.models.pooling import PoolingCNN
from aexp.models.resnet import ResNetAE
from aexp.assemble import build
from aexp.run.train import train
from conftest import run_cli

SMALL = ["dataset.n_train=200", "dataset.n_val=50", "train.batch_size=64", "frames.enabled=false"]


def test_max_steps_and_one_cycle_step_per_batch(compose_cfg, tmp_path):
    cfg = compose_cfg([*SMALL, "train.max_steps=7", "schedule=onecycle", "train.grad_clip=1.0"])
    train(cfg, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    # 200 samples / 64 = 4 steps per epoch (the remainder of 8 is a batch): 7 steps = 2 epochs
    assert state["epoch"] == 2
    assert state["scheduler"]["last_epoch"] == 7 and state["scheduler"]["total_steps"] == 7
    assert all(s["step"] == 7 for s in state["optimizer"]["state"].values())
    assert len(list(csv.DictReader(open(tmp_path / "metrics.csv")))) == 2


def test_cosine_schedule_decays_over_the_run(compose_cfg, tmp_path):
    cfg = compose_cfg([*SMALL, "train.epochs=2", "schedule=cosine", "optimizer.lr=0.01"])
    train(cfg, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["scheduler"]["T_max"] == 8 and state["scheduler"]["last_epoch"] == 8
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_gradient_clipping_bounds_the_norm():
    net = torch.nn.Linear(4, 4)
    (net(torch.randn(8, 4)) * 1e4).sum().backward()
    loop.clip_gradients(net, 0.5)
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters()))
    assert norm == pytest.approx(0.5, rel=1e-4)


def test_progressive_sizes_and_resize():
    stages = [{"size": 16, "epochs": 2}, {"size": 24, "epochs": 1}]
    assert [loop.progressive_size(stages, e) for e in (1, 2, 3, 4)] == [(16, 16), (16, 16), (24, 24), None]
    x = torch.rand(2, 1, 28, 28)
    xs, ys = loop.resize(x, x, (16, 16))
    assert xs.shape == ys.shape == (2, 1, 16, 16)


def test_progressive_training_runs_at_the_small_size_first(compose_cfg, tmp_path, tiny_mnist, monkeypatch):
    seen = []
    real = loop.resize
    monkeypatch.setattr(loop, "resize", lambda x, y, size: seen.append(size) or real(x, y, size))
    cfg = compose_cfg(["model=conv", "model.channels=[4,8]", "dataset=mnist", f"dataset.root={tiny_mnist}",
                       "dataset.val_size=20", "train.epochs=2", "train.batch_size=50",
                       "train.progressive=[{size:16,epochs:1}]", "frames.enabled=false"])
    train(cfg, tmp_path)
    # the pre-training check at 16x16, then 2 batches per epoch: epoch 1 small, epoch 2 full size
    assert seen == [(16, 16), (16, 16), (16, 16), None, None]


def test_progressive_with_a_fixed_size_model_fails_before_training(compose_cfg, tmp_path, tiny_mnist):
    cfg = compose_cfg(["model=conv", "model.channels=[4,8]", "model.latent_dim=4", "dataset=mnist",
                       f"dataset.root={tiny_mnist}", "dataset.val_size=20",
                       "train.progressive=[{size:16,epochs:1}]", "frames.enabled=false"])
    with pytest.raises(ConfigError, match="cannot train at 16x16"):
        train(cfg, tmp_path)


def test_resnet_encoder_frozen_for_the_first_epochs(tmp_path):
    import torchvision
    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    net = ResNetAE((3, 32, 32), (3, 32, 32), weights=str(weights), freeze_epochs=1,
                   decoder_channels=[8, 8, 8, 8])
    assert torch.equal(net.encoder[0].weight, torch.load(weights)["conv1.weight"])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.rand(4, 3, 32, 32)

    def step(epoch):
        net.start_epoch(epoch)
        enc = [p.detach().clone() for p in net.encoder.parameters()]
        dec = [p.detach().clone() for p in net.decoder.parameters()]
        opt.zero_grad(set_to_none=True)
        ((net(x).x_hat - x) ** 2).mean().backward()
        opt.step()
        changed = lambda before, mod: any(not torch.equal(a, b) for a, b in zip(before, mod.parameters()))
        return changed(enc, net.encoder), changed(dec, net.decoder)

    assert step(1) == (False, True)     # frozen encoder, decoder learns
    assert step(2) == (True, True)      # unfrozen


def test_pooling_levels_sweep_and_too_many_levels_for_tiny_images():
    for levels in range(4):
        net = PoolingCNN((1, 32, 32), (2, 32, 32), pooling=levels, width=4)
        assert net(torch.rand(2, 1, 32, 32)).x_hat.shape == (2, 2, 32, 32)
    with pytest.raises(ConfigError, match="3 downsampling levels shrink a 8x8 image"):
        PoolingCNN((1, 8, 8), (1, 8, 8), pooling=3)


def test_overcomplete_linear_autoencoder_learns_the_identity(compose_cfg):
    """784 -> 784 -> 784, linear, no bias, on tiny data: the 784 one-pixel images (they span
    every direction, so the only way to reconstruct them all is W2 @ W1 = I)."""
    cfg = compose_cfg(["model=overcomplete", "optimizer.lr=0.01"])
    torch.manual_seed(0)
    net = build(cfg.model, in_shape=(1, 28, 28), out_shape=(1, 28, 28))
    loss_fn, opt = build(cfg.loss), build(cfg.optimizer, params=net.parameters())
    x = torch.eye(784).view(784, 1, 28, 28)
    eye = torch.eye(784)
    start = (net.weight_product() - eye).norm() / eye.norm()
    for _ in range(60):
        loss = loss_fn(net(x), x, x, net)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    product = net.weight_product()
    assert product.shape == (784, 784)
    assert start > 0.9
    assert (product - eye).norm() / eye.norm() < 0.1
    assert (product - eye).abs().max() < 0.05


def test_lr_find_writes_plot_and_suggests_an_lr(tmp_path, capsys):
    from aexp.cli import main
    run = tmp_path / "lrf"
    assert main(["lr-find", "dataset.n_train=300", "dataset.n_val=50", "lr_find.steps=40",
                 "lr_find.start=1e-5", "lr_find.end=1", f"hydra.run.dir={run}"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("suggested lr:")]
    assert line and 1e-5 <= float(line[0].split(":")[1]) <= 1
    rows = list(csv.DictReader(open(run / "lr_find.csv")))
    assert 10 < len(rows) <= 40
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    assert (run / "lr_find.png").stat().st_size > 1000


MNIST = ["dataset=mnist", "dataset.val_size=20", "dataset.root={root}"]


@pytest.mark.parametrize("overrides,message", [
    (["model=linear", *MNIST], "expects 3 input features"),     # a 3-d colour model on MNIST
    (["model=pooling_cnn", "model.pooling=3", "dataset=digits"], "3 downsampling levels shrink a 8x8"),
    (["model=pooling_cnn", "model.pooling=3", "model.in_channels=3", *MNIST], "in_channels=3"),
    (["model=conv", "model.channels=[4,4,4,4,4]", *MNIST], "5 downsampling levels shrink a 28x28"),
    (["model=mlp", "loss=vae", *MNIST], "needs a VAE"),
])
def test_incompatible_combinations_fail_before_training(tmp_path, tiny_mnist, overrides, message, capsys):
    """In-process (the real entry point's one-line refusals are tested in test_bad_input)."""
    run = tmp_path / "run"
    overrides = [o.format(root=tiny_mnist) for o in overrides]
    code, stderr = run_cli(["train", *overrides, f"hydra.run.dir={run}"], capsys)
    assert code == 2
    err = [line for line in stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("aexp: error:") and message in err[0], stderr
    assert not (run / "checkpoints").exists()


def test_perceptual_loss_from_a_run_aexp_trained(compose_cfg, tmp_path, tiny_mnist):
    """Without VGG weights, the encoder of an aexp run supplies the features."""
    from aexp.assemble import build_loss
    from aexp.losses import Perceptual
    from aexp.models import Output
    cfg = compose_cfg(["model=conv", "model.channels=[4,8]", "dataset=mnist", f"dataset.root={tiny_mnist}",
                       "dataset.val_size=20", "train.epochs=1", "frames.enabled=false"])
    train(cfg, tmp_path / "features")
    loss = build_loss(compose_cfg(["loss=perceptual", f"+loss.terms.perceptual.features_run={tmp_path / 'features'}",
                                   "~loss.terms.perceptual.layers",
                                   "+loss.terms.perceptual.layers={stage1: 1.0, stage2: 0.5}",
                                   "loss.terms.perceptual.style_weight=1.0"]).loss)
    term = loss.terms["perceptual"]
    assert isinstance(term, Perceptual) and loss.reduction == "mean"
    y = torch.rand(2, 1, 28, 28)
    x_hat = torch.rand(2, 1, 28, 28, requires_grad=True)
    v = term(Output(x_hat, None, {}), y, y, None, "mean")
    assert v.shape == (2,) and (v > 0).all()
    v.sum().backward()
    assert x_hat.grad.abs().sum() > 0
    assert term(Output(y, None, {}), y, y, None, "mean").abs().max() == 0
    with pytest.raises(ConfigError, match="exactly one feature network"):
        Perceptual()


@pytest.mark.parametrize("on", [True, False])
def test_channels_last_stores_conv_weights_nhwc_and_computes_the_same(compose_cfg, tiny_mnist, on):
    from aexp.assemble import build_parts
    cfg = compose_cfg(["model=conv", "model.channels=[4,8]", "dataset=mnist", f"dataset.root={tiny_mnist}",
                       "dataset.val_size=20", f"train.channels_last={str(on).lower()}"])
    data, model, _ = build_parts(cfg, torch.device("cpu"))
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    layout = torch.channels_last if on else torch.contiguous_format
    assert convs and all(w.stride() == w.contiguous(memory_format=layout).stride() for w in convs)
    plain = build(cfg.model, in_shape=data.in_shape, out_shape=data.out_shape)
    plain.load_state_dict(model.state_dict())      # same weights, default (NCHW) layout
    x, _ = data.batch(data.train, torch.arange(8))
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).x_hat, plain(x).x_hat, rtol=1e-4, atol=1e-5)
