"""Bad input of every kind (config, data, checkpoint, render) is refused with one clear line and
exit code 2, before any training. The table runs the CLI's `main` in-process (fast); a few cases
go through the real entry point in a subprocess, as a user would meet them."""
import contextlib
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from aexp import checkpoint
from aexp.errors import CheckpointError
from aexp.assemble import load_run
from aexp.cli import main
from conftest import aexp, make_mnist, run_cli

SMALL = ["train.epochs=1", "frames.enabled=false", "dataset.n_train=100", "dataset.n_val=20",
         "dataset.n_test=10"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Folders and files the bad inputs point at."""
    root = tmp_path_factory.mktemp("bad")
    make_mnist(root / "tiny")
    trunc = make_mnist(root / "trunc")
    img = trunc / "MNIST" / "raw" / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:5000])
    (root / "empty_run").mkdir()
    (root / "nockpt" / "checkpoints").mkdir(parents=True)
    for name, payload in (("truncated", None), ("foreign", {"weights": torch.zeros(2)})):
        ck = root / name / "checkpoints" / "last.pt"
        ck.parent.mkdir(parents=True)
        if payload is None:   # the first 100 bytes of a real checkpoint
            checkpoint.save(ck, {"model": {"w": torch.zeros(100)}})
            ck.write_bytes(ck.read_bytes()[:100])
        else:
            torch.save(payload, ck)
    sizes = root / "sizes" / "frames"
    sizes.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(sizes / "epoch_0000.png")
    Image.new("RGB", (50, 30)).save(sizes / "epoch_0001.png")
    ok = root / "ok" / "frames"
    ok.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(ok / "epoch_0000.png")
    (root / "a_file").write_text("not a folder")
    (root / "sweep" / "0" / ".hydra").mkdir(parents=True)
    (root / "sweep" / "0" / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.01\n")
    (root / "sweep" / "0" / "metrics.csv").write_text("epoch,train_loss,val_loss\n1,0.5,0.4\n")
    with contextlib.redirect_stderr(io.StringIO()):   # a finished run to point commands at
        assert main(["train", *SMALL, f"hydra.run.dir={root / 'good'}", "eval.enabled=false"]) == 0
    return root


# (arguments, text the one line must contain); {r} is the files fixture's folder.
CASES = [
    # config
    (["train", "train.epochz=3"], "Could not override 'train.epochz'"),
    (["train", "+train.epochz=3"], "unknown config key train.epochz (did you mean train.epochs?)"),
    (["train", "train.epochs=abc"], "train.epochs must be an integer, got 'abc'"),
    (["train", "train.epochs=0"], "train.epochs must be at least 1, got 0"),
    (["train", "train.batch_size=-4"], "train.batch_size must be at least 1, got -4"),
    (["train", "optimizer.lr=-0.001"], "optimizer.lr must be a positive number, got -0.001"),
    (["train", "frames.enabled=maybe"], "frames.enabled must be true or false, got 'maybe'"),
    (["train", "seed=1.5"], "seed must be an integer, got 1.5"),
    (["train", "model=nosuch"], "Could not find 'model/nosuch'"),
    (["train", "train.epochs=[1"], "no viable alternative at input '[1'"),
    (["train", "model=mlp", "model.activation=swish"], "unknown activation 'swish'"),
    (["train", "model=mlp", "+model.depth=3"], "cannot build aexp.models.dense.MLP"),
    (["train", "dataset=digits", "model=vqvae", "model.latent_dim=8"], "set model.latent_dim=null"),
    (["eval", "{r}/good", "--classifier-epochs", "0"], "eval.classifier.epochs must be at least 1"),
    (["train", "dataset=digits", "model=vqvae", "model.codebook.ema=2"], "model.codebook.ema must be"),
    (["train", "dataset=digits", "model=conv", "loss=vqvae"], "loss term 'vq' needs a VQ model"),
    (["train", "loss.reduction=median"], "loss.reduction must be one of"),
    (["train", "-m", "resume={r}/ok"], "cannot be combined with -m"),
    # data
    (["train", "dataset.n_val=0"], "dataset.n_val must be at least 1, got 0"),
    (["train", "dataset.n_train=1"], "the training split of 1 sample(s) gives no batch"),
    (["train", "dataset=mnist", "model=mlp", "dataset.root={r}/nowhere", "dataset.download=false"],
     "MNIST not found"),
    (["train", "dataset=mnist", "model=mlp", "dataset.root={r}/tiny", "dataset.val_size=500"],
     "validation size 500 leaves an empty split of 120 samples"),
    (["train", "dataset=mnist", "model=mlp", "dataset.root={r}/trunc"], "is truncated"),
    (["train", "dataset=mnist", "model=linear", "dataset.root={r}/tiny", "dataset.val_size=20"],
     "model expects 3 input features but the dataset gives 784"),
    # checkpoint (resume)
    (["train", "resume={r}/missing"], "resume={r}/missing: no such run folder"),
    (["train", "resume={r}/nockpt"], "checkpoints/last.pt not found"),
    (["train", "resume={r}/truncated"], "cannot load checkpoint {r}/truncated/checkpoints/last.pt"),
    (["train", "resume={r}/foreign"], "is not an aexp checkpoint"),
    # eval: its options are checked before the run is loaded ({r}/empty_run has no checkpoint)
    (["eval", "{r}/empty_run", "--nll-max-images", "-1"], "eval.nll_max_images must be at least 0, got -1"),
    (["eval", "{r}/empty_run", "--nll-samples", "-5"], "eval.nll_samples must be at least 0, got -5"),
    # render
    (["render", "{r}/missing"], "no such folder: {r}/missing"),
    (["render", "{r}/empty_run"], "no frames in {r}/empty_run"),
    (["render", "{r}/sizes"], "have different sizes: 40x30, 50x30"),
    (["render", "{r}/ok", "--out", "{r}/a_file/latent.mp4"], "cannot write {r}/a_file/latent.mp4"),
    (["render", "{r}/ok", "--fps", "0"], "--fps must be positive"),
    (["render", "{r}/ok", "--fps", "-1"], "--fps must be positive"),
    (["render", "{r}/ok", "--fps", "x"], "argument --fps: invalid float value: 'x'"),
    (["render", "{r}/a_file"], "no such folder: {r}/a_file"),
    (["render"], "the following arguments are required: run_dir"),
    # settings refused before any data is loaded, by their documented choices and bounds
    (["train", "device=banana"], "device must be auto, cpu, cuda or cuda:N, got 'banana'"),
    (["train", "optimizer.lr=inf"], "optimizer.lr must be a positive number, got inf"),
    (["train", "optimizer.lr=nan"], "optimizer.lr must be a positive number, got nan"),
    (["train", "optimizer=sgd", "optimizer.lr=0"], "optimizer.lr must be a positive number, got 0"),
    (["train", "model=mlp", "model.hidden=[a,b]"], "cannot build aexp.models.dense.MLP: Error in call to "
     "target 'aexp.models.dense.MLP': TypeError"),
    (["train", "objective.reduce=bogus"], "objective.reduce must be one of last, min, max, got 'bogus'"),
    (["train", "objective.metric=val_los"], "objective.metric=val_los is not a metrics.csv column"),
    (["train", "eval.enabled=false", "objective.metric=reconstruction.psnr"],
     "objective.metric=reconstruction.psnr is not a metrics.csv column"),
    (["train", "eval.checkpoint=newest"], "eval.checkpoint must be one of best, last, got 'newest'"),
    (["train", "eval.likelihood=bogus"], "eval.likelihood must be one of bernoulli, gaussian"),
    (["train", "eval.nll_batch=0"], "eval.nll_batch must be at least 1, got 0"),
    (["train", "eval.nll_samples=-1"], "eval.nll_samples must be at least 0, got -1"),
    (["train", "lr_find.stop_factor=0.5"], "lr_find.stop_factor must be above 1, got 0.5"),
    (["train", "lr_find.smoothing=1.5"], "lr_find.smoothing must be in [0, 1), got 1.5"),
    (["train", "train.precision=fp8"], "train.precision must be one of auto, fp32, bf16, got 'fp8'"),
    (["train", "train.grad_clip=-1"], "train.grad_clip must be a positive number (or null), got -1"),
    (["train", "train.max_steps=0"], "train.max_steps must be at least 1, got 0"),
    (["train", "train.threads=0"], "train.threads must be at least 1, got 0"),
    (["train", "train.threads=-1"], "train.threads must be at least 1, got -1"),
    (["train", "train.threads=many"], "train.threads must be auto, an integer or null, got 'many'"),
    (["train", "train.threads=2.5"], "train.threads must be auto, an integer or null, got 2.5"),
    (["train", "train.threads=true"], "train.threads must be auto, an integer or null, got True"),
    (["lr-find", "train.threads=0"], "train.threads must be at least 1, got 0"),
    (["train", "train.channels_last=maybe"], "train.channels_last must be auto, true or false, got 'maybe'"),
    (["train", "train.channels_last=1"], "train.channels_last must be auto, true or false, got 1"),
    (["train", "train.channels_last=null"], "train.channels_last must be auto, true or false, got None"),
    (["train", "train.eval_batch_size=0"], "train.eval_batch_size must be at least 1, got 0"),
    (["train", "train.skip_nonfinite=maybe"], "train.skip_nonfinite must be true or false"),
    (["train", "train.compile=2"], "train.compile must be true or false, got 2"),
    (["train", "train.progressive=[{size: 16}]"], "train.progressive stages need a size and epochs >= 1"),
    (["train", "train.progressive=[{size: 16, epochs: x}]"], "train.progressive stages need a size"),
    (["train", "frames.size=8"], "frames.size must be at least 16, got 8"),
    (["train", "frames.every=0"], "frames.every must be at least 1, got 0"),
    (["train", "frames.probe_size=0"], "frames.probe_size must be at least 1, got 0"),
    (["train", "+eval.bogus=1"], "unknown config key eval.bogus"),
    (["train", "+frames.sise=100"], "unknown config key frames.sise (did you mean frames.size?)"),
    (["train", "seed=abc"], "seed must be an integer, got 'abc'"),
    # group options refused by their own constructors, before training
    (["train", "corruption=dropout", "corruption.p=1.5"], "corruption.p must be in [0, 1), got 1.5"),
    (["train", "corruption=gaussian", "corruption.sigma=-1"], "corruption.sigma must be at least 0"),
    (["train", "corruption=mask"], "corruption=mask needs image inputs"),
    (["train", "task.normalize=bogus"], "task.normalize must be one of unit, none, standard"),
    (["train", "dataset.encoding=bogus"], "dataset.encoding must be one of rgb, hsv, lab"),
    (["train", "model=mlp", "loss=vae"], "needs a VAE"),
    (["train", "model=conv"], "ConvAE needs images (C, H, W)"),
    (["train", "model=resnet"], "resnet model needs images (C, H, W)"),
    (["train", "model=mlp", "model.activation=[relu,relu]", "model.hidden=[8]"],
     "model.activation lists 2 activations for 1 hidden layers"),
    (["train", "loss=triplet_label"], "needs a dataset with class labels"),
    (["train", "loss=perceptual"], "perceptual loss needs exactly one feature network"),
    (["train", "loss=perceptual", "loss.terms.perceptual.weights={r}/nowhere.pt"],
     "perceptual loss: no such weights file"),
    (["train", "loss=factorvae"], "needs a VAE"),
    (["train", "model=vae", "loss=factorvae", "~loss.terms.tc.optimizer"], "needs its own optimizer"),
    (["train", "model=vae", "loss=dipvae", "loss.terms.dip.type=iii"], "dipvae type must be one of i, ii"),
    (["train", "model=vae", "loss=beta_vae_capacity", "loss.terms.capacity.c_max=-1"],
     "capacity c_max and anneal_steps must be >= 0"),
    # data
    (["train", "dataset=image_folder", "dataset.root={r}/nowhere"], "image folder not found"),
    (["train", "dataset=image_folder", "dataset.root={r}/empty_run"], "is empty"),
    (["train", "dataset=cifar10", "dataset.root={r}/nowhere", "dataset.download=false"],
     "CIFAR-10 not found"),
    (["train", "dataset=fashion_mnist", "dataset.root={r}/nowhere", "dataset.download=false"],
     "FashionMNIST not found"),
    (["train", "dataset=digits", "model=mlp", "dataset.test_size=5000"], "leaves an empty split"),
    # the run folder itself
    (["train", "hydra.run.dir={r}/a_file/run"], "cannot use the run folder {r}/a_file/run"),
    (["train", "hydra.run.dir=/proc/aexp-run"], "cannot use the run folder /proc/aexp-run"),
    (["train", "resume={r}/a_file"], "resume={r}/a_file: no such run folder"),
    (["train", "resume={r}/good", "model.latent_dim=3"], "already holds a finished run of a different config"),
    # lr-find: the same checks, before any step
    (["lr-find", "device=banana"], "device must be auto, cpu, cuda or cuda:N"),
    (["lr-find", "lr_find.start=20"], "lr_find needs 0 < start < end, got start=20"),
    (["lr-find", "lr_find.steps=5"], "lr_find.steps must be at least 10, got 5"),
    (["lr-find", "lr_find.stop_factor=1"], "lr_find.stop_factor must be above 1, got 1"),
    (["lr-find", "+lr_find.bogus=1"], "unknown config key lr_find.bogus"),
    (["lr-find", "train.batch_size=0"], "train.batch_size must be at least 1, got 0"),
    (["lr-find", "model=conv"], "ConvAE needs images (C, H, W)"),
    (["lr-find", "model=nosuch"], "Could not find 'model/nosuch'"),
    # eval
    (["eval", "{r}/missing"], "no such run folder: {r}/missing"),
    (["eval", "{r}/a_file"], "no such run folder: {r}/a_file"),
    (["eval", "{r}/nockpt"], "checkpoint not found"),
    (["eval", "{r}/truncated", "--checkpoint", "last"], "cannot load checkpoint"),
    (["eval", "{r}/foreign", "--checkpoint", "last"], "is not an aexp checkpoint"),
    (["eval", "{r}/good", "--checkpoint", "newest"], "argument --checkpoint: invalid choice: 'newest'"),
    (["eval", "{r}/good", "--nll-samples", "x"], "argument --nll-samples: invalid int value: 'x'"),
    (["eval", "{r}/good", "--device", "banana"], "device must be auto, cpu, cuda or cuda:N"),
    (["eval", "{r}/good", "--bogus"], "unrecognized arguments: --bogus"),
    (["eval"], "the following arguments are required: run_dir"),
    # explore
    (["explore", "{r}/missing"], "no such run folder: {r}/missing"),
    (["explore", "{r}/nockpt"], "checkpoint not found"),
    (["explore", "{r}/good", "--points", "0"], "--points, --max-mb and --max-epochs must be positive"),
    (["explore", "{r}/good", "--max-mb", "-1"], "--points, --max-mb and --max-epochs must be positive"),
    (["explore", "{r}/good", "--serve", "--port", "99999"], "--port must be 0..65535, got 99999"),
    (["explore", "{r}/good", "--projection", "bogus"], "unknown projection 'bogus'"),
    (["explore", "{r}/good", "--projection", "tsne", "--points", "3"], "t-SNE needs at least 5 points"),
    (["explore", "{r}/good", "--checkpoint", "newest"], "checkpoint not found"),
    (["explore", "{r}/good", "--out", "{r}/a_file/page.html"], "Not a directory"),
    (["explore", "{r}/good", "--points", "x"], "argument --points: invalid int value: 'x'"),
    # summary
    (["summary", "{r}/missing"], "no such folder: {r}/missing"),
    (["summary", "{r}/empty_run"], "holds no job folders"),
    (["summary", "{r}/sweep", "--metric", "nope"], "--metric nope is not a column of the summary"),
    (["summary", "{r}/sweep", "--out", "{r}/a_file/out"], "{r}/a_file/out"),
    (["summary"], "the following arguments are required: sweep_dir"),
    # export: its arguments, then the run folder (the good run's model is the linear colour AE)
    (["export", "{r}/good"], "the following arguments are required: --format"),
    (["export"], "the following arguments are required: run_dir, --format"),
    (["export", "{r}/good", "--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
    (["export", "{r}/good", "--format", "pt2", "--checkpoint", "newest"],
     "argument --checkpoint: invalid choice: 'newest'"),
    (["export", "{r}/missing", "--format", "onnx"], "no such run folder: {r}/missing"),
    (["export", "{r}/a_file", "--format", "pt2"], "no such run folder: {r}/a_file"),
    (["export", "{r}/nockpt", "--format", "safetensors"], "checkpoint not found"),
    (["export", "{r}/truncated", "--format", "pt2", "--checkpoint", "last"], "cannot load checkpoint"),
    (["export", "{r}/foreign", "--format", "pt2", "--checkpoint", "last"], "is not an aexp checkpoint"),
    (["export", "{r}/good", "--format", "pt2", "--out", "{r}/a_file/out"], "Not a directory"),
    # the command itself
    (["bogus"], "unknown command 'bogus'"),
    (["--bogus"], "unknown command '--bogus'"),
]


def test_the_table_covers_every_command():
    assert len(CASES) >= 100
    assert {a[0] for a, _ in CASES} >= {"train", "lr-find", "render", "eval", "summary", "explore",
                                        "export"}


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")   # restored afterwards: main sets it
    args = [a.replace("{r}", str(files)) for a in args]
    if args[0] in ("train", "lr-find"):
        small = SMALL[:2] if any(a.startswith("dataset=") for a in args) else SMALL
        where = [] if any(a.startswith(("hydra.run.dir=", "resume=")) for a in args) else [
            f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
        args = [*args[:1], *small, *args[1:], *where]
    code, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("aexp: error: "), err    # one line, nothing else
    assert message.replace("{r}", str(files)) in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()    # refused before any work


def test_resume_with_other_options_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    run = tmp_path / "run"
    assert run_cli(["train", *SMALL, f"hydra.run.dir={run}"], capsys)[0] == 0
    code, err = run_cli(["train", f"resume={run}", "model.hidden=[8]"], capsys)
    assert code == 2 and "already holds a finished run of a different config" in err
    (run / "COMPLETED.json").unlink()     # as if killed before the end
    code, err = run_cli(["train", f"resume={run}", "model.hidden=[8]"], capsys)
    assert code == 2 and "the config differs at model.hidden (checkpoint [], now [8])" in err
    code, err = run_cli(["train", f"resume={run}", "train.epochs=2"], capsys)   # may change
    assert code == 0 and "resuming from" in err


def test_load_run_refuses_missing_truncated_and_foreign_checkpoints(files):
    for name, text in (("nockpt", "checkpoint not found"), ("truncated", "cannot load checkpoint"),
                       ("foreign", "is not an aexp checkpoint")):
        with pytest.raises(CheckpointError, match=text):
            load_run(files / name, which="last")


def test_load_run_refuses_weights_of_another_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    run = tmp_path / "run"
    assert run_cli(["train", *SMALL, f"hydra.run.dir={run}"], capsys)[0] == 0
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    state["model"] = {"encoder.1.weight": torch.zeros(5, 5)}
    checkpoint.save(run / "checkpoints" / "last.pt", state)
    with pytest.raises(CheckpointError, match="the checkpoint's weights do not fit its model"):
        load_run(run, which="last")
    code, err = run_cli(["train", f"resume={run}", "train.epochs=2"], capsys)
    assert code == 2 and "checkpoint does not fit this run" in err


def test_real_entry_point_gives_one_line_and_debug_shows_the_traceback(tmp_path):
    for args, message in ((["train", "train.epochz=3"], "Could not override 'train.epochz'"),
                          (["train", "train.epochs=-1"], "train.epochs must be at least 1")):
        proc = aexp(*args, f"hydra.run.dir={tmp_path}", check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [f"aexp: error: {proc.stderr.split('error: ')[1].strip()}"]
        assert message in proc.stderr
    os.environ["AEXP_DEBUG"] = "1"
    try:
        proc = aexp("train", "train.epochs=-1", f"hydra.run.dir={tmp_path}", check=False)
    finally:
        del os.environ["AEXP_DEBUG"]
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


class Payload:
    """Unpickling this runs `touch <path>`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_malicious_checkpoint_runs_no_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    marker = tmp_path / "pwned"
    evil = tmp_path / "run" / "checkpoints" / "last.pt"
    evil.parent.mkdir(parents=True)
    torch.save({"format": checkpoint.FORMAT, "model": Payload(marker)}, evil)
    # The payload is live: a plain pickle load runs it.
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        checkpoint.load(evil)
    assert not marker.exists()
    code, err = run_cli(["train", f"resume={tmp_path / 'run'}"], capsys)
    assert code == 2 and "cannot load checkpoint" in err and "Traceback" not in err
    assert not marker.exists()
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir()), ["run"])
