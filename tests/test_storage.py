"""Datasets of any size (aexp.data.storage, aexp.data.decode): the three storage modes give the
same batches and the same trained weights, resume restores the data order in each, `auto`
follows the memory budget, the parallel decode equals the serial one, a kill mid-decode leaves
no cache a later run accepts, and an unreadable image is one line (or skipped, and counted)."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from aexp import checkpoint
from aexp.assemble import build_parts
from aexp.data import Stored, decode, image_folder
from aexp.errors import DataError
from aexp.losses import Term
from aexp.run.train import train
from conftest import ROOT, aexp, run_cli

MODES = ("device", "host", "disk")


def photos(folder, n=40, size=12, classes=("a", "b")):
    """`n` random JPEGs and PNGs in class folders (JPEG: the format bad files come in)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        sub = folder / classes[i % len(classes)]
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size + i % 3, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"{i:04d}.{'jpg' if i % 2 else 'png'}")
    return folder


def folder_cfg(compose_cfg, root, cache, mode, *extra):
    return compose_cfg(["dataset=image_folder", f"dataset.root={root}", "dataset.size=8",
                        f"dataset.cache_dir={cache}", f"dataset.storage={mode}", "model=mlp",
                        "model.hidden=[32]", "task.hflip=true", "train.batch_size=6", "train.epochs=2",
                        "frames.probe_size=4", "eval.quality=false", "train.threads=1", *extra])


def test_the_three_modes_give_the_same_batches(compose_cfg, tmp_path):
    root = photos(tmp_path / "pics")
    batches = {}
    for mode in MODES:
        data, _, _ = build_parts(folder_cfg(compose_cfg, root, tmp_path / "cache", mode), torch.device("cpu"))
        assert data.placed.startswith(mode)
        assert isinstance(data.train.x, torch.Tensor) == (mode == "device")
        idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(3))[:10]
        data.train.plan([idx[:5], idx[5:]])             # read ahead, then asked in order
        torch.manual_seed(0)                             # the flips draw from torch's RNG
        got = [data.batch(data.train, i, train=True) for i in (idx[:5], idx[5:])]
        got.append(data.batch(data.test, torch.arange(len(data.test))))
        got.append((data.train.y[idx],))
        batches[mode] = got
    for mode in ("host", "disk"):
        for a, b in zip(batches["device"], batches[mode]):
            assert all(torch.equal(u, v) for u, v in zip(a, b)), mode


def test_a_read_that_is_not_the_planned_one_is_served_directly(tmp_path):
    x = torch.arange(10 * 3, dtype=torch.uint8).view(10, 3)
    s = Stored(x, torch.tensor([9, 1, 5, 3, 7]))
    s.plan([torch.tensor([0, 1]), torch.tensor([4, 2])])
    assert torch.equal(s.index_select(0, torch.tensor([3, 0])), x[[3, 9]])    # off the plan
    assert torch.equal(s.index_select(0, torch.tensor([0, 1])), x[[9, 1]])    # the plan's head
    assert torch.equal(s.index_select(0, torch.tensor([4, 2])), x[[7, 5]])
    assert torch.equal(s[1:3], x[[1, 5]]) and torch.equal(s[2], x[5]) and s.shape == (5, 3)


def test_the_three_modes_train_the_same_weights(compose_cfg, tmp_path):
    root = photos(tmp_path / "pics")
    weights = {}
    for mode in MODES:
        run = tmp_path / mode
        train(folder_cfg(compose_cfg, root, tmp_path / "cache", mode), run)
        weights[mode] = checkpoint.load(run / "checkpoints" / "last.pt")["model"]
    for mode in ("host", "disk"):
        assert all(torch.equal(weights["device"][k], weights[mode][k]) for k in weights["device"]), mode


class StopAt(Term):
    """A zero loss term that sends this process SIGTERM at the given training step (call 1 is
    the pre-flight check), as a scheduler or a user would: the run saves mid-epoch and stops.
    Once only: it leaves `marker` behind, so the resumed run (same config) is left alone."""

    def __init__(self, call, marker, weight=0.0):
        super().__init__(weight)
        self.call, self.marker, self.calls = call, marker, 0

    def __call__(self, out, x, y, model, reduction):
        if model.training:
            self.calls += 1
            if self.calls == self.call and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os.kill(os.getpid(), signal.SIGTERM)
        return torch.zeros(len(x))


@pytest.mark.parametrize("mode", MODES)
def test_resume_restores_the_data_order_in_every_mode(compose_cfg, tmp_path, mode):
    from aexp.errors import Interrupted
    root = photos(tmp_path / "pics")
    cfg = folder_cfg(compose_cfg, root, tmp_path / "cache", mode, "frames.enabled=false")
    with open_dict(cfg):           # 6 steps per epoch: stop in epoch 2, step 3
        cfg.loss.terms.stop = {"_target_": "test_storage.StopAt", "call": 10,
                               "marker": str(tmp_path / "stopped")}
    whole, run = tmp_path / "whole", tmp_path / "run"
    (tmp_path / "stopped").touch()
    train(cfg, whole)                                    # left alone
    (tmp_path / "stopped").unlink()
    with pytest.raises(Interrupted):
        train(cfg, run)
    assert checkpoint.load(run / "checkpoints" / "last.pt")["partial"]["step"] == 3
    train(cfg, run)                                      # resumes from the saved step
    a, b = (checkpoint.load(r / "checkpoints" / "last.pt")["model"] for r in (whole, run))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_follows_the_memory_budget(compose_cfg, tmp_path):
    root = photos(tmp_path / "pics")
    small, _, _ = build_parts(folder_cfg(compose_cfg, root, tmp_path / "c", "auto", "dataset.memory_budget=1e-6"),
                              torch.device("cpu"))
    assert small.placed.startswith("disk (auto: ") and "budget" in small.placed
    assert isinstance(small.train.x, Stored)
    roomy, _, _ = build_parts(folder_cfg(compose_cfg, root, tmp_path / "c", "auto", "dataset.memory_budget=1"),
                              torch.device("cpu"))
    assert roomy.placed.startswith("device (auto: ") and isinstance(roomy.train.x, torch.Tensor)


def test_the_parallel_decode_equals_the_serial_one(tmp_path):
    root = photos(tmp_path / "pics", n=3 * decode.CHUNK + 5)     # four chunks over two processes
    one = image_folder(str(root), size=8, cache_dir=str(tmp_path / "one"), workers=1)
    two = image_folder(str(root), size=8, cache_dir=str(tmp_path / "two"), workers=2)
    for a, b in ((one.train, two.train), (one.test, two.test)):
        assert torch.equal(a.x[:], b.x[:]) and torch.equal(a.y, b.y)


KILLED = """
import sys, time
from aexp.data import decode, image_folder
real = decode._decode_chunk
def slow(*args):
    out = real(*args)
    print("chunk", flush=True)
    time.sleep(60)
    return out
decode._decode_chunk = slow
image_folder(sys.argv[1], size=8, cache_dir=sys.argv[2], workers=1)
"""


def test_a_kill_mid_decode_leaves_no_cache_a_later_run_accepts(tmp_path, monkeypatch):
    root, cache = photos(tmp_path / "pics", n=2 * decode.CHUNK + 3), tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(root), str(cache)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "chunk"    # one chunk written, two to go
    proc.kill()
    proc.wait()
    left = sorted(p.name for p in cache.iterdir())
    assert not [n for n in left if n.endswith(".npy")], left            # no cache under its name
    assert [n for n in left if n.endswith(".tmp")], left                # the partial file, as such
    calls = []
    real = decode._decode_chunk
    monkeypatch.setattr(decode, "_decode_chunk", lambda *a: calls.append(1) or real(*a))
    data = image_folder(str(root), size=8, cache_dir=str(cache), workers=1)
    assert len(calls) == 3                                               # decoded again, whole
    assert not list(cache.glob("*.tmp"))                                 # the dead run's file is gone
    fresh = image_folder(str(root), size=8, cache_dir=str(tmp_path / "fresh"), workers=1)
    assert torch.equal(data.train.x[:], fresh.train.x[:])


def truncated(folder):
    """Two unreadable files among good ones: a JPEG cut in half and an empty PNG."""
    root = photos(folder)
    jpeg = root / "b" / "0001.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[:len(data) // 2])
    (root / "a" / "0002.png").write_bytes(b"")
    return root


def test_a_truncated_jpeg_is_one_line_naming_it(tmp_path, capsys):
    root = truncated(tmp_path / "pics")
    with pytest.raises(DataError, match=r"2 unreadable image file\(s\) in .*: a/0002.png "
                                        r"\(UnidentifiedImageError\), b/0001.jpg \(OSError\); .*skip_bad=true"):
        image_folder(str(root), size=8, cache_dir=str(tmp_path / "cache"))
    code, err = run_cli(["train", "dataset=image_folder", f"dataset.root={root}", "dataset.size=8",
                         f"dataset.cache_dir={tmp_path / 'cache'}", "model=mlp",
                         f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "0001.jpg" in err
    assert err.startswith("aexp: error: ") and "Traceback" not in err


def test_skip_bad_trains_without_them_and_says_how_many(tmp_path):
    root = truncated(tmp_path / "pics")
    run = tmp_path / "run"
    done = aexp("train", "dataset=image_folder", f"dataset.root={root}", "dataset.size=8",
                f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.skip_bad=true", "model=mlp",
                "model.hidden=[16]", "train.epochs=1", "train.batch_size=8", "frames.probe_size=4",
                "eval.quality=false", f"hydra.run.dir={run}")
    assert "2 unreadable image file(s) skipped" in done.stderr
    data = image_folder(str(root), size=8, cache_dir=str(tmp_path / "cache"), skip_bad=True)
    assert len(data.train) + len(data.val) + len(data.test) == 38
    assert (run / "checkpoints" / "last.pt").is_file()


def test_bad_storage_settings_are_one_line(tmp_path):
    from aexp.errors import ConfigError
    root = photos(tmp_path / "pics", n=10)
    for kwargs, message in (({"storage": "ram"}, "dataset.storage must be one of auto, device"),
                            ({"storage": "disk", "cache": False}, "set dataset.cache=true"),
                            ({"memory_budget": -1}, "dataset.memory_budget must be"),
                            ({"workers": 0}, "dataset.workers must be")):
        with pytest.raises(ConfigError, match=message):
            image_folder(str(root), size=8, cache_dir=str(tmp_path / "cache"), **kwargs)


def test_mnist_on_disk_reads_the_idx_files_mapped(tiny_mnist, compose_cfg):
    device, _, _ = build_parts(compose_cfg(["dataset=mnist", f"dataset.root={tiny_mnist}", "dataset.val_size=20",
                                            "dataset.storage=device", "model=mlp"]), torch.device("cpu"))
    disk, _, _ = build_parts(compose_cfg(["dataset=mnist", f"dataset.root={tiny_mnist}", "dataset.val_size=20",
                                          "dataset.storage=disk", "model=mlp"]), torch.device("cpu"))
    assert isinstance(disk.train.x, Stored)
    idx_file = tiny_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte"
    assert str(idx_file) in open("/proc/self/maps").read()        # read through a memory map
    idx = torch.tensor([5, 0, 17, 3])
    assert torch.equal(device.batch(device.train, idx)[0], disk.batch(disk.train, idx)[0])
    assert torch.equal(device.test.x, disk.test.x[:])


@pytest.mark.slow
def test_ddp_on_disk_storage_matches_one_process(tmp_path):
    root = photos(tmp_path / "pics", n=48)
    cfg = ["dataset=image_folder", f"dataset.root={root}", "dataset.size=8", f"dataset.cache_dir={tmp_path / 'c'}",
           "dataset.storage=disk", "model=mlp", "model.hidden=[16]", "train.epochs=2", "train.batch_size=9",
           "frames.probe_size=4", "eval.quality=false", "device=cpu"]
    single = tmp_path / "single"
    aexp("train", *cfg, f"hydra.run.dir={single}")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    ddp = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "aexp.cli", "train", *cfg, f"hydra.run.dir={ddp}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wa, wb = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (single, ddp))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)


def test_evaluation_reads_through_the_storage_and_agrees_across_modes(tmp_path):
    import json
    root = photos(tmp_path / "pics")
    reports = {}
    for mode in ("device", "disk"):
        run = tmp_path / mode
        aexp("train", "dataset=image_folder", f"dataset.root={root}", "dataset.size=8",
             f"dataset.cache_dir={tmp_path / 'cache'}", f"dataset.storage={mode}", "model=mlp",
             "model.hidden=[16]", "train.epochs=1", "train.batch_size=8", "frames.probe_size=4",
             "eval.classifier.epochs=1", f"eval.classifier.cache_dir={tmp_path / mode / 'clf'}",
             "train.threads=1", f"hydra.run.dir={run}")
        reports[mode] = json.loads((run / "eval.json").read_text())
    a, b = reports["device"], reports["disk"]
    assert a["reconstruction"] == b["reconstruction"] and a["classifier"]["accuracy_reconstruction"] \
        == b["classifier"]["accuracy_reconstruction"]
    assert a["quality"]["reconstruction"]["fid_classifier"] == pytest.approx(
        b["quality"]["reconstruction"]["fid_classifier"], rel=1e-4)


def test_a_run_saved_before_storage_existed_resumes_and_skip_bad_still_counts():
    from aexp.errors import ConfigError
    from aexp.run.resume import check_same_config, differences
    old = {"dataset": {"_target_": "aexp.data.image_folder", "root": "/p", "cache": True, "cache_dir": None}}
    now = {"dataset": {**old["dataset"], "storage": "disk", "memory_budget": 2.0, "workers": 4,
                       "skip_bad": False, "cache_dir": "/elsewhere"}}
    check_same_config(old, now, "old")                   # where the images live: how, not what
    assert differences(old, now) == []
    with pytest.raises(ConfigError, match="differs at dataset.skip_bad"):   # which images: what
        check_same_config(old, {"dataset": {**now["dataset"], "skip_bad": True}}, "old")


def die(*args):
    os._exit(1)                 # a decoding worker killed (the OOM killer, say)


def test_a_decoding_worker_that_dies_is_one_line_and_leaves_no_cache(tmp_path, monkeypatch):
    root, cache = photos(tmp_path / "pics", n=2 * decode.CHUNK + 3), tmp_path / "cache"
    monkeypatch.setattr(decode, "_decode_chunk", die)      # (forked workers see it too)
    with pytest.raises(DataError, match=r"a decoding worker died .*dataset.workers \(was 2\)"):
        image_folder(str(root), size=8, cache_dir=str(cache), workers=2)
    assert not [p for p in cache.iterdir() if p.suffix in (".npy", ".tmp")]
