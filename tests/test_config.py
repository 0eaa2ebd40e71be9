"""Every option of every config group composes and instantiates."""
import pytest
import torch

from aexp.data import Data, Split
from aexp.models import Output, call
from aexp.assemble import build_schedule
from aexp.assemble import build, build_model, check_config
from aexp.run.steps import preflight
from conftest import options

GROUPS = ("model", "loss", "dataset", "optimizer", "schedule")


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no options"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    assert cfg[group]["_target_"]
    check_config(cfg)


def _data_for(cfg) -> Data:
    """Tiny data of the shape a model is meant for: 3-value vectors or 1x28x28 images."""
    if cfg.model.get("in_features") == 3:
        split = lambda n: Split(torch.rand(n, 3))
        return Data("colors", "colors", split(8), split(4), split(4))
    split = lambda n: Split(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8),
                            torch.arange(n) % 10)
    return Data("tiny", "image", split(8), split(4), split(4), num_classes=10)


@pytest.mark.parametrize("model", options("model"))
def test_model_builds_and_trains_a_step(compose_cfg, model):
    cfg = compose_cfg([f"model={model}"])
    data = _data_for(cfg)
    net = build_model(cfg.model, data)   # (a conditional model gets the classes)
    loss_fn = build(cfg.loss)
    preflight(net, loss_fn, data)
    x = data.train.x[:4].float() / (255 if data.kind == "image" else 1)
    out = call(net, x, data.train.y[:4] if data.train.y is not None else None)
    assert isinstance(out, Output) and out.x_hat.shape == x.shape
    opt = build(cfg.optimizer, params=net.parameters())
    loss = loss_fn(out, x, x, net)["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("schedule", options("schedule"))
def test_schedule_builds(compose_cfg, schedule):
    cfg = compose_cfg([f"schedule={schedule}"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    # schedules stepped per batch get the run's length, as in training
    assert build_schedule(cfg.schedule, opt, total_steps=10) is not None


def test_vae_model_selects_vae_loss_unless_overridden(compose_cfg):
    assert set(compose_cfg(["model=vae"]).loss.terms) == {"recon", "kl"}
    assert set(compose_cfg(["model=vae", "loss=mse"]).loss.terms) == {"mse"}


def test_color_model_on_images_fails_clearly(compose_cfg):
    from aexp.errors import ConfigError
    cfg = compose_cfg(["model=linear"])
    data = _data_for(compose_cfg(["model=mlp"]))
    with pytest.raises(ConfigError, match="expects 3 input features"):
        build(cfg.model, in_shape=data.in_shape, out_shape=data.out_shape)


def test_default_run_and_sweep_folders_end_in_a_tag_drawn_once_per_run():
    """Two runs started in the same second must not share (and overwrite) one folder."""
    import re

    from hydra import compose, initialize_config_dir

    from aexp.assemble import conf_dir
    dirs = []
    for _ in range(3):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", return_hydra_config=True)
        run, sweep = str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)
        assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d_[0-9a-f]{4}", run), run
        assert run == str(cfg.hydra.run.dir)                        # drawn once, then cached
        assert sweep.startswith("multirun/") and sweep.rsplit("_", 1)[1] == run.rsplit("_", 1)[1]
        dirs.append(run.rsplit("_", 1)[1])
    assert len(set(dirs)) > 1          # each run draws its own (all three equal: p = 2**-32)
