"""pythae's NLL recipe where aexp can follow it: `eval.nll_repeats` estimates the NLL several
times with independent importance samples on one binarised test set (the first repeat is the
number one estimate always gave), and `schedule=multistep` is torch's MultiStepLR, per epoch."""
import json
import math

import numpy as np
import torch
from omegaconf import OmegaConf

from aexp.assemble import build_schedule, conf_dir, load_run
from aexp.losses.variational import importance_log_weights
from aexp.report.likelihood import vae_likelihood
from conftest import run_cli

TINY = ["train", "dataset=digits", "model=vae", "model.hidden=[16]", "model.latent_dim=3",
        "train.epochs=1", "train.threads=1", "frames.enabled=false", "eval.enabled=false", "device=cpu"]


def test_repeats_share_the_images_differ_in_samples_and_average(tmp_path, capsys):
    from aexp.cli import main
    assert main([*TINY, f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    loaded = load_run(tmp_path / "run", device="cpu")
    ev = OmegaConf.load(conf_dir() / "config.yaml").eval
    ev.nll_samples, ev.nll_max_images, ev.nll_batch = 10, 30, 20
    one, base_one = vae_likelihood(loaded.model, loaded.data, ev, "cpu", torch.full((1, 8, 8), 0.3))
    seen = []

    def recorded(extras, x, log_px, k, chunk, generator):   # the model hook, standing in for the VAE's own
        seen.append(x.clone())
        return importance_log_weights(x, extras["mu"].float(), extras["logvar"].float(), log_px, k, chunk, generator)

    loaded.model.importance_log_weights = recorded
    ev.nll_repeats = 3
    three, base_three = vae_likelihood(loaded.model, loaded.data, ev, "cpu", torch.full((1, 8, 8), 0.3))
    values = three["nll_repeats"]
    assert three["repeats"] == 3 and len(values) == 3 and len(set(values)) == 3     # independent draws
    assert math.isclose(three["nll"], float(np.mean(values)), rel_tol=1e-12)
    assert math.isclose(three["nll_std"], float(np.std(values)), rel_tol=1e-12) and three["nll_std"] > 0
    assert values[0] == one["nll"] and "nll_repeats" not in one                   # repeat 1 = as before
    assert base_three == base_one
    # two batches (20 + 10 images), three repeats each: each batch's images the same every repeat
    assert [len(x) for x in seen] == [20, 20, 20, 10, 10, 10]
    assert all(torch.equal(seen[0], x) for x in seen[1:3]) and all(torch.equal(seen[3], x) for x in seen[4:])
    assert set(seen[0].unique().tolist()) <= {0.0, 1.0}                           # binarised
    # through the CLI: --nll-repeats, and a count below 1 refused in one line
    code, err = run_cli(["eval", tmp_path / "run", "--no-classifier", "--no-pictures", "--nll-samples", "4",
                         "--nll-max-images", "10", "--nll-repeats", "2"], capsys)
    vae = json.loads((tmp_path / "run" / "eval.json").read_text())["vae"]
    assert code == 0 and vae["repeats"] == 2 and len(vae["nll_repeats"]) == 2, err
    code, err = run_cli(["eval", tmp_path / "run", "--nll-repeats", "0"], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("aexp: error: ") and "nll_repeats" in err


def test_multistep_lr_at_given_epochs_by_hand(compose_cfg):
    cfg = compose_cfg(["schedule=multistep", "schedule.milestones=[2,4]"])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = build_schedule(cfg.schedule, optimizer, total_steps=100)
    lrs = []
    for _ in range(5):                 # the lr each epoch trains with, stepped after the epoch
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    g = 10 ** (-1 / 5)
    assert np.allclose(lrs, [1.0, 1.0, g, g, g * g])
    assert compose_cfg(["schedule=multistep"]).schedule.milestones == [200, 350, 500, 750, 1000]
