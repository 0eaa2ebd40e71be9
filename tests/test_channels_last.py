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
