"""`aexp sample` and `eval.samplers` through the real CLI on tiny digits runs: a fitted sampler is
stored in the run folder and read back (not refitted), samples and pictures land where the docs
say, eval.json's `samplers` section scores each beside its floor and ceiling, and what cannot
work is refused in one line."""
import json

import numpy as np
import pytest
import torch

from conftest import run_cli

TINY = ["dataset=digits", "train.epochs=2", "train.threads=1", "frames.enabled=false",
        "eval.classifier.epochs=1"]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("sample") / "vae"
    from aexp.cli import main
    assert main(["train", "model=vae", "model.latent_dim=4", "model.hidden=[32]", *TINY,
                 "eval.enabled=false", f"hydra.run.dir={run}"]) == 0
    return run


def test_sample_writes_the_sampler_samples_picture_and_scores(vae_run, capsys):
    code, err = run_cli(["sample", vae_run, "--sampler", "gmm", "k=3", "-n", "120"], capsys)
    assert code == 0, err
    assert (vae_run / "samplers" / "gmm.pt").is_file()
    assert (vae_run / "pictures" / "samples_gmm.png").is_file()
    samples = np.load(vae_run / "samplers" / "gmm_samples.npy")
    assert samples.shape == (120, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    section = json.loads((vae_run / "eval.json").read_text())["samplers"]
    entry = section["gmm"]
    assert entry["code_dim"] == 4 and entry["images"] == 120 and entry["k"] == 3
    assert 0 <= entry["precision"] <= 1 and 0 <= entry["recall"] <= 1
    ceiling, floor = section["baseline"]["train_images"], section["baseline"]["pixel_gaussian"]
    # two draws of real digits: near 1/1, and closer in classifier features than anything drawn
    assert ceiling["precision"] > 0.8 and ceiling["recall"] > 0.8
    if "fid_classifier" in ceiling:
        assert ceiling["fid_classifier"] < floor["fid_classifier"]
    # a second call reads the stored sampler (fitted on this checkpoint, same settings)
    stamp = (vae_run / "samplers" / "gmm.pt").stat().st_mtime_ns
    code, err = run_cli(["sample", vae_run, "--sampler", "gmm", "k=3", "-n", "120"], capsys)
    assert code == 0, err
    assert (vae_run / "samplers" / "gmm.pt").stat().st_mtime_ns == stamp
    assert np.array_equal(np.load(vae_run / "samplers" / "gmm_samples.npy"), samples)
    # other settings: fitted anew
    code, err = run_cli(["sample", vae_run, "--sampler", "gmm", "k=2", "-n", "120"], capsys)
    assert code == 0, err
    assert torch.load(vae_run / "samplers" / "gmm.pt", weights_only=True)["settings"]["k"] == 2


def test_a_vae_samples_its_own_prior_and_keeps_other_samplers(vae_run, capsys):
    code, err = run_cli(["sample", vae_run, "--sampler", "prior", "-n", "50"], capsys)
    assert code == 0, err
    section = json.loads((vae_run / "eval.json").read_text())["samplers"]
    assert "N(0, I)" in section["prior"]["from"] and "gmm" in section
    for name in ("two_stage", "flow"):                     # the trained ones, a few steps each
        code, err = run_cli(["sample", vae_run, "--sampler", name, "steps=30", "-n", "50"], capsys)
        assert code == 0, err
        entry = json.loads((vae_run / "eval.json").read_text())["samplers"][name]
        assert entry["code_dim"] == 4 and np.isfinite(entry["train_log_likelihood"])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")   # torch's, on the garbage bytes
def test_crafted_sampler_file_and_impossible_samplers_are_refused_in_one_line(vae_run, capsys, tmp_path):
    code, err = run_cli(["sample", vae_run, "--sampler", "vamp"], capsys)
    assert code == 2 and "VampPrior" in err and err.count("\n") == 1
    code, err = run_cli(["sample", vae_run, "--sampler", "magic"], capsys)
    assert code == 2 and "unknown sampler 'magic'" in err
    code, err = run_cli(["sample", vae_run, "--sampler", "gmm", "k=0"], capsys)
    assert code == 2 and err.count("\n") == 1
    (vae_run / "samplers").mkdir(exist_ok=True)
    (vae_run / "samplers" / "normal.pt").write_bytes(b"\x80\x04garbage")
    code, err = run_cli(["sample", vae_run, "--sampler", "normal"], capsys)
    assert code == 2 and "cannot load sampler file" in err and err.count("\n") == 1
    (vae_run / "samplers" / "normal.pt").unlink()


def test_eval_scores_the_samplers_it_is_given_and_a_plain_ae_has_no_prior(tmp_path, capsys):
    run = tmp_path / "ae"
    code, err = run_cli(["train", "model=mlp", "model.latent_dim=3", *TINY, "eval.samplers=[normal,prior]",
                         "eval.sampler_images=60", "eval.nll_samples=0", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err
    report = json.loads((run / "eval.json").read_text())
    assert set(report["samplers"]) >= {"normal", "baseline", "reference"}
    # a sampler this run cannot have is skipped with its reason: the training succeeded
    assert "no prior to sample" in report["samplers"]["prior"]["skipped"]
    assert (run / "pictures" / "samples_normal.png").is_file()
    code, err = run_cli(["sample", run, "--sampler", "prior"], capsys)
    assert code == 2 and "no prior to sample" in err
    code, err = run_cli(["train", "model=mlp", "eval.samplers=[nope]", *TINY, f"hydra.run.dir={tmp_path / 'x'}"], capsys)
    assert code == 2 and "eval.samplers: unknown sampler 'nope'" in err


def test_eval_keeps_the_sampler_scores_of_its_checkpoint_and_survives_a_garbled_eval_json(vae_run, capsys):
    for name in ("normal", "prior"):
        code, err = run_cli(["sample", vae_run, "--sampler", name, "-n", "50"], capsys)
        assert code == 0, err
    drawn = json.loads((vae_run / "eval.json").read_text())["samplers"]
    assert {"normal", "prior"} <= set(drawn)
    code, err = run_cli(["eval", vae_run, "--checkpoint", "best", "--nll-samples", "0", "--no-classifier",
                         "--no-pictures"], capsys)
    assert code == 0, err
    report = json.loads((vae_run / "eval.json").read_text())
    assert report["samplers"] == drawn and "notes" not in report      # rewritten, the scores kept
    # scores drawn by another checkpoint's decoder are left out, with a note saying so
    stale = {**drawn, "normal": {**drawn["normal"], "run_epoch": drawn["normal"]["run_epoch"] + 7}}
    (vae_run / "eval.json").write_text(json.dumps({**report, "samplers": stale}))
    code, err = run_cli(["eval", vae_run, "--nll-samples", "0", "--no-classifier", "--no-pictures"], capsys)
    assert code == 0, err
    report = json.loads((vae_run / "eval.json").read_text())
    assert "normal" not in report["samplers"] and "prior" in report["samplers"]
    assert any("left out: normal" in n for n in report["notes"])
    # a garbled eval.json (a run folder may come from anyone) is set aside with a note
    for garbage in ("{not json", "[1, 2]", "[" * 100000, '{"samplers": {"x": {"run_epoch": [[[]]]}}}'):
        (vae_run / "eval.json").write_text(garbage)
        code, err = run_cli(["eval", vae_run, "--nll-samples", "0", "--no-classifier", "--no-pictures"], capsys)
        assert code == 0, err
        report = json.loads((vae_run / "eval.json").read_text())
        assert "samplers" not in report and report["reconstruction"]["mse"] >= 0
    (vae_run / "eval.json").write_text("{not json")                 # and to aexp sample
    code, err = run_cli(["sample", vae_run, "--sampler", "normal", "-n", "50"], capsys)
    assert code == 0, err
    assert set(json.loads((vae_run / "eval.json").read_text())["samplers"]) >= {"normal", "baseline"}
