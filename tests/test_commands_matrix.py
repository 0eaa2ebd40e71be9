"""Every subcommand that takes a model (`train`, `lr-find`, `eval`, `explore`) over every model
config, on tiny generated data, through the CLI's `main` in-process: each ends with exit 0 on
data the model fits, and `train` with a one-line refusal (exit 2), before any epoch, where the
model cannot work (data it cannot take; for the dense models, which take any shape, a setting
they refuse)."""
import json

import pytest

from conftest import make_mnist, options, run_cli

TINY = ["train.epochs=1", "train.batch_size=16", "dataset.val_size=20", "frames.probe_size=20",
        "eval.enabled=false", "eval.tsne=false"]
MNIST = ["dataset=mnist", "dataset.root=ROOT", *TINY]      # ROOT: the tiny MNIST made below
MNIST32 = ["dataset=mnist32", "dataset.root=ROOT", *TINY]
COLORS = ["dataset=colors", "dataset.n_train=64", "dataset.n_val=20", "dataset.n_test=20",
          "train.epochs=1", "train.batch_size=16", "frames.probe_size=20", "eval.enabled=false"]

# model option -> (overrides on data it fits, overrides it cannot work with)
MODELS = {
    "linear": (COLORS, MNIST),
    "mlp": (["model.hidden=[16]", *MNIST], ["model.hidden=[16]", "model.activation=[relu,relu]", *MNIST]),
    "vae": (["model.hidden=[16]", *MNIST], ["model.hidden=[16]", "model.activation=banana", *MNIST]),
    "cvae": (["model.hidden=[16]", *MNIST], ["model.hidden=[16]", *COLORS]),   # colours: no labels
    "hvae": (["model.hidden1=[16]", "model.latent1=4", "model.hidden2=[8]", *MNIST],
             ["model.hidden1=[16]", "model.activation=banana", *MNIST]),
    "overcomplete": (MNIST, MNIST32),
    "conv": (["model.channels=[4,8]", *MNIST], ["model.channels=[4,8]", *COLORS]),
    "conv_vae": (["model.channels=[4,8]", "model.latent_dim=4", *MNIST],
                 ["model.channels=[4,8]", "model.latent_dim=4", *COLORS]),
    "pooling_cnn": (["model.width=4", "task=colorize", *MNIST32], ["model.width=4", *COLORS]),
    "baseline32": (["model.channels=[4,8,8]", "model.latent_dim=16", *MNIST32],
                   ["model.channels=[4,8,8]", "model.latent_dim=16", *COLORS]),
    "resnet": (["model.decoder_channels=[8,8,8,8]", *MNIST32],
               ["model.decoder_channels=[8,8,8,8]", *COLORS]),
    "fsqvae": (["model.channels=[4,8]", "model.quantizer.levels=[3,3]", *MNIST],
              ["model.channels=[4,8]", "model.quantizer.levels=[3,3]", *COLORS]),
    "vqvae": (["model.channels=[4,8]", "model.codebook.size=8", *MNIST],
              ["model.channels=[4,8]", "model.codebook.size=8", *COLORS]),
    "resconv": (["model.channels=[4,8]", *MNIST], ["model.channels=[4,8]", *COLORS]),
    "resconv_vae": (["model.channels=[4,8]", *MNIST], ["model.channels=[4,8]", *COLORS]),
}


def test_every_model_config_is_in_the_matrix():
    assert set(MODELS) == set(options("model"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_mnist(tmp_path_factory.mktemp("matrix"), n_train=100, n_test=30)


def assert_refused(code: int, err: str, what: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines and lines[-1].startswith("aexp: error: "), (what, code, err[-800:])
    assert "Traceback" not in err, (what, err[-800:])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_train_lr_find_eval_explore(model, root, tmp_path, capsys):
    fits, misfits = ([a.replace("ROOT", str(root)) for a in args] for args in MODELS[model])
    common = [f"model={model}"]
    run = tmp_path / "run"
    code, err = run_cli(["train", *common, *fits, f"hydra.run.dir={run}"], capsys)
    assert code == 0, err[-1500:]
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "metrics.csv").is_file()

    code, err = run_cli(["lr-find", *common, *fits, "lr_find.steps=12", f"hydra.run.dir={tmp_path / 'lr'}"],
                    capsys)
    assert code == 0, err[-1500:]
    assert (tmp_path / "lr" / "lr_find.png").is_file()

    code, err = run_cli(["eval", run, "--no-classifier", "--nll-samples", "4", "--nll-max-images", "8",
                     "--device", "cpu"], capsys)
    assert code == 0, err[-1500:]
    report = json.loads((run / "eval.json").read_text())
    assert report["model"] and report["reconstruction"]["mse"] >= 0 and report["pictures"]

    code, err = run_cli(["explore", run, "--points", "30"], capsys)
    assert code == 0, err[-1500:]
    assert (run / "explorer.html").stat().st_size > 1000

    other = [f"model={model}", *misfits, f"hydra.run.dir={tmp_path / 'bad'}"]
    code, err = run_cli(["train", *other], capsys)
    assert_refused(code, err, f"train {model} where it cannot work")
    assert not (tmp_path / "bad" / "checkpoints").exists()
