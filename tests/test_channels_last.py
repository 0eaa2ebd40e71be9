"""train.channels_last: auto decides the memory layout from the model's convolutions against its
normalisation layers (aexp.models.cost); true and false force it. The cost profile that decides
it (and train.threads=auto) counts one forward pass without changing the model or the random
state."""
import pytest
import torch

from aexp.assemble import build_parts
from aexp.models import cost
from aexp.models.conv import ConvAE
from aexp.models.dense import MLP

CPU = torch.device("cpu")


def test_the_profile_counts_without_touching_the_run():
    torch.manual_seed(0)
    model = ConvAE((1, 28, 28), (1, 28, 28), channels=[4, 8])
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = torch.rand(2, 1, 28, 28)
    stats, rng = bn.running_mean.clone(), torch.get_rng_state()
    p = cost.profile(model, x)
    assert p.flops == p.conv_flops > 0                                 # convolutions only
    assert p.norm_values == 4 * 14 * 14 + 8 * 7 * 7 + 4 * 14 * 14     # the three BatchNorms' outputs
    assert model.training and torch.equal(bn.running_mean, stats) and torch.equal(torch.get_rng_state(), rng)
    dense = cost.profile(MLP((3,), (3,), hidden=[16], latent_dim=2), torch.rand(2, 3))
    assert dense.flops == 2 * (3 * 16 + 16 * 2 + 2 * 16 + 16 * 3) and dense.conv_flops == 0
    assert cost.profile(model, torch.rand(2, 3, 5)) is None           # preflight reports that one


def test_channels_last_auto_follows_the_convolutions_weight_against_batchnorm():
    narrow = ConvAE((1, 28, 28), (1, 28, 28), channels=[4, 8])      # 66 conv FLOPs per BN value
    wide = ConvAE((1, 28, 28), (1, 28, 28), channels=[32, 64])      # 435
    x = torch.rand(2, 1, 28, 28)
    assert not cost.channels_last("auto", narrow, CPU, x)
    assert cost.channels_last("auto", wide, CPU, x)
    assert cost.channels_last(True, narrow, CPU, x) and not cost.channels_last(False, wide, CPU, x)
    assert not cost.channels_last("auto", MLP((3,), (3,), hidden=[8]), CPU, torch.rand(2, 3))
    assert cost.channels_last("auto", narrow, torch.device("cuda"), x)   # decided without running it


@pytest.mark.parametrize("channels,nhwc", [("[4,8]", False), ("[32,64]", True)])
def test_build_parts_stores_the_model_as_auto_decides(compose_cfg, tiny_mnist, channels, nhwc):
    cfg = compose_cfg(["model=conv", f"model.channels={channels}", "dataset=mnist",
                       f"dataset.root={tiny_mnist}", "dataset.val_size=20"])
    assert cfg.train.channels_last == "auto"                   # the default
    _, model, _ = build_parts(cfg, CPU)
    w = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert w.is_contiguous(memory_format=torch.channels_last) == nhwc
    assert w.is_contiguous() != nhwc


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _step(model, x, bf16):
    """Output, input gradient, parameter gradients and BatchNorm running means of one step."""
    model.zero_grad()
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = model(x).x_hat
    y.float().square().mean().backward()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return y.float(), x.grad, [p.grad for p in model.parameters()], [b.running_mean for b in bns]


@pytest.mark.parametrize("bf16", [False, True])
def test_channels_last_runs_narrow_batchnorms_in_nchw_with_the_same_values(two_threads, bf16):
    import copy

    from aexp.models import layout
    from aexp.models.pooling import Baseline32
    torch.manual_seed(0)
    nchw = Baseline32((3, 32, 32), (3, 32, 32), channels=[12, 24], grid=[16, 8], head=False)
    hooked = layout.channels_last(copy.deepcopy(nchw))
    plain = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    calls = []
    for m in hooked.modules():
        if isinstance(m, torch.nn.BatchNorm2d):   # what the BatchNorm itself is given
            m.register_forward_pre_hook(lambda m, a: calls.append(a[0].is_contiguous()))
    x = torch.rand(16, 3, 32, 32)
    ref, got = _step(nchw, x, bf16), _step(hooked, x, bf16)
    assert calls == [True, True, True]                       # all three (12, 24, 12 channels) in NCHW
    out = next(m for m in hooked.modules() if isinstance(m, torch.nn.Conv2d))
    assert out.weight.is_contiguous(memory_format=torch.channels_last)
    assert got[1].is_contiguous()                            # the input's gradient in the input's layout
    tol = 0 if bf16 else 1e-5     # bf16: the same kernels' values; fp32: convolution order only
    for a, b in zip([ref[0], ref[1], *ref[2], *ref[3]], [got[0], got[1], *got[2], *got[3]]):
        assert (a - b).abs().max() <= tol * max(1.0, a.abs().max())
    if bf16:   # the plain channels-last model computes BatchNorm in another order: not equal
        assert not torch.equal(_step(plain, x, bf16)[0], ref[0])


def test_which_batchnorm_calls_are_rerouted(two_threads):
    from aexp.models.layout import reroute
    bn = lambda c: torch.nn.BatchNorm2d(c).train()
    nhwc = lambda c: torch.rand(4, c, 8, 8).contiguous(memory_format=torch.channels_last)
    assert all(reroute(bn(c), nhwc(c)) for c in (4, 8, 12, 24))
    assert not any(reroute(bn(c), nhwc(c)) for c in (16, 32, 40, 64))   # vector-width multiples, wide
    assert not reroute(bn(12).eval(), nhwc(12))                         # inference: NHWC is faster
    assert not reroute(bn(12), torch.rand(4, 12, 8, 8))                 # already NCHW
    torch.set_num_threads(1)
    assert not reroute(bn(12), nhwc(12))                                # one thread: NHWC is as fast
