"""The objectives beyond the VAE's KL (aexp/losses/variational.py): IWAE, the β-TCVAE split of
the KL, and the WAE's MMD; each through its config option as well."""
import pytest
import torch

from aexp.assemble import build, build_loss
from aexp.losses import IWAE, MMD, TCDecomposition, gaussian_kl
from aexp.losses.variational import imq_mmd, importance_log_weights
from aexp.models import Output
from aexp.models.dense import VAE
from aexp.report import measures
from conftest import run_cli


@pytest.fixture
def vae_batch():
    torch.manual_seed(0)
    net = VAE((1, 8, 8), (1, 8, 8), hidden=[16], latent_dim=3)
    x = torch.rand(6, 1, 8, 8)
    return net, x, net(x)


def test_iwae_with_one_sample_is_the_negative_elbo_the_evaluation_reports(vae_batch):
    net, x, out = vae_batch
    torch.manual_seed(1)
    iwae = IWAE(k=1)(out, x, x, net, "sum")
    torch.manual_seed(1)      # the same draw, through the evaluation's ELBO
    lw = measures.importance_log_weights(x, out.extras["mu"], out.extras["logvar"],
                                         lambda t, z: measures.bernoulli_log_prob(t, net.decode(z)), 1)
    _, elbo = measures.nll_and_elbo(lw)
    torch.testing.assert_close(iwae, -elbo, rtol=0, atol=1e-6)
    # and its expectation is the analytic negative ELBO: BCE expected over q + KL
    draws = torch.stack([IWAE(k=1)(out, x, x, net, "sum") for _ in range(4000)]).mean(0)
    kl = gaussian_kl(out.extras["mu"], out.extras["logvar"]).sum(1)
    mc_recon = torch.stack([-measures.bernoulli_log_prob(x, net.decode(
        out.extras["mu"] + torch.exp(0.5 * out.extras["logvar"]) * torch.randn_like(out.extras["mu"])))
        for _ in range(4000)]).mean(0)
    torch.testing.assert_close(draws, mc_recon + kl, rtol=0.01, atol=0.05)


def test_iwae_bound_tightens_with_k(vae_batch):
    """E[-log mean_k w] does not grow with k (Burda et al., theorem 1), on a fixed batch."""
    net, x, out = vae_batch
    torch.manual_seed(2)
    with torch.no_grad():
        bounds = [torch.stack([IWAE(k=k)(out, x, x, net, "sum") for _ in range(300)]).mean().item()
                  for k in (1, 5, 50)]
    assert bounds[0] > bounds[1] > bounds[2], bounds


def test_iwae_trains_through_encoder_and_decoder(vae_batch):
    net, x, out = vae_batch
    IWAE(k=5)(out, x, x, net, "sum").mean().backward()
    assert net.mu.weight.grad.abs().sum() > 0 and net.decoder[0].weight.grad.abs().sum() > 0


def test_tc_parts_sum_to_the_sampled_kl_and_all_ones_is_the_vae_objective(vae_batch, compose_cfg):
    net, x, out = vae_batch
    torch.manual_seed(3)
    parts = TCDecomposition(dataset_size=1000)(out, x, x, net, "sum")
    assert set(parts) == {"mi", "tc", "dimkl"}
    torch.manual_seed(3)      # the same posterior sample: log q(z|x) - log p(z)
    mu, logvar = out.extras["mu"], out.extras["logvar"]
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    kl_sample = (measures.gaussian_log_prob(z, mu, logvar)
                 - measures.gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)))
    torch.testing.assert_close(parts["mi"] + parts["tc"] + parts["dimkl"], kl_sample)
    # with alpha = beta = gamma = 1 the loss is BCE + the sampled KL: the VAE's objective, whose
    # KL it estimates without bias over posterior draws
    loss = build_loss(compose_cfg(["loss=btcvae", "loss.terms.tc.beta=1.0"]).loss, data_size=1000)
    loss.set_epoch(1)
    draws = torch.stack([loss(out, x, x, net)["loss"] for _ in range(3000)]).mean()
    vae = build(compose_cfg(["loss=vae"]).loss)
    vae.set_epoch(1)
    torch.testing.assert_close(draws, vae(out, x, x, net)["loss"], rtol=0.01, atol=0.05)


def test_tc_parts_are_logged_and_weighted(compose_cfg):
    loss = build_loss(compose_cfg(["loss=btcvae"]).loss, data_size=500)
    tc = loss.terms["tc"]
    assert tc.dataset_size == 500                     # the training split's size, passed in
    assert [tc.part_weight(p, 1) for p in ("mi", "tc", "dimkl")] == [1.0, 6.0, 1.0]
    torch.manual_seed(0)
    net = VAE((1, 8, 8), (1, 8, 8), hidden=[16], latent_dim=3)
    x = torch.rand(6, 1, 8, 8)
    values = loss(net(x), x, x, net)
    assert set(values) == {"loss", "recon", "tc_mi", "tc_tc", "tc_dimkl"}
    total = values["recon"] + values["tc_mi"] + 6 * values["tc_tc"] + values["tc_dimkl"]
    torch.testing.assert_close(values["loss"], total)


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g)
    same = imq_mmd(a, b).item()
    shifted = [imq_mmd(a, b + s).item() for s in (0.25, 0.5, 1.0)]
    # summed over 7 kernel scales: the unbiased estimate of 0 scatters by about 0.01 at n = 400
    assert abs(same) < 0.03 < shifted[0] and shifted[0] < shifted[1] < shifted[2]
    z = torch.randn(16, 4, requires_grad=True)
    value = MMD()(Output(None, z, {}), None, None, None, "sum")
    assert value.shape == (16,) and torch.equal(value, value[0].expand(16))
    value.mean().backward()
    assert z.grad.abs().sum() > 0


def test_importance_weights_are_shared_with_the_evaluation():
    assert measures.importance_log_weights is importance_log_weights


def test_btcvae_preset_logs_the_kl_parts_and_draws_traversals(tmp_path, tiny_mnist, capsys):
    """(Every preset, tour_iwae and tour_wae among them, also trains a step in test_experiments.)"""
    run = tmp_path / "run"
    code, err = run_cli(["train", "+experiment=tour_btcvae", f"dataset.root={tiny_mnist}", "dataset.val_size=20",
                         "train.epochs=1", "train.batch_size=32", "frames.probe_size=20", "eval.nll_samples=0",
                         "eval.classifier.enabled=false", "eval.tsne=false", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err[-1500:]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_recon", "train_tc_mi", "train_tc_tc", "train_tc_dimkl", "val_tc_tc"} <= set(header), header
    assert (run / "pictures" / "latent_traversal.png").is_file()


# --- sample quality on the classifier's features (report/quality.py) --------------------------

def _images(n, seed, noise=0.0):
    """Blob images whose position carries the class, optionally with Gaussian noise added."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.2
    for i in range(n):
        r, c = divmod(i % 9, 3)
        x[i, 0, 1 + 3 * r:4 + 3 * r, 1 + 3 * c:4 + 3 * c] = 0.9
    return (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)


def test_fid_and_kid_on_classifier_features():
    from aexp.report import classifier, quality
    torch.manual_seed(0)
    features = quality.ClassifierFeatures(classifier.SmallCNN(1, 9))
    real = _images(300, 0)
    same = quality.fid_kid(features, real, real)
    assert abs(same["fid_classifier"]) < 1e-3 and same["images"] == 300
    other = quality.fid_kid(features, real, _images(300, 1))    # the same distribution, new draws
    assert abs(other["kid_classifier"]) < 0.01
    fids = [quality.fid_kid(features, real, _images(300, 1, noise))["fid_classifier"]
            for noise in (0.0, 0.1, 0.3)]
    assert fids[0] < fids[1] < fids[2], fids


def test_samples_come_from_the_prior_only_where_the_code_was_trained_towards_it(compose_cfg):
    from types import SimpleNamespace
    from aexp.report.evaluate import sampler
    run = lambda loss, codebook=None: SimpleNamespace(model=SimpleNamespace(codebook_size=codebook),
                                                      cfg=compose_cfg([f"loss={loss}"]))
    assert sampler(run("vae"), {"mu": 0}) == "prior"
    assert sampler(run("wae_mmd"), {}) == "prior"          # MMD pushed the code towards N(0, I)
    assert sampler(run("mse"), {}) == "fitted"
    assert sampler(run("vqvae", codebook=8), {}) is None    # no prior over code indices
