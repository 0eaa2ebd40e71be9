"""`aexp export`: every model option exports to safetensors, ONNX and pt2, and what comes out
reproduces the model: ONNX Runtime and the loaded pt2 programs within 1e-5 at a batch size that
is neither the traced one nor the command's own check, safetensors bit for bit. Once per model
on tiny models built from config (no training: fast), once through the CLI on a trained run
folder. A missing package, a crafted file and a foreign file are refused in one line."""
import contextlib
import io
import json
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import aexp
from aexp.assemble import build
from aexp.cli import main
from aexp.errors import CheckpointError, ConfigError
from aexp.report import export
from conftest import options, run_cli

# model option -> (data shape it takes, overrides making it tiny)
MODELS = {
    "linear": ((3,), []),
    "mlp": ((1, 8, 8), ["model.hidden=[16]"]),
    "overcomplete": ((1, 28, 28), []),
    "vae": ((1, 8, 8), ["model.hidden=[16]"]),
    "cvae": ((1, 8, 8), ["model.hidden=[16]"]),   # its graphs take the labels as a second input
    "hvae": ((1, 8, 8), ["model.hidden1=[16]", "model.latent1=4", "model.hidden2=[8]", "model.latent2=2"]),
    "conv": ((1, 9, 9), ["model.channels=[4,8]", "model.upsample=shuffle"]),   # odd sides too
    "conv_vae": ((3, 8, 8), ["model.channels=[4,8]", "model.latent_dim=3"]),
    "vqvae": ((1, 8, 8), ["model.channels=[4,8]", "model.codebook.size=8", "model.codebook.dim=2"]),
    "fsqvae": ((1, 8, 8), ["model.channels=[4,8]", "model.quantizer.levels=[3,3]"]),
    "pooling_cnn": ((1, 8, 8), ["model.width=4", "model.pooling=1"]),
    "baseline32": ((1, 32, 32), ["model.channels=[4,4,4]", "model.latent_dim=5"]),
    "resnet": ((1, 32, 32), ["model.decoder_channels=[8,8,8,8]", "model.upsample=transpose"]),
    "resconv": ((1, 9, 7), ["model.channels=[4,8]"]),   # odd sides: sizes recorded per input
    "resconv_vae": ((3, 8, 8), ["model.channels=[4,8]", "model.latent_channels=2"]),
}
CLASSES = {"cvae": 3}   # a conditional model's number of classes (the data's, in a run)
BATCH = 7   # neither export.EXAMPLE nor export.CHECK: the batch axis really is dynamic


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on shared cores: one torch thread is several times faster than the default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_model_option_is_covered():
    assert set(MODELS) == set(options("model"))


def tiny_model(compose_cfg, name):
    """The model option `name`, small, with BatchNorm statistics that are not the identity (so
    a graph normalising with batch statistics, training mode, would not match)."""
    shape, overrides = MODELS[name]
    torch.manual_seed(0)
    classes = {"num_classes": CLASSES[name]} if name in CLASSES else {}
    model = build(compose_cfg([f"model={name}", *overrides]).model, in_shape=shape, out_shape=shape,
                  **classes)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    return model, shape


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_exports_to_every_format(name, compose_cfg, tmp_path):
    model, shape = tiny_model(compose_cfg, name)
    x = torch.rand(BATCH, *shape)
    labels = torch.arange(BATCH) % CLASSES[name] if name in CLASSES else None
    given = () if labels is None else (labels,)   # a conditional model's second input
    with torch.no_grad():
        z = model.encode(x, *given)
        want = {"encoder": z, "decoder": model.decode(z, *given)}
    inputs = {"encoder": (x, *given), "decoder": (z, *given)}

    export.to_onnx(model, x[:export.CHECK], tmp_path, None if labels is None else labels[:export.CHECK])
    for part in want:
        session = onnxruntime.InferenceSession(str(tmp_path / f"{part}.onnx"),
                                               providers=["CPUExecutionProvider"])
        feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs[part])}
        assert len(feed) == len(inputs[part])
        (got,) = session.run(None, feed)
        np.testing.assert_allclose(got, want[part].numpy(), atol=1e-5, rtol=1e-5, err_msg=f"{name} {part}.onnx")

    export.to_pt2(model, x[:export.CHECK], tmp_path, None if labels is None else labels[:export.CHECK])
    for part in want:
        program = torch.export.load(tmp_path / f"{part}.pt2").module()
        with torch.no_grad():
            torch.testing.assert_close(program(*inputs[part]), want[part], atol=1e-5, rtol=1e-5)

    meta = {"model": {"_target_": "ignored here"}, "in_shape": list(shape), "out_shape": list(shape)}
    export.to_safetensors(model, meta, tmp_path)
    back = load_file(tmp_path / "model.safetensors")
    state = model.state_dict()
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained conv run on the built-in digits (BatchNorm statistics of real data)."""
    run = tmp_path_factory.mktemp("export") / "run"
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["train", "model=conv", "model.channels=[4,8]", "dataset=digits", "train.epochs=1",
                     "train.threads=1", "frames.enabled=false", "eval.enabled=false",
                     f"hydra.run.dir={run}"])
    assert code == 0, err.getvalue()
    return run


def test_cli_export_of_a_run_reproduces_its_model(trained, tmp_path, capsys):
    run = aexp.load_run(trained)
    x, _ = run.data.batch(run.data.test, torch.arange(BATCH))
    model = run.model
    with torch.no_grad():
        z = model.encode(x)
        y = model.decode(z)

    code, err = run_cli(["export", trained, "--format", "onnx", "--out", tmp_path / "onnx"], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert info["files"] == ["decoder.onnx", "encoder.onnx"] and info["code_shape"] == [8 * 2 * 2]
    assert info["in_shape"] == [1, 8, 8] and info["checkpoint"] == "best" and info["epoch"] == 1
    for part, t, want in (("encoder", x, z), ("decoder", z, y)):
        session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / f"{part}.onnx"))
        (got,) = session.run(None, {session.get_inputs()[0].name: t.contiguous().numpy()})
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-5)
    assert [i.name for i in session.get_inputs()] == ["z"]
    assert session.get_inputs()[0].shape[0] == "batch"   # dynamic, by name

    code, err = run_cli(["export", trained, "--format", "pt2", "--checkpoint", "last"], capsys)
    assert code == 0, err
    out = trained / "export" / "pt2"   # the default folder
    for part, t, want in (("encoder", x, z), ("decoder", z, y)):
        with torch.no_grad():
            got = torch.export.load(out / f"{part}.pt2").module()(t)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert json.loads((out / "export.json").read_text())["checkpoint"] == "last"

    code, err = run_cli(["export", trained, "--format", "safetensors", "--out", tmp_path / "st"], capsys)
    assert code == 0, err
    path = tmp_path / "st" / "model.safetensors"
    rebuilt = aexp.load_safetensors(path)
    saved = run.state["model"]   # the checkpoint's tensors, exactly
    assert set(rebuilt.state_dict()) == set(saved)
    for k, v in rebuilt.state_dict().items():
        assert v.dtype == saved[k].dtype and torch.equal(v, saved[k]), k
    with torch.no_grad():
        assert torch.equal(rebuilt.decode(z), y)
    with safe_open(str(path), "pt") as f:   # safetensors alone: the config is JSON metadata
        meta = f.metadata()
    assert json.loads(meta["model"])["_target_"] == "aexp.models.conv.ConvAE"
    assert json.loads(meta["in_shape"]) == [1, 8, 8] and json.loads(meta["config"])["dataset"]["test_size"] == 360


@pytest.mark.parametrize("fmt,module", [("onnx", "onnxscript"), ("safetensors", "safetensors")])
def test_a_missing_package_is_one_line(fmt, module, trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)   # what an install without it looks like
    code, err = run_cli(["export", trained, "--format", fmt, "--out", tmp_path], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == (f"aexp: error: --format {fmt} needs {module}, which is not installed: "
                        f"pip install 'aexp[export]'")
    assert not any(tmp_path.iterdir())


def test_load_safetensors_refuses_crafted_and_foreign_files(tmp_path):
    marker = tmp_path / "PWNED"
    evil = {"format": export.SAFETENSORS_FORMAT, "in_shape": "[3]", "out_shape": "[3]",
            "model": json.dumps({"_target_": "os.system", "_args_": [f"touch {marker}"]})}
    save_file({"w": torch.zeros(2)}, tmp_path / "evil.safetensors", metadata=evil)
    with pytest.raises(ConfigError, match="names 'os.system', which is not one of aexp's own targets.*--trust"):
        aexp.load_safetensors(tmp_path / "evil.safetensors")
    assert not marker.exists()
    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="is not a model exported by aexp"):
        aexp.load_safetensors(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError, match="cannot read"):
        aexp.load_safetensors(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        aexp.load_safetensors(tmp_path / "missing.safetensors")
