"""Every experiment preset (conf/experiment/*.yaml) composes, builds its model on its data and
trains one optimiser step, on tiny generated stand-ins for the files it needs (MNIST-format
files, a folder of images, random local weight files): a preset that names a missing option,
a key the groups do not have, or a model that cannot take its data fails here."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision.models import resnet34, vgg

from aexp.run.train import train
from conftest import make_mnist, options

EXPERIMENTS = options("experiment")
# The datasets a preset may use, and the overrides that point it at tiny generated data.
FILES = {
    "aexp.data.colors": lambda d: ["dataset.n_train=256", "dataset.n_val=64", "dataset.n_test=64"],
    "aexp.data.mnist": lambda d: [f"dataset.root={d['mnist']}", "dataset.val_size=20"],
    "aexp.data.resized.mnist32": lambda d: [f"dataset.root={d['mnist']}", "dataset.val_size=20"],
    "aexp.data.image_folder": lambda d: [f"dataset.root={d['images']}", "dataset.size=32"],
}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand_ins")
    images = root / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    torch.save(resnet34().state_dict(), root / "resnet34.pt")
    torch.save(vgg.make_layers(vgg.cfgs["D"], batch_norm=True).state_dict(), root / "vgg16_bn.pt")
    return {"mnist": make_mnist(root / "data"), "images": images,
            "resnet": root / "resnet34.pt", "vgg": root / "vgg16_bn.pt"}


def test_there_is_a_preset_per_classic_experiment():
    for name in ("colour_ae", "colour_ae_triplet", "mnist2d_ae", "mnist2d_vae", "colorize_pooling",
                 "mnist32_baseline", "tour_dense", "vae_nll"):
        assert name in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_preset_composes_and_trains_one_step(compose_cfg, stand_ins, tmp_path, name):
    target = compose_cfg([f"+experiment={name}"]).dataset._target_
    assert target in FILES, f"preset {name} uses dataset {target}: add a tiny stand-in here"
    overrides = [f"+experiment={name}", *FILES[target](stand_ins), "train.epochs=1",
                 "train.max_steps=1", "train.batch_size=4", "frames.enabled=false",
                 "eval.enabled=false", "device=cpu"]
    cfg = compose_cfg(overrides)
    # presets that need a local weights file name one that is not here: give random stand-ins
    files = {"model.weights": stand_ins["resnet"], "loss.terms.perceptual.weights": stand_ins["vgg"]}
    extra = [f"{k}={v}" for k, v in files.items() if _names_a_file(cfg, k)]
    if extra:
        cfg = compose_cfg(overrides + extra)
    row = train(cfg, tmp_path / "run")
    assert row["epoch"] == 1
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def _names_a_file(cfg, key: str) -> bool:
    return isinstance(OmegaConf.select(cfg, key, default=None), str)


def test_pretrained_preset_without_its_weights_file_fails_in_one_line(tmp_path, stand_ins, capsys):
    from conftest import run_cli
    code, err = run_cli(["train", "+experiment=mnist32_resnet_pretrained", f"dataset.root={stand_ins['mnist']}",
                         "dataset.val_size=20", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2
    assert "model.weights: no such file" in err


def test_mnist32_resizes_and_repeats_channels(stand_ins):
    from aexp.data.resized import mnist32, resize
    from aexp.errors import ConfigError
    data = mnist32(root=str(stand_ins["mnist"]), val_size=20)
    assert tuple(data.train.x.shape[1:]) == (3, 32, 32) and data.train.x.dtype == torch.uint8
    assert torch.equal(data.test.x[:, 0], data.test.x[:, 2])           # grey repeated
    assert len(data.train) == 100 and len(data.test) == 40 and data.num_classes == 10
    grey = mnist32(root=str(stand_ins["mnist"]), val_size=20, size=16, channels=1)
    assert tuple(grey.val.x.shape[1:]) == (1, 16, 16)
    with pytest.raises(ConfigError):
        resize(data, 32, 2)                                              # 3 channels cannot become 2
