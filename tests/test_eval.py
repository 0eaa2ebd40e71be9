"""`aexp eval` and `aexp summary` through the real entry point, the cached classifier, and the
colourisation pictures on a stand-in colourisation dataset."""
import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn

from aexp.data import Data, Split
from aexp.data.corruption import Gaussian
from aexp.data.tasks import Colorize
from aexp.models import Autoencoder
from aexp.report import classifier
from aexp.report.evaluate import evaluate, settings
from conftest import aexp, make_mnist, run_cli

TINY = ("dataset=mnist", "dataset.val_size=20", "train.epochs=2", "train.batch_size=32",
        "frames.probe_size=20", "eval.tsne_points=60", "model.hidden=[32]")


def assert_pictures(folder: Path, names: set):
    found = {p.name for p in folder.iterdir()}
    assert names <= found, names - found
    for p in folder.iterdir():
        with Image.open(p) as im:
            im.load()
            assert 100 <= im.width <= 4000 and 60 <= im.height <= 4000, (p.name, im.size)


def test_eval_of_a_tiny_vae(tmp_path, tiny_mnist, capsys):
    run = tmp_path / "run"
    aexp("train", "model=vae", *TINY, f"dataset.root={tiny_mnist}", "eval.nll_samples=64",
         f"hydra.run.dir={run}")
    auto = json.loads((run / "eval.json").read_text())      # written at the end of training
    assert auto["checkpoint"] == "best" and auto["vae"]["samples"] == 64
    (run / "eval.json").unlink()
    from aexp.cli import main      # the training above went through the real entry point
    assert main(["eval", str(run), "--checkpoint", "last", "--nll-samples", "32"]) == 0
    out = capsys.readouterr().out
    assert "reconstruction.psnr" in out and "vae.nll" in out
    rep = json.loads((run / "eval.json").read_text())
    assert rep["checkpoint"] == "last" and rep["epoch"] == 2 and rep["n_test"] == 40
    assert set(rep["reconstruction"]) == {"mse", "mae", "psnr", "ssim", "ms_ssim", "ms_ssim_scales"}
    assert rep["samples_from"] == "prior"
    r = rep["reconstruction"]
    assert 0 < r["mse"] < r["mae"] < 1 and r["psnr"] == pytest.approx(r["psnr"]) and -1 < r["ssim"] <= 1
    v = rep["vae"]
    assert v["samples"] == 32 and v["images"] == 40 and "binarised" in v["data"]
    assert 0 < v["nll"] < 784 * 0.7 and v["elbo"] <= -v["nll"]
    assert 0 < rep["baseline"]["mean_image"]["vae"]["nll"] < 784 * 0.7     # the trivial model's
    row = next(line for line in out.splitlines() if " vae.nll " in line)      # beside the model's
    assert len(re.findall(r"\d+\.\d+", row)) == 2, row
    c = rep["classifier"]
    assert 0 <= c["accuracy_original"] <= 1 and 0 <= c["accuracy_reconstruction"] <= 1
    q = rep["quality"]          # FID / KID on the classifier's features (report/quality.py)
    assert set(q) == {"reconstruction", "samples", "test_vs_train"}
    assert all(q[k]["fid_classifier"] >= 0 and q[k]["images"] == 40 for k in q)
    assert c["from_cache"] is True                           # trained once, at the end of training
    lat = rep["latent"]
    assert lat["dim"] == 2 and len(lat["std"]) == 2 and lat["posterior_sigma_mean"] > 0
    assert rep["parameters"] > 0 and rep["train_seconds"] > 0
    assert_pictures(run / "pictures", {
        "reconstruction.png", "samples.png", "latent_plane.png", "interpolation_mosaic.png",
        "interpolation.gif", "loss_curves.png", "latent_scatter.png"})
    assert sorted(rep["pictures"]) == sorted(f"pictures/{p.name}" for p in (run / "pictures").iterdir())
    with Image.open(run / "pictures" / "interpolation.gif") as gif:
        assert gif.n_frames > 10


def test_eval_of_a_missing_run_is_one_line(tmp_path, capsys):
    code, err = run_cli(["eval", tmp_path / "nope"], capsys)
    assert code == 2 and "Traceback" not in err and "aexp: error:" in err


def test_summary_lists_done_and_failed_jobs(tmp_path, tiny_mnist, capsys):
    sweep = tmp_path / "sweep"
    # the linear colour model cannot take MNIST: job 1 fails, the sweep goes on
    proc = aexp("train", "-m", "model=mlp,linear", "model.latent_dim=8", *TINY, "eval.quality=false",
                f"dataset.root={tiny_mnist}",
                f"hydra.sweep.dir={sweep}", check=False)
    assert proc.returncode == 2 and "3 input features" in proc.stderr
    assert (sweep / "1" / "FAILED").is_file()
    assert_pictures(sweep / "0" / "pictures", {"latent_pca.png", "latent_tsne.png", "interpolation_mosaic.png"})
    # a plain AE has no prior: no samples unless asked (eval.fitted_samples), and eval.json says why
    assert not any((sweep / "0" / "pictures" / f).exists() for f in ("samples.png", "samples_fitted.png"))
    report = json.loads((sweep / "0" / "eval.json").read_text())
    assert report["samples_from"] is None and "no prior" in report["notes"][0]
    code, err = run_cli(["eval", sweep / "0", "--fitted-samples", "--no-classifier"], capsys)
    assert code == 0, err
    assert (sweep / "0" / "pictures" / "samples_fitted.png").is_file()
    assert not (sweep / "0" / "pictures" / "latent_plane.png").exists()   # 8-d latent
    (sweep / "2" / ".hydra").mkdir(parents=True)                            # a job that never finished
    out = aexp("summary", sweep, "--metric", "eval.reconstruction.psnr")
    assert "failed" in out.stdout and "done" in out.stdout
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [(r["job"], r["status"], r["model"]) for r in rows] == [
        ("0", "done", "mlp"), ("1", "failed", "linear"), ("2", "incomplete", "")]
    assert "3 input features" in rows[1]["note"]
    assert float(rows[0]["best_val_loss"]) > 0 and float(rows[0]["eval.reconstruction.psnr"]) > 0
    md = (sweep / "summary.md").read_text()
    assert md.count("\n") == 2 + 3 and "| 1 | failed | linear |" in md
    for name in ("summary_val_loss_curves.png", "summary_eval.reconstruction.psnr_vs_model.png"):
        assert Image.open(sweep / name).width > 100
    code, err = run_cli(["summary", sweep, "--metric", "nope"], capsys)
    assert code == 2 and "best_val_loss" in err


def test_classifier_is_trained_once_and_cached(tmp_path):
    from aexp.data import mnist
    data = mnist(str(make_mnist(tmp_path / "d", n_train=300, n_test=60)), val_size=20)
    x, y = data.batch(data.train)[0], data.train.y
    cfg = {"_target_": "aexp.data.mnist", "root": "x"}
    model, path, cached = classifier.get(cfg, "reconstruct", x, y, 10, tmp_path / "c", epochs=15)
    assert not cached and path.is_file()
    test_x = data.batch(data.test)[0]
    assert classifier.accuracy(model, test_x, data.test.y) > 0.9    # the blobs are separable
    again, path2, cached2 = classifier.get(cfg, "reconstruct", x, y, 10, tmp_path / "c", epochs=15)
    assert cached2 and path2 == path
    assert classifier.accuracy(again, test_x, data.test.y) == classifier.accuracy(model, test_x, data.test.y)
    _, other, _ = classifier.get({**cfg, "root": "y"}, "reconstruct", x, y, 10, tmp_path / "c", epochs=1)
    assert other != path                                            # keyed by the dataset config


def test_a_constant_picture_is_classified_once_with_the_same_accuracy(tmp_path):
    from aexp.data import mnist
    data = mnist(str(make_mnist(tmp_path / "d", n_train=300, n_test=60)), val_size=20)
    x, y = data.batch(data.train)[0], data.train.y
    model, _, _ = classifier.get({"_target_": "aexp.data.mnist", "root": "x"}, "reconstruct", x, y,
                                 10, tmp_path / "c", epochs=2)
    test_x, labels = data.batch(data.test)[0], data.test.y
    calls = []
    model.register_forward_hook(lambda m, a, out: calls.append(len(a[0])))
    for picture in (test_x[:1], test_x[7:8], test_x.mean(0, keepdim=True)):
        same = picture.expand_as(test_x)
        calls.clear()
        got = classifier.accuracy(model, same, labels)
        assert calls == [1]                                          # one forward, of one picture
        with torch.no_grad():                                        # all 60 copies in one forward
            assert got == int((model(same.contiguous()).argmax(1) == labels).sum()) / len(labels)
    calls.clear()
    classifier.accuracy(model, test_x, labels, batch=25)
    assert calls == [25, 25, 10]                                     # different pictures: in batches


class _Colorizer(Autoencoder):
    """L -> a,b by a 1x1 convolution (a stand-in colourisation model)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def encode(self, x):
        return self.conv(x)

    def decode(self, z):
        return torch.sigmoid(z)


def test_colorization_report_and_pictures(tmp_path):
    g = torch.Generator().manual_seed(0)
    rgb = lambda n: (torch.rand(n, 3, 12, 12, generator=g) * 255).to(torch.uint8)

    data = Data("random", "image", Split(rgb(40)), Split(rgb(10)), Split(rgb(30))).prepare(Colorize())
    run = SimpleNamespace(run_dir=tmp_path, data=data, model=_Colorizer().eval(), device=torch.device("cpu"),
                          state={"epoch": 1}, cfg=None)
    rep = evaluate(run, settings(None, tsne=False))
    acc = rep["colorization"]["accuracy"]
    assert set(acc) == {"0.01", "0.05", "0.1"} and acc["0.01"] <= acc["0.05"] <= acc["0.1"]
    assert_pictures(tmp_path / "pictures", {"colorization.png", "colorization_ab.png", "accuracy_vs_bound.png",
                                             "latent_pca.png"})
    assert not (tmp_path / "pictures" / "samples.png").exists()


class _Linear(Autoencoder):
    """A linear image AE exposing W2·W1, as the linear no-bias models do."""

    def __init__(self, n=64, k=8):
        super().__init__()
        self.enc, self.dec = nn.Linear(n, k, bias=False), nn.Linear(k, n, bias=False)

    def encode(self, x):
        return self.enc(x.flatten(1))

    def decode(self, z):
        return torch.sigmoid(self.dec(z)).view(-1, 1, 8, 8)

    def weight_product(self):
        return self.dec.weight @ self.enc.weight


def test_denoising_and_weight_product_pictures(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = lambda n: (torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8)

    labels = lambda n: torch.arange(n) % 3
    data = Data("random", "image", Split(imgs(30), labels(30)), Split(imgs(9)), Split(imgs(24), labels(24)),
                num_classes=3, classes=["a", "b", "c"]).prepare(corruption=Gaussian(0.3))  # noisy input
    run = SimpleNamespace(run_dir=tmp_path, data=data, model=_Linear().eval(), device=torch.device("cpu"),
                          state={"epoch": 1}, cfg=None)
    rep = evaluate(run, settings(None, tsne=False, nll_samples=0, classifier={"enabled": False},
                                 fitted_samples=True))
    assert "vae" not in rep and "classifier" not in rep and rep["latent"]["dim"] == 8
    assert rep["samples_from"] == "fitted"                  # asked for: named for what it is
    assert_pictures(tmp_path / "pictures", {"reconstruction.png", "denoising.png", "weight_product.png",
                                             "samples_fitted.png", "latent_pca.png", "interpolation.gif"})
    assert not (tmp_path / "pictures" / "samples.png").exists()
    with Image.open(tmp_path / "pictures" / "denoising.png") as im:   # 3 row groups of enlarged 8x8 tiles
        assert im.height > im.width / 12 * 3 * 0.9


def test_summary_curves_are_named_by_the_options_that_differ(tmp_path, monkeypatch):
    from aexp.report import plots, summary
    sweep = tmp_path / "sweep"
    for job, lr in (("0", "0.001"), ("1", "0.01")):
        d = sweep / job
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(
            f"- dataset=mnist\n- train.epochs=2\n- optimizer.lr={lr}\n")
        (d / "metrics.csv").write_text("epoch,train_loss,val_loss\n1,0.5,0.4\n2,0.3,0.2\n")
    seen = []
    monkeypatch.setattr(plots, "curves", lambda curves, path, *a: seen.append(
        (path.name, [c[0] for c in curves])) or path)
    summary.summarize(sweep)
    assert ("summary_val_loss_curves.png", ["optimizer.lr=0.001", "optimizer.lr=0.01"]) in seen  # not dataset=...
