"""The fast paths compute what the plain path computes: resident uint8 batches equal the
ToTensor/DataLoader batches, bf16 autocast and torch.compile give the same loss on the same
batch (within their precision), and the lazily checked NaN watch names the right step."""
import pytest
import torch
from torchvision import datasets, transforms

from aexp.run import faults
from aexp.run import steps as loop
from aexp.data import mnist
from aexp.assemble import build
from conftest import make_mnist


def _model_and_loss(compose_cfg, *overrides):
    cfg = compose_cfg(["model=mlp", "loss=bce", *overrides])
    torch.manual_seed(0)
    return build(cfg.model, in_shape=(1, 28, 28), out_shape=(1, 28, 28)), build(cfg.loss)


def test_resident_batches_equal_totensor_batches(tmp_path, compose_cfg):
    root = make_mnist(tmp_path / "data")
    data = mnist(str(root), val_size=20)
    reference = datasets.MNIST(str(root), train=False, transform=transforms.ToTensor())
    idx = torch.tensor([3, 0, 17, 9, 31])
    x, y = data.batch(data.test, idx)
    expected = torch.stack([reference[int(i)][0] for i in idx])
    assert torch.equal(x, expected) and torch.equal(y, expected)
    model, loss_fn = _model_and_loss(compose_cfg)
    assert torch.equal(loss_fn(model(x), x, y, model)["loss"],
                       loss_fn(model(expected), expected, expected, model)["loss"])


def test_bf16_autocast_matches_fp32_within_bf16_precision(compose_cfg):
    model, loss_fn = _model_and_loss(compose_cfg)
    x = torch.rand(32, 1, 28, 28)
    with loop.autocast("fp32", torch.device("cpu")):
        plain = loss_fn(model(x), x, x, model)["loss"]
    with loop.autocast("bf16", torch.device("cpu")):
        out = model(x)
        fast = loss_fn(out, x, x, model)["loss"]
    assert out.x_hat.dtype == torch.bfloat16          # the fast path really ran in bf16
    fast, plain = fast.item(), plain.item()
    assert abs(fast - plain) / plain < 2e-2
    with loop.autocast("auto", torch.device("cpu")):  # auto: fp32 on the CPU
        assert model(x).x_hat.dtype == torch.float32


@pytest.mark.slow
def test_compiled_model_matches_eager(compose_cfg):
    model, loss_fn = _model_and_loss(compose_cfg)
    x = torch.rand(16, 1, 28, 28)
    eager = loss_fn(model(x), x, x, model)["loss"]
    fast = loop.compiled(model, True)
    compiled = loss_fn(fast(x), x, x, model)["loss"]
    assert torch.allclose(compiled, eager, rtol=1e-4)


def test_nonfinite_watch_keeps_the_first_bad_step_without_syncing():
    watch = faults.FirstNonFinite()
    for step, value in enumerate([1.0, 2.0, float("nan"), float("inf"), 3.0]):
        watch.record(step, {"mse": torch.tensor(value), "loss": torch.tensor(value)})
    step, terms = watch.check()
    assert step == 2 and terms["loss"] != terms["loss"]     # the NaN one, not the later Inf
    clean = faults.FirstNonFinite()
    clean.record(0, {"loss": torch.tensor(1.0)})
    assert clean.check() is None


def test_written_out_bce_equals_torch_bce_and_runs_under_autocast():
    from aexp.losses.recon import BCE
    from aexp.models import Output
    p = torch.rand(16, 1, 28, 28)
    p[0, 0, 0, :2] = torch.tensor([0.0, 1.0])         # the clamped ends of the log
    y = torch.rand(16, 1, 28, 28)
    y[0, 0, 0, :2] = torch.tensor([1.0, 0.0])
    ours = BCE()(Output(p, None, {}), y, y, None, "sum")
    reference = torch.nn.functional.binary_cross_entropy(p, y, reduction="none").flatten(1).sum(1)
    assert torch.allclose(ours, reference, rtol=1e-5)
    rounded = p.bfloat16()      # what a model's output is under bf16 autocast
    with loop.autocast("bf16", torch.device("cpu")):
        value = BCE()(Output(rounded, None, {}), y, y, None, "sum")
    expected = torch.nn.functional.binary_cross_entropy(rounded.float(), y, reduction="none")
    assert value.dtype == torch.float32
    assert torch.allclose(value, expected.flatten(1).sum(1), rtol=1e-5)


def test_fused_adam_matches_the_plain_update(compose_cfg):
    cfg = compose_cfg(["optimizer=adam"])
    assert cfg.optimizer.fused is True
    weights = []
    for fused in (True, False):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(50, 20))
        opt = torch.optim.Adam([w], lr=1e-2, fused=fused)
        for _ in range(5):
            opt.zero_grad()
            (w ** 2).sum().backward()
            opt.step()
        weights.append(w.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-6)
