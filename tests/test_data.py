"""Every dataset option loads tiny real-format data made here, through its config option;
bad data fails with one clear line."""
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from aexp.data import Data
from aexp.errors import ConfigError, DataError
from aexp.assemble import build_parts
from conftest import aexp, make_mnist, run_cli


def load(compose_cfg, overrides, model="mlp") -> Data:
    """Compose a run config and build its data (and a model on it) as training does."""
    data, net, _ = build_parts(compose_cfg([f"model={model}", *overrides]), torch.device("cpu"))
    assert net(data.batch(data.train, torch.arange(2))[0]).x_hat.shape[1:] == data.out_shape
    return data


def make_cifar(root, n_per_batch=12, seed=0, archive=False):
    """Tiny CIFAR-10 in torchvision's layout: pickled batches (protocol 2, latin1 strings)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"batch_label": name, "labels": list(rng.integers(0, 10, n_per_batch)),
                 "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "filenames": [f"{i}.png" for i in range(n_per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    if archive:
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    return root


def make_folder(root, per_class=10, classes=("cats", "dogs"), nested=True, seed=0):
    """A folder of PNGs (and a JPEG) of assorted sizes in class sub-folders (one nested deeper)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        for i in range(per_class):
            sub = root / name / ("deep" if nested and i % 3 == 0 else "")
            sub.mkdir(parents=True, exist_ok=True)
            h, w = 20 + 4 * (i % 3), 24 + 6 * (i % 2)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[..., 0] = 255 if c else 0            # classes differ in redness
            ext = "jpg" if i == 1 else "png"
            Image.fromarray(pixels).save(sub / f"img{i:03d}.{ext}")
    return root


def test_mnist_and_fashion_mnist_load_through_their_options(compose_cfg, tmp_path):
    make_mnist(tmp_path, name="MNIST")
    make_mnist(tmp_path, name="FashionMNIST", compress=True, seed=1)
    for option, name in (("mnist", "mnist"), ("fashion_mnist", "fashion_mnist")):
        data = load(compose_cfg, [f"dataset={option}", f"dataset.root={tmp_path}", "dataset.val_size=20"])
        assert data.name == name and data.kind == "image" and data.task.name == "reconstruct"
        assert data.train.x.dtype == torch.uint8 and data.in_shape == (1, 28, 28)
        assert (len(data.train), len(data.val), len(data.test)) == (100, 20, 40)
        assert data.num_classes == 10 and set(data.test.y.tolist()) == set(range(10))
    assert data.classes[0] == "T-shirt/top"


@pytest.mark.parametrize("archive", [False, True])
def test_cifar10_loads_from_batches_or_archive(compose_cfg, tmp_path, archive):
    make_cifar(tmp_path, archive=archive)
    data = load(compose_cfg, ["dataset=cifar10", f"dataset.root={tmp_path}", "dataset.val_size=10"])
    assert data.in_shape == (3, 32, 32) and data.train.x.dtype == torch.uint8
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 12)
    assert data.classes[3] == "cat" and data.num_classes == 10
    # the pixel layout is torchvision's: 1024 red values, then green, then blue
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert torch.equal(data.test.x[0, 1].flatten(), torch.from_numpy(raw["data"][0, 1024:2048]))


def test_cifar10_maps_its_cache_on_later_loads_and_rebuilds_a_damaged_one(tmp_path, monkeypatch):
    from aexp.data import cifar10, files
    make_cifar(tmp_path)
    first = cifar10(str(tmp_path), val_size=10, cache_dir=str(tmp_path / "cache"))
    caches = sorted((tmp_path / "cache").glob("cifar10-*.npy"))
    assert len(caches) == 4                       # images and labels, training and test
    monkeypatch.setattr(files, "_cifar_batch", lambda p: (_ for _ in ()).throw(AssertionError("unpickled")))
    again = cifar10(str(tmp_path), val_size=10, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(first.train.x[:], again.train.x[:]) and torch.equal(first.test.y, again.test.y)
    test_images = first.test.x[:].clone()
    del first, again                               # (their maps of the files go)
    images = next(p for p in caches if "labels" not in p.name and len(np.load(p, mmap_mode="r")) == 12)
    torn = images.read_bytes()[:100]
    images.unlink()
    images.write_bytes(torn)                       # a torn test-images cache
    monkeypatch.undo()
    rebuilt = cifar10(str(tmp_path), val_size=10, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(rebuilt.test.x[:], test_images)


def test_cifar10_missing_names_the_files(tmp_path):
    from aexp.data import cifar10
    with pytest.raises(DataError, match="cifar-10-python.tar.gz.*" + str(tmp_path)):
        cifar10(str(tmp_path), download=False)


def test_cifar_pickle_cannot_run_code(tmp_path):
    make_cifar(tmp_path)
    evil = pickle.dumps({"data": __import__("os").system}, protocol=2)  # a global outside numpy
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(evil)
    from aexp.data import cifar10
    with pytest.raises(DataError, match="data_batch_1 is not a readable CIFAR batch"):
        cifar10(str(tmp_path), val_size=5, download=False)


def test_digits_is_real_data_with_no_download(compose_cfg):
    data = load(compose_cfg, ["dataset=digits"])
    assert data.in_shape == (1, 8, 8) and data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (1257, 180, 360)
    assert data.train.x.max() == 255 and data.train.x.float().mean() > 40  # real strokes, not zeros
    again = load(compose_cfg, ["dataset=digits"])
    assert torch.equal(again.val.x, data.val.x)                            # fixed-seed splits


def test_image_folder_loads_recursively_with_labels(compose_cfg, tmp_path):
    root = make_folder(tmp_path / "pics")
    (root / "cats" / "notes.txt").write_text("not an image, ignored")
    opts = ["dataset=image_folder", f"dataset.root={root}", "dataset.size=[12,16]",
            f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.val_fraction=0.2", "dataset.test_fraction=0.1"]
    data = load(compose_cfg, opts)
    assert data.in_shape == (3, 12, 16) and data.train.x.dtype == torch.uint8
    assert (len(data.train), len(data.val), len(data.test)) == (14, 4, 2)
    assert data.classes == ["cats", "dogs"] and data.num_classes == 2
    every = torch.cat([data.train.x, data.val.x, data.test.x])
    labels = torch.cat([data.train.y, data.val.y, data.test.y])
    red = every[:, 0].float().mean((1, 2))          # class 0 has no red, class 1 full red
    assert (red[labels == 0] < 20).all() and (red[labels == 1] > 235).all()
    grey = load(compose_cfg, [*opts, "dataset.mode=gray", "dataset.fit=stretch", "dataset.labels=false"])
    assert grey.in_shape == (1, 12, 16) and grey.train.y is None and grey.num_classes is None


def test_image_folder_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    from aexp.data import decode, image_folder
    root, cache = make_folder(tmp_path / "pics"), tmp_path / "cache"
    first = image_folder(str(root), size=8, cache_dir=str(cache))
    assert len(list(cache.glob("image_folder-pics-*.npy"))) == 1
    def no_decoding(*a, **k):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(decode.Image, "open", no_decoding)
    second = image_folder(str(root), size=8, cache_dir=str(cache))
    assert torch.equal(first.train.x[:], second.train.x[:]) and torch.equal(first.test.y, second.test.y)
    with pytest.raises(AssertionError, match="decoded again"):   # another size is another key
        image_folder(str(root), size=9, cache_dir=str(cache))


@pytest.mark.parametrize("setup,kwargs,message", [
    (lambda r: None, {}, "is empty"),
    (lambda r: (r / "a.txt").write_text("x"), {}, r"no images \(.jpg"),
    (lambda r: (make_folder(r), (r / "cats" / "broken.png").write_bytes(b"not a png")), {},
     r"1 unreadable image file\(s\).*broken.png \(UnidentifiedImageError\); .*dataset.skip_bad=true"),
    (lambda r: make_folder(r, per_class=2), {"val_fraction": 0.1}, "leaves the validation split empty"),
    (lambda r: make_folder(r), {"test_fraction": 0.0}, "leaves the test split empty"),
    (lambda r: make_folder(r), {"val_fraction": 0.5, "test_fraction": 0.5}, "training split empty"),
    (lambda r: (make_folder(r), Image.new("RGB", (4, 4)).save(r / "loose.png")), {},
     "lie directly in it"),
])
def test_image_folder_bad_input_is_one_clear_error(tmp_path, setup, kwargs, message):
    from aexp.data import image_folder
    root = tmp_path / "pics"
    root.mkdir()
    setup(root)
    with pytest.raises(DataError, match=message):
        image_folder(str(root), size=8, cache_dir=str(tmp_path / "cache"), **kwargs)


def test_image_folder_bad_options(tmp_path):
    from aexp.data import image_folder
    with pytest.raises(DataError, match="image folder not found"):
        image_folder(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="dataset.size"):
        image_folder(str(make_folder(tmp_path / "p")), size=0)
    with pytest.raises(ConfigError, match="dataset.mode"):
        image_folder(str(tmp_path / "p"), mode="cmyk")


def test_cli_bad_folder_and_unfit_size_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(["train", "dataset=image_folder", f"dataset.root={empty}", "model=mlp",
                         f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and "is empty" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    root = make_folder(tmp_path / "pics")   # a model made for 3-value colours cannot take 8x8 images
    code, err = run_cli(["train", "dataset=image_folder", f"dataset.root={root}", "dataset.size=8",
                         f"dataset.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run2'}"], capsys)
    assert code == 2 and "expects 3 input features" in err
    assert "Traceback" not in err


def test_colorize_on_an_image_folder_trains_end_to_end(tmp_path):
    import csv
    root, run = make_folder(tmp_path / "pics", per_class=12), tmp_path / "run"
    aexp("train", "dataset=image_folder", f"dataset.root={root}", "dataset.size=8",
         f"dataset.cache_dir={tmp_path / 'cache'}", "task=colorize", "task.hflip=true",
         "model=mlp", "model.hidden=[32]", "train.epochs=2", "train.batch_size=8",
         "frames.probe_size=4", "eval.quality=false", f"hydra.run.dir={run}")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2 and all(float(r["val_loss"]) > 0 for r in rows)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["task"]["_target_"] == "aexp.data.tasks.Colorize"
    assert ckpt["model"]["decoder.2.weight"].shape[0] == 2 * 8 * 8   # predicts a,b only
    assert len(list((run / "frames").glob("epoch_*.png"))) == 3
