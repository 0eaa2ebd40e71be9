"""Samplers fitted after training (report/samplers.py, report/latent_models.py) on codes drawn
from a known mixture, the safe sampler file, and precision/recall of samples
(report/sample_metrics.py) on hand-made feature sets whose overlap is known."""
import pytest
import torch

from aexp.errors import CheckpointError
from aexp.report import sample_metrics as sm
from aexp.report import samplers
from aexp.report.latent_models import MAF, TwoStage
from aexp.report.samplers import GMM, Normal

MEANS = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
TABLE = {"normal": Normal, "gmm": GMM, "two_stage": TwoStage, "flow": MAF}


def mixture(n: int, seed: int) -> torch.Tensor:
    """Three well-separated round Gaussians (sigma 0.5) in 2-D, equal weights: not Gaussian."""
    g = torch.Generator().manual_seed(seed)
    return MEANS[torch.randint(0, 3, (n,), generator=g)] + 0.5 * torch.randn(n, 2, generator=g)


def near_a_mode(x: torch.Tensor) -> float:
    return float(((x[:, None] - MEANS[None]).norm(dim=2).min(1).values < 1.5).float().mean())


@pytest.fixture(scope="module")
def codes():
    return mixture(2000, 0)


def test_normal_recovers_the_mean_and_covariance(codes):
    s = Normal().fit(codes)
    torch.testing.assert_close(s.mean, codes.mean(0), atol=1e-4, rtol=0)
    draws = s.sample(20000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.cov(draws.T), torch.cov(codes.T), atol=0.3, rtol=0.05)
    # its density is the exact Gaussian's
    ref = torch.distributions.MultivariateNormal(s.mean, scale_tril=s.tril)
    torch.testing.assert_close(s.log_prob(codes[:50]), ref.log_prob(codes[:50]))
    assert near_a_mode(draws) < 0.4            # one Gaussian puts most mass between the modes


def test_gmm_recovers_the_mixture_means_and_weights(codes):
    s = GMM(k=3, seed=0).fit(codes)
    order = sorted(range(3), key=lambda i: (round(float(s.means[i, 1])), float(s.means[i, 0])))
    torch.testing.assert_close(s.means[order], MEANS, atol=0.1, rtol=0)
    torch.testing.assert_close(s.weights, torch.full((3,), 1 / 3), atol=0.05, rtol=0)
    assert near_a_mode(s.sample(4000, torch.Generator().manual_seed(0))) > 0.95
    again = GMM(k=3, seed=0).fit(codes)                       # the seed pins EM's start
    assert torch.equal(again.means, s.means)


def test_flow_likelihood_beats_the_single_gaussian_on_a_mixture(codes):
    test = mixture(1000, 1)
    flow = MAF(layers=4, hidden=32, steps=400, seed=0).fit(codes)
    gauss = Normal().fit(codes)
    ll_flow, ll_gauss = flow.log_prob(test).mean(), gauss.log_prob(test).mean()
    assert ll_flow > ll_gauss + 1.0, (ll_flow, ll_gauss)   # the mixture's own: about -2.5 nats
    assert near_a_mode(flow.sample(2000, torch.Generator().manual_seed(0))) > 0.8


def test_two_stage_vae_puts_its_samples_on_the_modes(codes):
    s = TwoStage(hidden=32, steps=800, seed=0).fit(codes)
    draws = s.sample(2000, torch.Generator().manual_seed(0))
    assert near_a_mode(draws) > 0.6                        # one Gaussian: below 0.4
    per_mode = (draws[:, None] - MEANS[None]).norm(dim=2).argmin(1).bincount(minlength=3) / len(draws)
    assert per_mode.min() > 0.15                           # every mode is drawn
    assert s.log_prob(codes[:10]).shape == (10,)


def test_the_made_mask_is_autoregressive():
    from aexp.report.latent_models import MADE
    made = MADE(4, 16)
    x = torch.randn(1, 4, requires_grad=True)
    shift, _ = made(x)
    for i in range(4):
        (grad,) = torch.autograd.grad(shift[0, i], x, retain_graph=True)
        assert (grad[0, i:] == 0).all()                    # output i sees inputs before i only


@pytest.mark.parametrize("name", list(TABLE))
def test_a_sampler_round_trips_through_its_file(tmp_path, codes, name):
    small = {"two_stage": {"steps": 20}, "flow": {"steps": 20}, "gmm": {"k": 3}}.get(name, {})
    s = TABLE[name](**small).fit(codes)
    samplers.save(tmp_path / f"{name}.pt", name, s, {"epoch": 3})
    back, meta = samplers.load(tmp_path / f"{name}.pt", TABLE)
    assert meta == {"epoch": 3} and type(back) is type(s) and back.settings == s.settings
    gen = lambda: torch.Generator().manual_seed(5)
    torch.testing.assert_close(back.sample(100, gen()), s.sample(100, gen()))
    torch.testing.assert_close(back.log_prob(codes[:20]), s.log_prob(codes[:20]))


def test_a_crafted_or_garbled_sampler_file_is_refused_in_one_line(tmp_path, codes):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": samplers.FORMAT, "sampler": "normal", "settings": {}, "state": {"x": Evil()}}, path)
    with pytest.raises(CheckpointError, match="cannot load sampler file") as err:
        samplers.load(path, TABLE)
    assert "\n" not in str(err.value)
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="cannot load sampler file"):
        samplers.load(path, TABLE)
    good = tmp_path / "good.pt"
    samplers.save(good, "gmm", GMM(k=2).fit(codes), {})
    blob = torch.load(good, weights_only=True)
    cases = [({**blob, "format": "other"}, "is not an aexp sampler file"),
             ({**blob, "sampler": "os.system"}, "names no known sampler"),
             ({**blob, "settings": {"k": [1, 2]}}, "plain numbers"),
             ({**blob, "settings": {"nonsense": 1}}, "does not fit"),
             ({**blob, "state": {**blob["state"], "weights": torch.ones(5)}}, "does not fit"),
             ({**blob, "state": {**blob["state"], "means": blob["state"]["means"] * float("nan")}}, "not finite")]
    for crafted, message in cases:
        torch.save(crafted, path)
        with pytest.raises(CheckpointError, match=message) as err:
            samplers.load(path, TABLE)
        assert "\n" not in str(err.value)


def test_precision_recall_of_disjoint_identical_and_subset_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=g)
    far = torch.randn(300, 8, generator=g) + 100.0
    assert sm.precision_recall(real, far) == {"precision": 0.0, "recall": 0.0, "k": 3}
    assert sm.precision_recall(real, real.clone()) == {"precision": 1.0, "recall": 1.0, "k": 3}
    line = torch.arange(100.0)[:, None]                   # points 0..99; samples: 0..9 only
    pr = sm.precision_recall(line, line[:10])
    assert pr["precision"] == 1.0
    assert pr["recall"] == pytest.approx(13 / 100)        # samples' 3-NN radius 3: covers 0..12


def test_two_draws_of_the_same_distribution_score_near_one_one():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1000, 4, generator=g), torch.randn(1000, 4, generator=g)
    pr = sm.precision_recall(a, b, k=3)
    assert pr["precision"] > 0.85 and pr["recall"] > 0.85
    squeezed = sm.precision_recall(a, 0.3 * b, k=3)       # too narrow: realistic, poor coverage
    assert squeezed["precision"] > 0.95 and squeezed["recall"] < 0.6


def test_the_pixel_gaussian_floor_matches_the_pixel_statistics():
    g = torch.Generator().manual_seed(0)
    train = (torch.rand(500, 1, 4, 4, generator=g) * 0.5 + 0.25)
    draws = sm.pixel_gaussian(train, 4000, torch.Generator().manual_seed(1))
    assert draws.shape == (4000, 1, 4, 4) and draws.min() >= 0 and draws.max() <= 1
    torch.testing.assert_close(draws.mean(0), train.mean(0), atol=0.02, rtol=0)


def test_the_flow_refuses_a_code_too_wide_to_sample_in_one_line():
    from aexp.errors import ConfigError
    with pytest.raises(ConfigError, match="too wide") as err:
        MAF(max_dim=4).fit(torch.randn(10, 5))
    assert "\n" not in str(err.value)
