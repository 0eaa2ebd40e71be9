"""The real entry point in a subprocess: train on tiny generated MNIST files, render, multirun."""
import csv

import torch

from aexp.report.render import count_video_frames
from conftest import aexp, make_mnist, run_cli


def test_vae_on_tiny_mnist_then_render(tmp_path, tiny_mnist):
    run = tmp_path / "run"
    aexp("train", "model=vae", "dataset=mnist", f"dataset.root={tiny_mnist}", "dataset.val_size=20",
         "train.epochs=2", "train.batch_size=32", "frames.probe_size=20", "eval.quality=false",
         f"hydra.run.dir={run}")
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()

    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2
    assert {"model", "optimizer", "scheduler", "rng", "config"} <= set(ckpt)
    assert ckpt["config"]["model"]["_target_"] == "aexp.models.dense.VAE"
    assert (run / "checkpoints" / "best.pt").is_file()

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for col in ("train_loss", "val_loss", "train_recon", "train_kl", "val_recon", "val_kl", "lr", "seconds"):
        assert all(r[col] != "" for r in rows), col
    for r in rows:  # the total is the weighted sum of its terms (both weights 1)
        assert abs(float(r["val_loss"]) - float(r["val_recon"]) - float(r["val_kl"])) < 1e-3

    frames = sorted((run / "frames").glob("epoch_*.png"))
    assert [f.name for f in frames] == ["epoch_0000.png", "epoch_0001.png", "epoch_0002.png"]

    out = aexp("render", run)
    assert "latent.mp4" in out.stdout
    assert count_video_frames(run / "latent.mp4") == 3
    aexp("render", run, "--gif", "--fps", "4")
    assert (run / "latent.gif").stat().st_size > 0


def test_default_colors_run_learns(tmp_path):
    run = tmp_path / "run"
    aexp("train", "train.epochs=3", "dataset.n_train=2000", "dataset.n_val=500",
         "optimizer.lr=1e-2", f"hydra.run.dir={run}")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 3
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    assert len(list((run / "frames").glob("epoch_*.png"))) == 4


def test_multirun_gives_one_complete_folder_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    aexp("train", "-m", "optimizer.lr=1e-3,3e-3", "train.epochs=1", "dataset.n_train=500",
         "dataset.n_val=100", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    lrs = set()
    for job in jobs:
        assert (job / "checkpoints" / "last.pt").is_file()
        assert (job / "metrics.csv").is_file()
        assert len(list((job / "frames").glob("*.png"))) == 2
        lrs.add(float(next(csv.DictReader(open(job / "metrics.csv")))["lr"]))
    assert lrs == {1e-3, 3e-3}
    out = aexp("render", sweep)   # a multirun folder renders every job
    assert out.stdout.count("latent.mp4") == 2


def test_cli_help_and_unknown_command(capsys):
    assert "train" in aexp("--help").stdout
    help_out = aexp("train", "--help").stdout
    assert "model: " in help_out and "dataset: " in help_out
    code, err = run_cli(["trian"], capsys)
    assert code == 2 and "unknown command 'trian'" in err


def test_missing_mnist_is_one_clear_line(tmp_path, capsys):
    code, err = run_cli(["train", "dataset=mnist", "model=mlp", f"dataset.root={tmp_path}",
                         "dataset.download=false", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2
    assert "train-images-idx3-ubyte.gz" in err and str(tmp_path / "MNIST" / "raw") in err
    assert "Traceback" not in err


def test_gzipped_mnist_is_extracted(tmp_path):
    root = make_mnist(tmp_path / "gz", compress=True)
    from aexp.data import mnist
    data = mnist(str(root), val_size=20)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape[1:] == (1, 28, 28)
    assert len(data.train) == 100 and len(data.val) == 20 and len(data.test) == 40
    assert data.num_classes == 10
