"""RAE's terms (losses/regularised.py, loss=rae) checked by hand, and InfoVAE as a configuration
of existing terms (loss=info_vae): the KL and MMD weights of its alpha and lambda."""
import torch

from aexp.io import read_csv
from aexp.losses import DecoderGradientPenalty, LatentL2
from aexp.models import Output
from aexp.models.conv import ConvAE
from conftest import run_cli


class LinearDecoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dec = torch.nn.Linear(3, 5)

    def decode(self, z):
        return self.dec(z)


def test_latent_l2_is_half_the_squared_norm():
    z = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    out = Output(torch.zeros(2, 1), z, {})
    assert torch.equal(LatentL2()(out, None, None, None, "sum"), torch.tensor([12.5, 0.5]))
    assert torch.equal(LatentL2()(out, None, None, None, "mean"), torch.tensor([6.25, 0.25]))


def test_gradient_penalty_of_a_linear_decoder_is_the_column_sums_squared_and_trains_it():
    model = LinearDecoder()
    z = torch.randn(4, 3)
    out = Output(model.decode(z), z, {})
    pen = DecoderGradientPenalty()(out, None, None, model, "sum")
    expected = model.dec.weight.sum(0).pow(2).sum()          # d/dz sum(Wz + b) = W^T 1
    torch.testing.assert_close(pen, expected.expand(4).detach())
    pen.sum().backward()
    assert model.dec.weight.grad is not None and model.dec.weight.grad.abs().sum() > 0
    with torch.no_grad():                                    # validation: the value, no graph
        again = DecoderGradientPenalty()(out, None, None, model, "sum")
    torch.testing.assert_close(again, pen.detach())
    assert not again.requires_grad


def test_a_codebook_decoder_has_no_gradient_in_z_so_no_penalty():
    net = ConvAE((1, 8, 8), (1, 8, 8), channels=[4], codebook={"size": 4, "dim": 2}).eval()
    out = net(torch.rand(2, 1, 8, 8))
    assert torch.equal(DecoderGradientPenalty()(out, None, None, net, "sum"), torch.zeros(2))


def test_info_vae_is_a_vae_with_alpha_and_lambda_weights(compose_cfg):
    cfg = compose_cfg(["model=vae", "loss=info_vae"])
    assert cfg.loss.terms.kl.weight == 0.0 and cfg.loss.terms.mmd.weight == 10.0
    assert cfg.loss.terms.mmd._target_ == "aexp.losses.MMD"


def test_rae_and_info_vae_train_and_log_their_terms(tmp_path, capsys):
    tiny = ["dataset=digits", "train.epochs=1", "train.threads=1", "frames.enabled=false", "eval.enabled=false"]
    code, err = run_cli(["train", "model=mlp", "model.latent_dim=4", "loss=rae", *tiny,
                         f"hydra.run.dir={tmp_path / 'rae'}"], capsys)
    assert code == 0, err
    row = read_csv(tmp_path / "rae" / "metrics.csv")[-1]
    assert row["val_z_l2"] > 0 and row["val_decoder_gp"] > 0
    code, err = run_cli(["train", "model=vae", "model.latent_dim=4", "loss=info_vae", *tiny,
                         f"hydra.run.dir={tmp_path / 'info'}"], capsys)
    assert code == 0, err
    assert read_csv(tmp_path / "info" / "metrics.csv")[-1]["val_mmd"] >= 0
