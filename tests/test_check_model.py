"""`aexp check-model`: the model contract passes on every model option aexp ships (conf/model/*),
and each deliberately broken toy class below fails exactly the check its fault breaks, one line
each, exit 2."""
import math

import pytest
import torch
from torch import nn

from aexp.contract import ORDER, compose_for, run
from aexp.models import Autoencoder, Output
from conftest import make_mnist, options, run_cli

# option -> overrides that keep it tiny and give it data of a shape it takes
ZOO = {
    "linear": [],
    "mlp": ["dataset=digits", "model.hidden=[16]"],
    "vae": ["dataset=digits", "model.hidden=[16]"],
    "cvae": ["dataset=digits", "model.hidden=[16]"],
    "hvae": ["dataset=digits", "model.hidden1=[16]", "model.latent1=4", "model.hidden2=[8]", "model.latent2=2"],
    "overcomplete": ["dataset=mnist", "dataset.val_size=20"],   # 784 -> 784 -> 784: MNIST's size
    "conv": ["dataset=digits", "model.channels=[4,8]"],
    "conv_vae": ["dataset=digits", "model.channels=[4,8]", "model.latent_dim=4"],
    "pooling_cnn": ["dataset=digits", "model.width=4", "model.pooling=2"],
    "baseline32": ["dataset=digits", "model.channels=[4,8,8]", "model.latent_dim=16"],
    "resnet": ["dataset=digits", "model.decoder_channels=[8,8,8,8]"],
    "vqvae": ["dataset=digits", "model.channels=[4,8]", "model.codebook.size=8", "model.codebook.dim=4"],
    "fsqvae": ["dataset=digits", "model.channels=[4,8]", "model.quantizer.levels=[3,3]"],
    "resconv": ["dataset=digits", "model.channels=[4,8]", "model.groups=2"],
    "resconv_vae": ["dataset=digits", "model.channels=[4,8]", "model.latent_channels=2"],
}
EXPORTED = ("linear", "vae", "cvae")   # torch.export costs seconds a model: a few in the fast suite


def test_every_model_option_is_covered():
    assert set(ZOO) == set(options("model"))


@pytest.mark.parametrize("model", [pytest.param(m, marks=[pytest.mark.slow] if m == "resnet" else [])
                                   for m in sorted(ZOO)])   # (an 11M-parameter ResNet: seconds a build)
def test_every_aexp_model_keeps_the_contract(model, tmp_path):
    extra = [f"dataset.root={make_mnist(tmp_path / 'data', n_train=60, n_test=20)}"] if model == "overcomplete" else []
    lines = []
    failed = run(compose_for(model, ZOO[model] + extra), export=model in EXPORTED, out=lines.append)
    assert failed == [], "\n".join(lines)
    assert sum(line.startswith("  ok") for line in lines) >= 8, "\n".join(lines)
    if model in ("vae", "cvae", "conv_vae", "resconv_vae"):
        assert any(line.startswith("  ok    variational") for line in lines), "\n".join(lines)
    if model == "cvae":   # given the labels, its decoder heeds them
        assert any(line.startswith("  ok    decode") and "class label" in line for line in lines), "\n".join(lines)


class Toy(Autoencoder):
    """A correct dense AE on 3-value colours; the broken ones below each change one thing."""

    def __init__(self, in_shape, out_shape, latent_dim=2):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), latent_dim))
        self.dec = nn.Sequential(nn.Linear(latent_dim, math.prod(out_shape)), nn.Sigmoid())

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z).view(-1, *self.out_shape)


class WrongShape(Toy):
    def decode(self, z):
        return self.dec(z)[:, :2]           # one value short


class NoDecode(Toy):
    decode = Autoencoder.decode             # never written: NotImplementedError


class Noisy(Toy):
    def encode(self, x):                    # noise at evaluation too: runs cannot be repeated
        return self.enc(x) + torch.randn(len(x), 2)


class MakesNaN(Toy):
    def decode(self, z):
        return super().decode(z) * float("nan")


class HiddenState(Toy):
    """Keeps a weight outside its parameters and buffers: lost in a checkpoint."""

    def __init__(self, in_shape, out_shape):
        super().__init__(in_shape, out_shape)
        self.scale = torch.rand(1) + 1

    def decode(self, z):
        return super().decode(z) * self.scale


class BadVAE(Toy):
    def forward(self, x):                   # mu of the wrong width
        z = self.encode(x)
        return Output(self.decode(z), z, {"mu": z[:, :1], "logvar": z})


class NotAnAutoencoder(nn.Module):
    def __init__(self, in_shape, out_shape):
        super().__init__()


@pytest.mark.parametrize("toy, broken", [
    ("WrongShape", {"decode", "forward"}),
    ("NoDecode", {"decode", "forward"}),
    ("Noisy", {"deterministic", "state_dict"}),
    ("MakesNaN", {"finite", "backward"}),
    ("HiddenState", {"state_dict"}),
    ("BadVAE", {"variational"}),
    ("NotAnAutoencoder", {"build"}),
])
def test_each_broken_contract_is_reported_on_one_line(capsys, toy, broken):
    code, err = run_cli(["check-model", f"{__name__}.{toy}", "dataset.n_train=64", "--no-export"], capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("aexp: error: check-model: ") and all(name in last for name in broken), err
    assert f"{len(broken)} of {len(ORDER)} checks failed" in last, err


def test_a_good_class_passes_with_its_settings_and_prints_a_line_per_check(capsys):
    from aexp.cli import main
    code = main(["check-model", f"{__name__}.Toy", "model.latent_dim=3", "dataset.n_train=64"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 + len(ORDER) and "z [8, 3] float32" in out
    assert [line.split()[1] for line in lines[1:]] == list(ORDER)
    assert "  ok    exports" in out


def test_failed_checks_print_one_line_each(capsys):
    from aexp.cli import main
    assert main(["check-model", f"{__name__}.WrongShape", "--no-export"]) == 2
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("  FAIL")]
    assert [f.split()[1] for f in fails] == ["decode", "forward"]
    assert "[8, 3]" in fails[0] and "got [8, 2]" in fails[0]


def test_a_bad_target_is_one_line(capsys):
    code, err = run_cli(["check-model", "nosuchmodel"], capsys)
    assert code == 2 and err.strip().startswith("aexp: error: ") and len(err.strip().splitlines()) == 1
    assert "neither a model option" in err
    from aexp.cli import main
    assert main(["check-model", "no_such_pkg.Model"]) == 2
    out = capsys.readouterr().out
    assert "FAIL  build         cannot build no_such_pkg.Model" in out, out
