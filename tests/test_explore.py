"""`aexp explore`: per-epoch latents recorded by training, the page's embedded data, projections,
serving, and a real headless Chromium clicking around the page of a tiny run."""
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from aexp.cli import main as cli_main
from aexp.errors import ConfigError
from aexp.report.explore import main as explore_main
from aexp.draw import PCA, TSNE, Raw, choose
from conftest import ROOT, aexp, make_mnist, run_cli


def payload(html_path) -> dict:
    text = html_path.read_text(encoding="utf-8")
    return json.loads(text.split("const D = ", 1)[1].split(";\nconst W", 1)[0])


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A tiny 2-epoch VAE run on generated MNIST files, explored once."""
    base = tmp_path_factory.mktemp("explore")
    root, run = make_mnist(base / "data"), base / "run"
    aexp("train", "model=vae", "dataset=mnist", f"dataset.root={root}", "dataset.val_size=20",
         "train.epochs=2", "train.batch_size=32", "frames.probe_size=16", "optimizer.lr=3e-3", "eval.quality=false",
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
    from aexp.assemble import load_run
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
    # more points than dimensions: the axes come from the scatter matrix, the same as the SVD's
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    signs = np.sign(np.sum(pca.components * vt[:2], 1))[:, None]
    np.testing.assert_allclose(pca.components, signs * vt[:2], atol=1e-9)
    fresh = PCA()
    fresh.fit(z)
    assert all(st > 0 for st in fresh.components.T.strides)   # frames save it with torch.from_numpy
    assert pca.explained == pytest.approx((s[:2] ** 2).sum() / (s ** 2).sum(), rel=1e-12)
    few = z[:3]                                   # fewer points than dimensions: the SVD itself
    u, s3, _ = np.linalg.svd(few - few.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(PCA().fit(few)), np.abs(u[:, :2] * s3[:2]), atol=1e-9)
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


def test_colors_run_points_in_their_own_color(tmp_path):
    run = tmp_path / "run"
    aexp("train", "train.epochs=1", "dataset.n_train=300", "dataset.n_val=50", "dataset.n_test=60",
         "frames.probe_size=30", f"hydra.run.dir={run}")
    assert explore_main([str(run), "--grid", "12"]) == 0
    d = payload(run / "explorer.html")
    assert d["meta"]["kind"] == "colors" and d["classes"] is None
    test = d["samples"]["test"]
    assert test["target"]["h"] == test["target"]["w"] == 1 and test["target"]["n"] == 60
    from aexp.assemble import load_run
    colors = load_run(run, device="cpu").data.test.x.numpy()
    shown = np.frombuffer(__import__("base64").b64decode(test["color"]), np.uint8).reshape(-1, 3)
    np.testing.assert_allclose(shown, colors * 255, atol=1.0)
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
        # another name for this machine (DNS rebinding) gets nothing
        rebound = urllib.request.Request(url, headers={"Host": "attacker.example:80"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=30)
        assert refused.value.code == 421
        # a client that hangs up mid-page leaves the server serving
        import socket
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert urllib.request.urlopen(url, timeout=30).read() == body
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_on_a_port_in_use_is_one_line(mnist_run, capsys):
    import socket
    _, run = mnist_run
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, err = run_cli(["explore", run, "--serve", "--port", taken.getsockname()[1]], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("aexp: error: ") and "in use" in lines[0]


# --- the page in a real browser -------------------------------------------------------------

def _pixels(driver, canvas_id) -> np.ndarray:
    """The RGB pixels a panel canvas holds (panels keep their image at native size)."""
    w, h, flat = driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];",
        canvas_id)
    return np.array(flat, np.uint8).reshape(h, w, 4)[..., :3]


def _click_canvas(driver, x, y):
    """A real mouse click at canvas pixel (x, y) (Selenium offsets count from the centre)."""
    from selenium.webdriver.common.action_chains import ActionChains
    canvas = driver.find_element("id", "scatter")
    ActionChains(driver).move_to_element_with_offset(canvas, round(x - 300), round(y - 300)).click().perform()


def test_explorer_in_headless_chromium(mnist_run, browser, tmp_path):
    import time

    from selenium.webdriver.common.keys import Keys

    from aexp.data import mnist
    from aexp.assemble import load_run
    root, run = mnist_run
    browser.get((run / "explorer.html").as_uri())
    for _ in range(200):
        if browser.execute_script("return document.body.dataset.ready"):
            break
        time.sleep(0.05)
    assert browser.execute_script("return document.body.dataset.ready") == "1", \
        browser.find_element("id", "meta").text

    # Click two well-separated points of different classes: the panel shows each one's own image.
    pts = np.array(browser.execute_script("return explorer.points()"))
    index = browser.execute_script("return explorer.state.samples.test.index")
    labels = browser.execute_script("return explorer.state.samples.test.label")
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 1e9
    inside = ((pts > 40) & (pts < 560)).all(1)
    alone = [i for i in np.argsort(-dist.min(1)) if dist[i].min() > 10 and inside[i]]
    first = alone[0]
    second = next(i for i in alone if labels[i] != labels[first])
    test_images = mnist(str(root), val_size=20).test.x
    shown = []
    for i in (first, second):
        _click_canvas(browser, *pts[i])
        info = browser.find_element("id", "sampleinfo")
        assert info.get_attribute("data-index") == str(index[i]), info.text
        assert f"class {labels[i]}" in info.text
        img = _pixels(browser, "c-target")
        np.testing.assert_array_equal(img[..., 0], test_images[index[i], 0].numpy())
        assert _pixels(browser, "c-recon").shape == (28, 28, 3)
        shown.append(img)
    assert not np.array_equal(*shown)

    # Click empty space: a decoded image appears, the decoder's output at the latent it names.
    ys, xs = np.mgrid[60:540:12, 60:540:12]
    cand = np.stack([xs.ravel(), ys.ravel()], 1)
    gap = np.linalg.norm(cand[:, None] - pts[None], axis=-1).min(1)
    spot = cand[np.argmax(gap)]
    assert gap.max() > 15
    _click_canvas(browser, *spot)
    dec = browser.find_element("id", "decodedinfo")
    assert dec.text.startswith("decoded at latent"), dec.text
    z = torch.tensor([json.loads(dec.get_attribute("data-z"))], dtype=torch.float32)
    decoded = _pixels(browser, "c-decoded")
    model = load_run(run, device="cpu").model
    with torch.no_grad():
        want = (model.decode(z)[0, 0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    assert decoded.shape == (28, 28, 3) and decoded.std() > 1
    assert np.abs(decoded[..., 0].astype(int) - want).max() <= 1

    # Move the epoch slider to epoch 0: the scatter shows other points.
    before = browser.execute_script("return document.getElementById('scatter').toDataURL()")
    browser.find_element("id", "epoch").send_keys(Keys.HOME)
    assert browser.find_element("id", "viewname").text.startswith("epoch 0 ")
    after = browser.execute_script("return document.getElementById('scatter').toDataURL()")
    assert after != before
    assert len(browser.execute_script("return explorer.points()")) == 16   # the probe set

    shot = tmp_path / "explorer.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
