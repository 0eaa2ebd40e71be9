"""`aexp explore`: per-epoch latents recorded by training, the page's embedded data, projections,
serving, and a real headless Chromium clicking around the page of a tiny run."""
import json
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch

from aexp.cli import main as cli_main
from aexp.errors import ConfigError
from aexp.explore import main as explore_main
from aexp.projection import PCA, TSNE, Raw, choose
from conftest import ROOT, aexp, make_mnist


def payload(html_path) -> dict:
    text = html_path.read_text(encoding="utf-8")
    return json.loads(text.split("const D = ", 1)[1].split(";\nconst W", 1)[0])


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A tiny 2-epoch VAE run on generated MNIST files, explored once."""
    base = tmp_path_factory.mktemp("explore")
    root, run = make_mnist(base / "data"), base / "run"
    aexp("train", "model=vae", "dataset=mnist", f"dataset.root={root}", "dataset.val_size=20",
         "train.epochs=2", "train.batch_size=32", "frames.probe_size=16", "optimizer.lr=3e-3",
         f"hydra.run.dir={run}")
    out = aexp("explore", run)
    assert "explorer.html" in out.stdout and "40 of 40 test samples" in out.stdout
    return root, run


def test_training_records_probe_latents_each_epoch(mnist_run):
    root, run = mnist_run
    frames = run / "frames"
    files = sorted(p.name for p in frames.glob("latents_*.npy"))
    assert files == ["latents_0000.npy", "latents_0001.npy", "latents_0002.npy"]
    probe = np.load(frames / "probe.npz")
    assert probe["index"].shape == (16,) and probe["label"].shape == (16,)
    z0, z2 = np.load(frames / "latents_0000.npy"), np.load(frames / "latents_0002.npy")
    assert z2.dtype == np.float16 and z2.shape == (16, 2)
    assert not np.allclose(z0, z2)   # training moved the latents
    # the last recorded latents are the final model's codes of those validation samples
    from aexp.runs import load_run
    r = load_run(run, which="last", device="cpu")
    x = r.data.batch(r.data.val, torch.as_tensor(probe["index"]))[0]
    with torch.no_grad():
        z = r.model.encode(x).numpy()
    np.testing.assert_allclose(z2.astype(np.float32), z, rtol=2e-3, atol=2e-3)
    assert (probe["label"] == r.data.val.y[torch.as_tensor(probe["index"])].numpy()).all()


def test_page_is_self_contained_and_complete(mnist_run):
    _, run = mnist_run
    page = run / "explorer.html"
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text), "page must not load anything"
    assert "http://" not in text and "https://" not in text
    d = payload(page)
    assert d["meta"]["kind"] == "image" and d["meta"]["latent_dim"] == 2
    assert [v["epoch"] for v in d["views"]] == [0, 1, 2, 2]   # three recorded epochs + checkpoint
    test = d["samples"]["test"]
    assert test["index"] == list(range(40)) and test["label"] == [i % 10 for i in range(40)]
    assert test["target"]["n"] == 40 and test["recon"]["n"] == 40
    assert d["samples"]["probe"]["recon"] is None and d["samples"]["probe"]["target"]["n"] == 16
    assert d["grid"]["n"] == 20 and len(d["grid"]["z"]) == 400 and d["classes"] == list("0123456789")


def test_projections_map_back_to_latent_space():
    z = np.random.default_rng(0).normal(size=(300, 6)) * np.array([5, 3, 1, .1, .1, .1])
    pca = PCA()
    p = pca.fit(z)
    assert p.shape == (300, 2) and p[:, 0].var() > p[:, 1].var()
    # the plane's back-projection lands on the plane again
    np.testing.assert_allclose(pca.transform(pca.inverse(p)), p, atol=1e-9)
    pca.components = -pca.components     # a reference with both axes flipped...
    np.testing.assert_allclose(PCA(reference=pca).fit(z), -p, atol=1e-9)   # ...is followed
    assert isinstance(choose("auto", 2), Raw) and isinstance(choose("auto", 8), PCA)
    with pytest.raises(ConfigError, match="at most 2"):
        Raw().fit(z)
    with pytest.raises(ConfigError, match="unknown projection"):
        choose("umap", 2)


@pytest.mark.slow
def test_tsne_maps_an_embedded_point_back_near_its_latent():
    pytest.importorskip("sklearn")
    z = np.random.default_rng(0).normal(size=(100, 6))
    t = TSNE(seed=0)
    emb = t.fit(z)
    back = t.inverse(emb[:5])
    assert np.linalg.norm(back - z[:5], axis=1).mean() < np.linalg.norm(z - z.mean(0), axis=1).mean()


def test_colours_run_points_in_their_own_colour(tmp_path):
    run = tmp_path / "run"
    aexp("train", "train.epochs=1", "dataset.n_train=300", "dataset.n_val=50", "dataset.n_test=60",
         "frames.probe_size=30", f"hydra.run.dir={run}")
    assert explore_main([str(run), "--grid", "12"]) == 0
    d = payload(run / "explorer.html")
    assert d["meta"]["kind"] == "colors" and d["classes"] is None
    test = d["samples"]["test"]
    assert test["target"]["h"] == test["target"]["w"] == 1 and test["target"]["n"] == 60
    from aexp.runs import load_run
    colours = load_run(run, device="cpu").data.test.x.numpy()
    shown = np.frombuffer(__import__("base64").b64decode(test["color"]), np.uint8).reshape(-1, 3)
    np.testing.assert_allclose(shown, colours * 255, atol=1.0)
    assert d["grid"]["n"] == 12 and d["grid"]["tiles"]["n"] == 144


def test_size_budget_subsamples_and_says_so(mnist_run, tmp_path, capsys):
    _, run = mnist_run
    explore_main([str(run), "--max-mb", "0.01", "--out", str(tmp_path / "small.html")])
    assert "of 40 test samples (random subsample)" in capsys.readouterr().out
    d = payload(tmp_path / "small.html")
    assert 2 <= len(d["samples"]["test"]["index"]) < 40


def test_bad_input_is_one_line(tmp_path, capsys):
    assert cli_main(["explore", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run folder" in err
    assert cli_main(["explore", str(tmp_path), "--points", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err


def test_serve_on_localhost(mnist_run):
    _, run = mnist_run
    proc = subprocess.Popen([sys.executable, "-m", "aexp.cli", "explore", str(run), "--serve",
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("serving "):
                url = line.split()[1]
                break
        assert url and url.startswith("http://127.0.0.1:")
        body = urllib.request.urlopen(url, timeout=30).read()
        assert body == (run / "explorer.html").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
