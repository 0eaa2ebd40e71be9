"""`dataset=table`: float vectors from a CSV / .npy / Parquet file, with an optional label column,
train a dense AE and a VAE end to end; eval.json holds the reconstruction metrics beside the
mean training vector's; bad files are refused in one line."""
import json

import numpy as np
import pytest
import torch

from aexp.data.table import table
from aexp.errors import DataError
from conftest import run_cli

D = 8


def rows(n=500, seed=0):
    """Points of a noisy closed curve in 8-D (one angle) shifted by their class: a 2-D code holds
    them, the mean vector does not."""
    rng = np.random.default_rng(seed)
    t, c = rng.uniform(0, 2 * np.pi, n), rng.integers(0, 3, n)
    x = np.stack([np.cos(t + k) for k in range(D)], 1) + c[:, None] * 0.7 + rng.normal(0, 0.03, (n, D))
    return x, c


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    x, c = rows()
    path = tmp_path_factory.mktemp("table") / "points.csv"
    lines = [",".join([f"f{i}" for i in range(D)] + ["kind"])]
    lines += [",".join(f"{v:.5f}" for v in r) + f",{'abc'[k]}" for r, k in zip(x, c)]
    path.write_text("\n".join(lines) + "\n")
    return path


TINY = ["dataset=table", "dataset.label=kind", "model.hidden=[32]", "train.threads=1", "train.batch_size=32",
        "frames.probe_size=50", "eval.classifier.enabled=false"]


@pytest.mark.parametrize("model, epochs, pictures", [("mlp", 40, True), ("vae", 3, False)])
def test_a_dense_ae_and_vae_train_on_a_csv_and_beat_or_face_the_mean_vector(csv_file, tmp_path, capsys,
                                                                             model, epochs, pictures):
    run = tmp_path / model
    code, err = run_cli(["train", *TINY, f"dataset.path={csv_file}", f"model={model}",
                         f"train.epochs={epochs}", f"eval.pictures={str(pictures).lower()}",
                         f"frames.every={epochs}", "eval.nll_samples=10", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err[-800:]
    report = json.loads((run / "eval.json").read_text())
    ours, base = report["reconstruction"], report["baseline"]["mean_image"]["reconstruction"]
    assert set(ours) == set(base) >= {"mse", "mae", "psnr"} and report["n_test"] == 50
    assert all(np.isfinite(v) for v in [*ours.values(), *base.values()])
    assert (run / "frames" / f"epoch_{epochs:04d}.png").is_file()
    if model == "mlp":      # 40 epochs: the 2-D code has learned what the mean vector cannot hold
        assert ours["mse"] < 0.5 * base["mse"], (ours, base)
        assert {"reconstruction.png", "latent_plane.png"} <= {p.name for p in (run / "pictures").iterdir()}
        code, err = run_cli(["explore", run], capsys)
        assert code == 0 and (run / "explorer.html").stat().st_size > 1000, err[-500:]
    else:
        vae = report["vae"]      # the likelihood bound on vectors, beside the mean vector's
        assert np.isfinite(vae["nll"]) and vae["elbo"] <= -vae["nll"] + 1e-3 and vae["images"] == 50
        assert np.isfinite(report["baseline"]["mean_image"]["vae"]["nll"])


def test_rows_split_scale_and_label_as_stated(csv_file):
    data = table(str(csv_file), label="kind", seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (400, 50, 50)
    assert data.kind == "vectors" and data.in_shape == (D,) and data.classes == ["a", "b", "c"]
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.long
    assert float(data.train.x.min()) == 0.0 and float(data.train.x.max()) == 1.0   # minmax on train
    for split in (data.val, data.test):
        assert float(split.x.min()) >= 0 and float(split.x.max()) <= 1
    again = table(str(csv_file), label="kind", seed=0)
    assert torch.equal(again.test.x, data.test.x)
    std = table(str(csv_file), label="kind", scale="standard").train.x
    assert torch.allclose(std.mean(0), torch.zeros(D), atol=1e-5)


def test_npy_and_parquet_read_the_same_rows(tmp_path, csv_file):
    x, c = rows()
    np.save(tmp_path / "points.npy", np.concatenate([x, c[:, None]], 1))
    from_csv = table(str(csv_file), label="kind")
    from_npy = table(str(tmp_path / "points.npy"), label=D)
    assert torch.allclose(from_npy.test.x, from_csv.test.x, atol=1e-4)
    assert torch.equal(from_npy.test.y, from_csv.test.y) and from_npy.classes == ["0.0", "1.0", "2.0"]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    columns = {f"f{i}": x[:, i] for i in range(D)} | {"kind": np.array(list("abc"))[c]}
    pq.write_table(pa.table(columns), tmp_path / "points.parquet")
    from_parquet = table(str(tmp_path / "points.parquet"), label="kind")
    assert torch.allclose(from_parquet.test.x, from_csv.test.x, atol=1e-4)
    assert torch.equal(from_parquet.test.y, from_csv.test.y)


@pytest.mark.parametrize("content, kwargs, words", [
    ("a,b\n1,2\n3,x\n", {}, "must hold numbers"),
    ("a,b\n1,2\n3,4\n", {"label": "c"}, "no column 'c'"),
    ("a,b\n1,nan\n3,4\n" + "5,6\n" * 10, {}, "not a finite number"),
    ("a,b\n1,2\n", {}, "too few"),
])
def test_bad_tables_are_one_line(tmp_path, content, kwargs, words):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=words) as e:
        table(str(path), **kwargs)
    assert "\n" not in str(e.value)


def test_a_missing_file_is_one_line_from_the_cli(tmp_path, capsys):
    code, err = run_cli(["train", "dataset=table", f"dataset.path={tmp_path / 'nope.csv'}", "model=mlp",
                         f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("aexp: error: dataset.path: no such file")
