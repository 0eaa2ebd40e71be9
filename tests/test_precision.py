"""bf16 on the CPU (`train.precision`): every model config trains a few steps under bf16 autocast
with a finite loss close to fp32's; `auto` follows the CPU's flags (read from /proc/cpuinfo,
replaced here) and the model's size; the precision a run trains in is recorded in its folder
(run_info.json) and kept by its resume, whatever machine resumes it; and precision never
un-finishes a run or blocks its resume."""
import json

import pytest
import torch

from aexp.assemble import build, build_loss
from aexp.models import call
from aexp.run import precision as prec
from aexp.run.steps import autocast
from conftest import make_mnist, options, run_cli

CPU = torch.device("cpu")
AMX = {"model": "test CPU", "amx_bf16": True, "avx512_bf16": True}
AVX512 = {"model": "test CPU", "amx_bf16": False, "avx512_bf16": True}
NONE = {"model": "test CPU", "amx_bf16": False, "avx512_bf16": False}

# model option -> (overrides that keep it small, input shape, target shape)
TINY = {
    "linear": ([], (3,), (3,)),
    "mlp": (["model.hidden=[32]"], (1, 28, 28), (1, 28, 28)),
    "vae": (["model.hidden=[32]"], (1, 28, 28), (1, 28, 28)),
    "cvae": (["model.hidden=[32]"], (1, 28, 28), (1, 28, 28)),
    "hvae": (["model.hidden1=[32]", "model.latent1=4", "model.hidden2=[8]"], (1, 28, 28), (1, 28, 28)),
    "overcomplete": ([], (1, 28, 28), (1, 28, 28)),
    "conv": (["model.channels=[4,8]"], (1, 28, 28), (1, 28, 28)),
    "conv_vae": (["model.channels=[4,8]", "model.latent_dim=4"], (1, 28, 28), (1, 28, 28)),
    "pooling_cnn": (["model.width=4", "model.pooling=2"], (1, 16, 16), (2, 16, 16)),
    "baseline32": (["model.channels=[4,8]", "model.grid=[8,4]", "model.latent_dim=16"], (1, 16, 16), (1, 16, 16)),
    "resnet": (["model.decoder_channels=[8,8,8,8]"], (3, 32, 32), (3, 32, 32)),
    "vqvae": (["model.channels=[4,8]", "model.codebook.size=8", "model.codebook.dim=4"], (1, 28, 28), (1, 28, 28)),
    "fsqvae": (["model.channels=[4,8]", "model.quantizer.levels=[3,3]"], (1, 28, 28), (1, 28, 28)),
    "resconv": (["model.channels=[4,8]"], (1, 28, 28), (1, 28, 28)),
    "resconv_vae": (["model.channels=[4,8]", "model.latent_channels=2"], (1, 28, 28), (1, 28, 28)),
}
STEPS = 4
BATCH = {"resnet": 2}   # samples per step (else 8): a ResNet-18 encoder is big even at 32x32
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2% per value); after a few Adam steps
# the two copies' losses stay within this (the largest seen here: 0.6%, the VQ-VAE).
TOLERANCE = 0.03


def test_every_model_config_is_covered():
    assert set(TINY) == set(options("model"))


def _losses(compose_cfg, name, precision):
    overrides, in_shape, out_shape = TINY[name]
    cfg = compose_cfg([f"model={name}", *overrides])
    torch.manual_seed(0)
    classes = {"num_classes": 10} if name == "cvae" else {}   # a conditional model's, from the data
    model = build(cfg.model, in_shape=in_shape, out_shape=out_shape, **classes)
    loss_fn, opt = build_loss(cfg.loss, data_size=64), build(cfg.optimizer, params=model.parameters())
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(STEPS, BATCH.get(name, 8), *in_shape, generator=gen)
    labels = torch.arange(BATCH.get(name, 8)) % 10
    losses = []
    for s in range(STEPS):
        y = x[s] if in_shape == out_shape else x[s].expand(-1, out_shape[0], -1, -1)
        with autocast(precision, CPU):
            loss = loss_fn(call(model, x[s], labels), x[s], y, model)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("name", sorted(TINY))
def test_bf16_trains_every_model_close_to_fp32(compose_cfg, name):
    fp32, bf16 = _losses(compose_cfg, name, "fp32"), _losses(compose_cfg, name, "bf16")
    assert all(torch.isfinite(torch.tensor(bf16)))
    for a, b in zip(fp32, bf16):
        assert abs(b - a) <= TOLERANCE * abs(a), (name, fp32, bf16)


@pytest.mark.parametrize("info, flops, expected", [
    (AMX, 3e8, "bf16"), (AMX, 1e8, "fp32"), (AMX, None, "fp32"), (AVX512, 3e8, "fp32"), (NONE, 3e8, "fp32")])
def test_auto_on_the_cpu_follows_amx_and_model_size(info, flops, expected):
    got, why = prec.resolve("auto", CPU, lambda: flops, info=info)
    assert got == expected and why.startswith("auto")


def test_auto_on_the_cpu_keeps_fp32_at_two_threads_and_says_how_to_get_bf16(monkeypatch):
    """Whatever the waits (so one command trains in one arithmetic whatever the load); the hint
    names 1 thread where the waits sleep, and bf16 at these threads where they spin."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    got, why = prec.resolve("auto", CPU, lambda: 3e8, info=AMX, threads=2)
    assert got == "fp32" and "train.threads=1 train.precision=bf16" in why
    monkeypatch.delenv("OMP_WAIT_POLICY")
    got, why = prec.resolve("auto", CPU, lambda: 3e8, info=AMX, threads=2)
    assert got == "fp32" and "spinning waits" in why and why.endswith(": train.precision=bf16")
    assert prec.resolve("auto", CPU, lambda: 3e8, info=AMX, threads=1)[0] == "bf16"


def test_explicit_and_recorded_precision_win():
    assert prec.resolve("fp32", CPU, lambda: 1e9, info=AMX)[0] == "fp32"
    assert prec.resolve("bf16", CPU, None, info=NONE)[0] == "bf16"
    # auto keeps what the run started in, on any CPU, and never counts FLOPs for it
    assert prec.resolve("auto", CPU, None, recorded="bf16", info=NONE) == ("bf16", "auto: as the run started")
    assert prec.resolve("auto", CPU, lambda: 1e9, recorded="fp32", info=AMX)[0] == "fp32"
    assert "trained in bf16 before" in prec.resolve("fp32", CPU, None, recorded="bf16")[1]
    assert prec.resolve("auto", torch.device("cuda"), None, info=NONE)[0] == "bf16"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx512_bf16 amx_tile amx_bf16\n\n"
                       "processor\t: 1\nmodel name\t: Some Xeon\nflags\t\t: fpu\n")
    monkeypatch.setattr(prec, "CPUINFO", cpuinfo)
    assert prec.cpu_info() == {"model": "Some Xeon", "amx_bf16": True, "avx512_bf16": True}
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n")
    assert prec.cpu_info() == {"model": "AMD EPYC", "amx_bf16": False, "avx512_bf16": False}
    monkeypatch.setattr(prec, "CPUINFO", tmp_path / "absent")
    assert prec.cpu_info()["amx_bf16"] is False


# an MLP of 1.3 MFLOP per sample (784-400-2 each way) at batch 200 (250 MFLOP a step), 1 thread:
# auto picks bf16 on an AMX-BF16 CPU
RUN = ["model=mlp", "model.hidden=[400]", "loss=bce", "dataset=mnist", "dataset.val_size=20",
       "train.batch_size=200", "train.threads=1", "frames.enabled=false", "eval.enabled=false"]


def _info(run_dir):
    return json.loads((run_dir / "run_info.json").read_text())


def test_auto_run_records_bf16_and_its_resume_keeps_it_on_another_cpu(tmp_path, capsys, monkeypatch):
    root, run = make_mnist(tmp_path / "data", n_train=300), tmp_path / "run"
    args = ["train", *RUN, f"dataset.root={root}", f"hydra.run.dir={run}"]
    monkeypatch.setattr(prec, "cpu_info", lambda: AMX)
    code, err = run_cli([*args, "train.epochs=1"], capsys)
    assert code == 0, err
    assert "bf16 (auto: AMX-BF16 CPU" in err
    info = _info(run)
    assert info["precision"] == "bf16" and info["sessions"][0]["cpu"] == AMX
    monkeypatch.setattr(prec, "cpu_info", lambda: NONE)      # resumed on a CPU without AMX
    code, err = run_cli([*args, "train.epochs=2"], capsys)
    assert code == 0, err
    assert "bf16 (auto: as the run started)" in " ".join(err.split())
    info = _info(run)
    assert [s["precision"] for s in info["sessions"]] == ["bf16", "bf16"]
    assert info["sessions"][1]["cpu"] == NONE
    # another precision given on the command line: neither refused nor a different finished run
    code, err = run_cli([*args, "train.epochs=2", "train.precision=fp32"], capsys)
    assert code == 0 and "already holds this finished run: skipped" in " ".join(err.split())


def test_a_run_from_before_run_info_resumes_in_the_old_auto(tmp_path, capsys, monkeypatch):
    """Runs saved before the CPU rule trained `auto` in fp32 on the CPU: they resume in fp32
    on an AMX-BF16 CPU too, and a stopped bf16 run resumes in bf16 (its checkpoint counts, not
    today's rule)."""
    root, run = make_mnist(tmp_path / "data", n_train=300), tmp_path / "run"
    args = ["train", *RUN, f"dataset.root={root}", f"hydra.run.dir={run}"]
    monkeypatch.setattr(prec, "cpu_info", lambda: NONE)
    assert run_cli([*args, "train.epochs=1"], capsys)[0] == 0
    assert _info(run)["precision"] == "fp32"
    (run / "run_info.json").unlink()                        # as an older aexp left it
    monkeypatch.setattr(prec, "cpu_info", lambda: AMX)
    code, err = run_cli([*args, "train.epochs=2"], capsys)
    assert code == 0, err
    assert "fp32 (auto: as the run started)" in " ".join(err.split()) and _info(run)["precision"] == "fp32"


def test_explicit_bf16_run_resumes_exactly(tmp_path, capsys):
    """A bf16 run stopped after an epoch and resumed ends with the weights of the run left alone."""
    from aexp import checkpoint
    root = make_mnist(tmp_path / "data", n_train=300)
    base = ["train", *RUN, f"dataset.root={root}", "train.precision=bf16"]
    assert run_cli([*base, "train.epochs=2", f"hydra.run.dir={tmp_path / 'whole'}"], capsys)[0] == 0
    assert run_cli([*base, "train.epochs=1", f"hydra.run.dir={tmp_path / 'split'}"], capsys)[0] == 0
    code, err = run_cli([*base, "train.epochs=2", f"hydra.run.dir={tmp_path / 'split'}"], capsys)
    assert code == 0 and "resuming from" in err
    a, b = (checkpoint.load(tmp_path / d / "checkpoints" / "last.pt") for d in ("whole", "split"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]
    assert _info(tmp_path / "split")["precision"] == "bf16"


def test_bench_precision_rows_run_and_name_the_cpu(monkeypatch):
    """`make bench --only precision`'s rows, one step of two small families (a check of the
    script, not a measurement)."""
    from conftest import ROOT
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench
    import precision as bench_precision
    monkeypatch.setattr(prec, "cpu_info", lambda: AMX)
    names = {"colours linear 3-2-3 (the default run)", "small MLP 784-64-2"}
    out = bench_precision.precision_rows(bench.compose, steps=1, warmup=0, families=names)
    assert set(out["rows"]) == names and all(r["speedup"] > 0 for r in out["rows"].values())
    text = "\n".join(bench_precision.markdown(out, None))
    assert "test CPU · amx_bf16 yes · avx512_bf16 yes" in text and "| small MLP 784-64-2 (64) |" in text
