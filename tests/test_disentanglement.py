"""The dSprites-like generator (deterministic, the whole factor grid, each factor moving the image
as it should) and the disentanglement metrics on hand-made codes whose answers are known; one
tiny `aexp train` + `aexp eval` writing eval.json's disentanglement section."""
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from aexp.assemble import load_run
from aexp.data import dsprites
from aexp.data import sprites as gen
from aexp.errors import ConfigError
from aexp.report import disentangle as dm
from aexp.report import factors as factors_of
from aexp.report.evaluate import predict, settings
from conftest import run_cli

SMALL = {"orientation": 8, "pos_x": 8, "pos_y": 8, "scale": [0, 5]}    # 480 images
SMALL_SHA256 = "fb2965d689833672f21d0e0b57ef81824dfdb7999a52324d27ab0f2d5177680c"


# -- the generator ------------------------------------------------------------------------------
def test_the_grid_is_dsprites_factor_grid():
    f = gen.grid(gen.choose(None))
    assert f.shape == (737_280, 5) and gen.SIZES == [3, 6, 40, 32, 32]
    assert len(np.unique(f, axis=0)) == len(f)              # every combination exactly once
    assert [len(np.unique(f[:, k])) for k in range(5)] == gen.SIZES
    assert gen.FACTORS["scale"][0] == 0.5 and gen.FACTORS["scale"][-1] == 1.0
    angles = gen.FACTORS["orientation"]
    assert angles[-1] < 2 * math.pi and angles[1] == pytest.approx(2 * math.pi / 40)
    assert (f[1] - f[0]).tolist() == [0, 0, 0, 0, 1]        # dSprites' order: pos_y fastest
    sub = gen.grid(gen.choose({"orientation": 4, "pos_x": [0, 31], "shape": [2]}))
    assert len(sub) == 1 * 6 * 10 * 2 * 32 and set(sub[:, 3]) == {0, 31} and set(sub[:, 0]) == {2}


def test_the_images_are_deterministic_binary_and_pinned():
    f = gen.grid(gen.choose(SMALL))
    a, b = gen.render(f), gen.render(f)
    assert a.shape == (480, 1, 64, 64) and a.dtype == np.uint8
    assert set(np.unique(a)) == {0, 255}
    assert gen.content_hash(a) == gen.content_hash(b) == SMALL_SHA256
    assert gen.content_hash(a) == hashlib.sha256(a.tobytes()).hexdigest()


def centroid(img):
    ys, xs = np.nonzero(img[0])
    return xs.mean(), ys.mean()


def test_a_position_step_moves_the_shape_one_pixel():
    for shape, scale, angle in [(0, 0, 0), (1, 3, 7), (2, 5, 23)]:
        rows = np.array([[shape, scale, angle, x, y] for x, y in [(5, 9), (6, 9), (5, 10), (31, 31), (0, 0)]])
        imgs = gen.render(rows)
        (x0, y0), (x1, y1), (x2, y2) = (centroid(i) for i in imgs[:3])
        assert (x1 - x0, y1 - y0) == pytest.approx((1, 0)) and (x2 - x0, y2 - y0) == pytest.approx((0, 1))
        assert np.array_equal(np.roll(imgs[0], 1, axis=2), imgs[1])   # the same pixels, shifted
        assert all(i[0, 0].max() == 0 for i in imgs[3:])              # the corners stay inside
        area = [int((i > 0).sum()) for i in imgs]
        assert len(set(area)) == 1


def test_scale_grows_the_area_and_orientation_keeps_it():
    for shape in range(3):
        area = (gen.sprites(shape, gen.FACTORS["scale"], gen.FACTORS["orientation"]) > 0).sum((2, 3))
        assert (np.diff(area, axis=0) > 0).all()                      # every orientation
        ratio = area[-1].mean() / area[0].mean()
        assert 3.5 < ratio < 4.5                                      # area ~ scale², (1 / 0.5)² = 4
        assert (area.max(1) / area.min(1) < 1.2).all()                # rotation: area ~constant
        # and orientation does move the pixels (the square's 90° symmetry aside)
        s = gen.sprites(shape, [1.0], gen.FACTORS["orientation"][:5])[0]
        assert all(not np.array_equal(s[0], s[i]) for i in range(1, 5))


def test_the_dataset_is_cached_split_and_labelled_by_its_factors(tmp_path, capsys):
    data = dsprites(SMALL, val_size=0.1, test_size=48, cache_dir=str(tmp_path))
    assert "generated 480 images" in capsys.readouterr().err
    assert data.content_hash == SMALL_SHA256 and SMALL_SHA256[:12] in data.name
    assert (len(data.train), len(data.val), len(data.test)) == (384, 48, 48)
    assert data.factor_names == list(gen.FACTORS) and data.kind == "image"
    test = data.to("cpu").test
    assert test.factors.shape == (48, 5) and test.factors.dtype == torch.int64
    assert np.array_equal(gen.render(test.factors.numpy()), test.x.numpy())   # labels fit images
    again = dsprites(SMALL, val_size=0.1, test_size=48, cache_dir=str(tmp_path))
    assert "generated" not in capsys.readouterr().err and again.content_hash == SMALL_SHA256
    assert len(list(tmp_path.glob("dsprites-*.npy"))) == 1
    disk = dsprites(SMALL, val_size=0.1, test_size=48, cache_dir=str(tmp_path), storage="disk").to("cpu")
    assert disk.placed.startswith("disk") and np.array_equal(disk.test.x[:].numpy(), test.x.numpy())
    x, _ = disk.batch(disk.train, torch.arange(5))                # read per batch from the cache file
    assert x.shape == (5, 1, 64, 64) and set(x.unique().tolist()) <= {0.0, 1.0}


def test_the_coloured_variant_paints_each_shape_in_its_hue(tmp_path):
    data = dsprites(SMALL, test_size=0.5, cache_dir=str(tmp_path), colors=3)
    assert data.factor_names == ["colour", *gen.FACTORS] and data.factor_sizes[0] == 3
    assert "colour" in data.name and data.content_hash != SMALL_SHA256
    test = data.to("cpu").test
    x, f = test.x.numpy(), test.factors.numpy()
    assert x.shape == (len(f), 3, 64, 64) and set(f[:, 0]) == {0, 1, 2}
    grey = gen.render(f[:, 1:])                                   # the same shapes, in colour
    assert np.array_equal((x.max(1, keepdims=True) > 0) * 255, grey)
    for img, c in zip(x[:20], f[:20, 0]):
        on = img.max(0) > 0
        assert on.any() and (img[:, on] == gen.palette(3)[c][:, None]).all()
    with pytest.raises(ConfigError, match="dataset.colors"):
        dsprites(SMALL, cache_dir=str(tmp_path), colors=-1)


@pytest.mark.parametrize("subset", [{"colour": 2}, {"pos_x": 0}, {"pos_x": [40]}, {"scale": "all"}])
def test_a_bad_subset_is_one_line(subset, tmp_path):
    with pytest.raises(ConfigError, match="dataset.subset"):
        dsprites(subset, cache_dir=str(tmp_path))


# -- the metrics on hand-made codes -------------------------------------------------------------
@pytest.fixture(scope="module")
def factors():
    """2,000 random points of a grid whose factors have at most 16 values (under the 20 bins)."""
    f = gen.grid(gen.choose({"orientation": 4, "pos_x": 2, "pos_y": 2}))
    return f[np.random.default_rng(0).permutation(len(f))[:2000]]


SETTINGS = {"points": 2000, "votes_train": 300, "votes_eval": 150}


def test_the_true_factors_score_one(factors):
    s = dm.score_all(factors.astype(float), factors, SETTINGS)
    assert s["mig"] > 0.97
    for k in ("dci_disentanglement", "dci_completeness", "dci_informativeness", "factorvae_score",
              "betavae_score"):
        assert s[k] > 0.97, (k, s[k])
    mi = np.array(s["mutual_information"])
    assert mi.shape == (5, 5) and (mi.argmax(1) == np.arange(5)).all()


def test_a_random_code_scores_about_zero_or_chance(factors):
    codes = np.random.default_rng(1).normal(size=(len(factors), 8))
    s = dm.score_all(codes, factors, SETTINGS)
    assert s["mig"] < 0.05 and s["sap"] < 0.05
    assert s["dci_disentanglement"] < 0.1 and s["dci_completeness"] < 0.1
    assert s["dci_informativeness"] < 0.5         # chance accuracy per factor
    assert s["factorvae_score"] < 0.45 and s["betavae_score"] < 0.45   # chance is about 1/K = 0.2


def test_permuted_and_rescaled_units_change_nothing(factors):
    true = dm.score_all(factors.astype(float), factors, SETTINGS)
    perm = dm.score_all(3.0 * factors[:, ::-1] - 7, factors, SETTINGS)
    for k in ("mig", "dci_disentanglement", "dci_completeness", "factorvae_score"):
        assert perm[k] == pytest.approx(true[k], abs=0.02), k


def test_a_duplicated_factor_scores_as_theory_says(factors):
    codes = np.c_[factors[:, :1], factors].astype(float)        # shape in two units, D = 6
    s = dm.score_all(codes, factors, SETTINGS)
    k = 5
    assert s["mig"] == pytest.approx((k - 1) / k, abs=0.02)      # shape's gap is 0, the others 1
    # completeness: shape's importance split over 2 of 6 units, 1 - log 2 / log 6 at an even split;
    # the forest's split is uneven, so shape's completeness lies in [1 - log 2 / log 6, 1)
    low = (k - 1 + 1 - math.log(2) / math.log(6)) / k
    assert low - 0.02 < s["dci_completeness"] < 0.99
    assert s["dci_disentanglement"] > 0.97 and s["factorvae_score"] > 0.97


def test_dci_of_hand_made_importance_matrices():
    assert dm.dci_scores(np.eye(4)) == pytest.approx((1, 1))
    assert dm.dci_scores(np.ones((4, 4))) == pytest.approx((0, 0), abs=1e-12)
    dup = np.array([[0.5, 0], [0.5, 0], [0, 1]])                 # factor 0 in two of three units
    d, c = dm.dci_scores(dup)
    assert d == pytest.approx(1) and c == pytest.approx((1 - math.log(2) / math.log(3) + 1) / 2)
    mixed = np.array([[1.0, 1.0], [0, 0]])                       # one unit holds both factors
    assert dm.dci_scores(mixed)[0] == pytest.approx(0, abs=1e-12)


def test_mig_of_hand_made_mutual_information():
    f = np.repeat(np.arange(4), 25)[:, None]                     # one factor, 4 values, H = log 4
    mi = np.array([[math.log(4)], [0.5 * math.log(4)]])
    assert dm.mig(mi, f) == pytest.approx(0.5)
    assert dm.mig(mi[:1], f) == pytest.approx(1)                 # a one-unit code: second MI 0


def test_single_valued_factors_are_left_out():
    f = gen.grid(gen.choose({"shape": [1], "orientation": 10, "pos_x": 4, "pos_y": 4}))
    s = dm.score_all(f.astype(float), f, {"votes_train": 50, "votes_eval": 20})
    assert s["factors"] == ["factor1", "factor2", "factor3", "factor4"]


# -- end to end ---------------------------------------------------------------------------------
def test_train_then_eval_writes_the_disentanglement_section(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    code, err = run_cli(["train", "model=vae", "dataset=dsprites", "dataset.subset.orientation=10",
                         "dataset.subset.pos_x=8", "dataset.subset.pos_y=8", "dataset.subset.scale=2",
                         "dataset.test_size=0.4",
                         f"dataset.cache_dir={tmp_path / 'cache'}", "model.hidden=[32]",
                         "model.latent_dim=4", "train.epochs=1", "train.threads=1", "frames.probe_size=50",
                         "eval.enabled=false", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err
    code, err = run_cli(["eval", str(run), "--nll-samples", "0"], capsys)
    assert code == 0, err
    rep = json.loads((run / "eval.json").read_text())
    d = rep["disentanglement"]
    names = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap",
             "factorvae_score", "betavae_score")
    for k in names:
        assert 0 <= d[k] <= 1, (k, d[k])
        assert 0 <= rep["baseline"]["random_encoder"]["disentanglement"][k] <= 1
    ceiling = rep["ceiling"]["true_factors"]["disentanglement"]
    assert ceiling["dci_disentanglement"] > 0.95 and ceiling["factorvae_score"] > 0.95
    assert d["samples"] == rep["n_test"] == 230 and len(d["mutual_information"]) == 4
    assert "sha256" in d["data"] and set(d["estimators"]) >= {"mig", "dci", "sap", "factorvae", "betavae"}
    assert d["estimators"]["settings"]["bins"] == 20
    drawn = {p.name for p in (run / "pictures").iterdir()}
    assert {"mutual_information.png", "latent_traversal_factors.png"} <= drawn
    loaded = load_run(run, device="cpu")           # codes the metrics cannot read: said, not scored
    pred, ev = predict(loaded.model, loaded.data, loaded.data.test, 1000), settings(loaded.cfg)
    monkeypatch.setattr(factors_of, "MAX_UNITS", 3)
    assert "a code of 4 units" in factors_of.section(loaded, pred, ev, {})["note"]
    monkeypatch.setattr(factors_of, "MAX_UNITS", 256)
    monkeypatch.setattr(factors_of, "MIN_SAMPLES", 1000)
    assert "230 test samples" in factors_of.section(loaded, pred, ev, {})["note"]
    pred["mu"][0, 0] = float("nan")
    assert "NaN" in factors_of.section(loaded, pred, ev, {})["note"]
