"""Trivial baselines (report/baselines.py) on hand-made data whose answers are known, and beside
the model's numbers in eval.json, the eval table and the summary."""
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from aexp.data import Data, Split
from aexp.data.tasks import Colorize
from aexp.models import Autoencoder
from aexp.report import baselines
from aexp.report.evaluate import evaluate, print_table, settings
from conftest import make_mnist, make_photos, run_cli


class _Zero(Autoencoder):
    """Predicts black images: a model the mean image must beat."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return x.flatten(1)[:, :2] * self.w

    def decode(self, z):
        return torch.zeros(len(z), 1, 2, 2)


def _images(values):
    return torch.tensor(values, dtype=torch.uint8).view(-1, 1, 2, 2)


def test_the_mean_image_and_its_error_by_hand(tmp_path):
    train = _images([[0, 0, 0, 0], [255, 255, 255, 255], [255, 0, 255, 0], [0, 255, 0, 255]])   # mean 0.5
    test = _images([[255, 255, 255, 255], [0, 0, 0, 0]])
    data = Data("hand", "image", Split(train), Split(train[:1]), Split(test)).prepare()
    mean = baselines.mean_target(data)
    torch.testing.assert_close(mean, torch.full((1, 2, 2), 0.5))
    run = SimpleNamespace(run_dir=tmp_path, data=data, model=_Zero().eval(), device=torch.device("cpu"),
                          state={"epoch": 1}, cfg=None)
    rep = evaluate(run, settings(None, tsne=False, pictures=False))
    base = rep["baseline"]["mean_image"]["reconstruction"]
    assert abs(base["mse"] - 0.25) < 1e-7 and abs(base["mae"] - 0.5) < 1e-7   # every pixel 0.5 off
    assert abs(base["psnr"] - 10 * torch.log10(torch.tensor(4.0)).item()) < 1e-4
    assert abs(rep["reconstruction"]["mse"] - 0.5) < 1e-7                      # black: half the images 1 off
    assert json.loads((tmp_path / "eval.json").read_text())["baseline"] == rep["baseline"]


def test_the_median_ab_constant_and_its_accuracy_by_hand():
    # the colouriser's targets are a,b of the photos; grey photos have a = b = 0.5 exactly
    grey = torch.full((6, 3, 4, 4), 128, dtype=torch.uint8)
    red = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 255
    data = Data("hand", "image", Split(torch.cat([grey, red])), Split(grey[:1]),
                Split(torch.cat([grey[:3], red[:1]]))).prepare(Colorize())
    median = baselines.median_target(data)
    _, y_grey = data.batch(data.train, torch.arange(1))
    torch.testing.assert_close(median, y_grey[0, :, 0, 0])      # six of eight training photos are grey
    const = baselines.constants(data)["median_ab"]
    _, y_test = data.batch(data.test)
    exact = (const.expand_as(y_test) - y_test).abs() <= 0.01
    assert exact.float().mean() == 0.75                            # right on the 3 grey, wrong on the red
    from aexp.report.evaluate import baseline
    pred = {"x": data.batch(data.test)[0], "y": y_test, "x_hat": y_test}
    got = baseline(pred, const, "colorize", True, settings(None))
    assert got["colorization"]["accuracy"]["0.01"] == 0.75
    neutral = baseline(pred, baselines.constants(data)["neutral_ab"], "colorize", True, settings(None))
    assert neutral["colorization"]["accuracy"]["0.1"] == 0.75      # grey is neutral too


def test_baselines_sit_beside_the_model_in_the_table_and_the_summary(tmp_path, capsys):
    root = make_mnist(tmp_path / "data")
    sweep = tmp_path / "sweep"
    code, err = run_cli(["train", "-m", "dataset=mnist", f"dataset.root={root}", "model=mlp", "model.hidden=[16]",
                         "dataset.val_size=20", "train.epochs=1", "frames.enabled=false", "eval.tsne=false",
                         "eval.pictures=false", "optimizer.lr=1e-3,1e-2", f"hydra.sweep.dir={sweep}"], capsys)
    assert code == 0, err[-1500:]
    report = json.loads((sweep / "0" / "eval.json").read_text())
    mean = report["baseline"]["mean_image"]
    assert mean["reconstruction"]["mse"] > 0 and 0 < mean["classifier"]["accuracy_reconstruction"] < 1
    capsys.readouterr()
    print_table(report)
    table = capsys.readouterr().out
    assert "baseline: mean image" in table
    code, err = run_cli(["summary", sweep], capsys)
    assert code == 0, err
    header = (sweep / "summary.csv").read_text().splitlines()[0]
    assert "eval.reconstruction.mse" in header and "eval.baseline.mean_image.reconstruction.mse" in header


def test_a_colorization_sweep_summary_has_baselines_and_one_picture_grid(tmp_path, capsys):
    from PIL import Image
    photos = make_photos(tmp_path / "photos", 30)
    sweep = tmp_path / "sweep"
    code, err = run_cli(["train", "-m", "+experiment=colorize_daisy", f"dataset.root={photos}", "dataset.size=16",
                         "model.width=4", "model.pooling=0,1", "train.max_steps=2", "frames.enabled=false",
                         "eval.tsne=false", f"hydra.sweep.dir={sweep}"], capsys)
    assert code == 0, err[-1500:]
    code, err = run_cli(["summary", sweep], capsys)
    assert code == 0, err
    header = (sweep / "summary.csv").read_text().splitlines()[0]
    assert "eval.baseline.median_ab.colorization.accuracy.0.1" in header
    grid = Image.open(sweep / "summary_colorization.png")
    assert grid.height >= 4 * 64 and grid.width >= 8 * 64  # original, L, a row per job; 16 px shown at 64
    assert "model.pooling=1" in (sweep / "summary_colorization.txt").read_text()
    assert (sweep / "summary_accuracy_vs_bound.png").is_file()


def test_the_median_of_a_large_set_keeps_only_its_draw_and_chunks_do_not_change_it(monkeypatch):
    from aexp.data.storage import chunks
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (120, 3, 16, 16), generator=g, dtype=torch.uint8)
    data = Data("big", "image", Split(x), Split(x[:2]), Split(x[:2])).prepare(Colorize())
    y = data.batch(data.train)[1]
    every = y.transpose(0, 1).reshape(2, -1)                       # [C, 120 * 256]
    monkeypatch.setattr(baselines, "MEDIAN_VALUES", 5_000)
    drawn = torch.randperm(every.shape[1], generator=torch.Generator().manual_seed(3))[:5_000]
    expected = every[:, drawn].median(1).values                    # the seeded draw over all values
    for per_chunk in (1, 7, 120):                                  # samples per chunk
        monkeypatch.setattr(baselines, "chunks", lambda s, n=per_chunk: chunks(s, values=n * 768))
        torch.testing.assert_close(baselines.median_target(data, seed=3), expected, rtol=0, atol=0)
    monkeypatch.setattr(baselines, "PERMUTED", 10_000)             # beyond it: drawn with replacement
    approx = baselines.median_target(data, seed=3)
    assert (approx - every.median(1).values).abs().max() < 0.01


def test_the_mean_images_nll_beside_the_vaes_by_hand():
    import math
    from aexp.models.dense import VAE
    from aexp.report.likelihood import vae_likelihood
    half = _images([[0, 0, 0, 0], [255, 255, 255, 255], [255, 0, 255, 0], [0, 255, 0, 255]])  # mean 0.5
    test = _images([[255, 255, 255, 255], [0, 0, 0, 0], [255, 0, 0, 255]])   # binarising leaves them be
    model = VAE((1, 2, 2), (1, 2, 2), hidden=[4], latent_dim=2).eval()
    ev = settings(None, nll_samples=8, nll_max_images=0)
    for train, nll in ((half, 4 * math.log(2)),              # every pixel 1/2: log 2 nats each
                       (torch.zeros_like(half), None)):      # never lit: 1/(N + 2) after smoothing
        data = Data("hand", "image", Split(train), Split(train[:1]), Split(test)).prepare()
        rep, base = vae_likelihood(model, data, ev, torch.device("cpu"), baselines.mean_target(data))
        if nll is None:   # 4 + 0 + 2 lit pixels of p = 1/6, the rest 1 - 1/6
            nll = ((4 + 0 + 2) * math.log(6) + (0 + 4 + 2) * -math.log(5 / 6)) / 3
        assert base == pytest.approx(nll, rel=1e-6)
        assert rep["images"] == 3 and math.isfinite(rep["nll"])
    assert vae_likelihood(model, data, ev, torch.device("cpu"))[1] is None   # no baseline asked


def test_the_binarised_test_set_is_the_same_whatever_k_and_the_batch():
    from aexp.models.dense import VAE
    from aexp.report.likelihood import vae_likelihood
    g = torch.Generator().manual_seed(0)
    grey = lambda n: torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    data = Data("grey", "image", Split(grey(30)), Split(grey(2)), Split(grey(23))).prepare()
    model = VAE((1, 4, 4), (1, 4, 4), hidden=[8], latent_dim=2).eval()
    mean = baselines.mean_target(data)
    # the baseline's NLL depends on the binarised images only: a witness of which ones they were
    runs = [vae_likelihood(model, data, settings(None, nll_samples=k, nll_batch=b, nll_max_images=0),
                           torch.device("cpu"), mean) for k, b in ((2, 5), (7, 23), (3, 1))]
    assert runs[0][1] == runs[1][1] == runs[2][1]
    other = vae_likelihood(model, data, settings(None, nll_samples=2, nll_batch=5, nll_max_images=0, seed=1),
                           torch.device("cpu"), mean)
    assert other[1] != runs[0][1]                                  # eval.seed draws another set
