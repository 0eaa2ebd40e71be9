"""`aexp check-model TARGET [overrides]`: the model contract (aexp.models.base) checked on any
model before an hour of training: a model option (conf/model/NAME.yaml, aexp's or the open
project's) or a class by its dotted name, built for the shapes of the run's dataset (the
default `colors`, or `dataset=...`). Each check prints one line: `ok` with what it saw, `FAIL`
with why, `skip` when an earlier failure leaves nothing to check; any failure exits 2.

The checks: it builds (an aexp Autoencoder), encode and decode give float tensors of the right batch
and output shape (a conditional model's, given the batch's labels, heeding them), forward gives
Output(x_hat, z, extras), nothing is NaN/inf, the run's loss backpropagates to finite gradients,
two builds under the seed are equal and an eval-mode forward repeats exactly, the state dict
round-trips through a checkpoint, a variational model's mu/logvar fit its code, a bounded or
discrete code keeps its promise, and encoder and decoder export as torch.export programs
(--no-export skips it)."""
import copy
import io
import sys
import tempfile
from argparse import ArgumentParser
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aexp import project
from aexp.assemble import build, build_loss, build_model, conf_dir, seed_everything
from aexp.errors import AexpError, ConfigError, one_line
from aexp.models import Autoencoder, call
from aexp.report.export import to_pt2
from aexp.run.steps import preflight


class Skip(Exception):   # a check that does not apply (not variational, ...): printed, not failed
    pass


def options(group: str) -> set:
    """The options of a config group, aexp's and the open project's."""
    opened = project.current()
    folders = [conf_dir() / group] + ([opened.conf / group] if opened and opened.conf else [])
    return {p.stem for f in folders for p in f.glob("*.yaml")}


def compose_for(target: str, overrides: list[str]):
    """The run config with `target` as its model: an option name, or a class whose settings are
    the `model.*` overrides (on an empty model group)."""
    is_option = target in options("model")
    if not is_option and "." not in target:
        raise ConfigError(f"{target} is neither a model option ({', '.join(sorted(options('model')))}) "
                          f"nor a class (package.module.Class)")
    mine = [o for o in overrides if o.lstrip("+~").startswith("model.")]
    rest = [o for o in overrides if o not in mine]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                *([f"model={target}", *mine] if is_option else rest), *(rest if is_option else []),
                *project.searchpath_override()])
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()
    if not is_option:   # a class: its settings from model.key=value only
        settings = OmegaConf.from_dotlist([o.lstrip("+~")[len("model."):] for o in mine])
        cfg.model = OmegaConf.merge({"_target_": target}, settings)
    return cfg


def same(a, b) -> float | None:
    """None when tensors `a` and `b` are equal, else their largest difference (inf: shapes)."""
    if a.shape != b.shape:
        return float("inf")
    if torch.allclose(a.float(), b.float(), rtol=0, atol=0, equal_nan=True):   # (NaN: the finite check's)
        return None
    return float((a.float() - b.float()).nan_to_num(0).abs().max())


shape = lambda t: f"[{', '.join(map(str, t.shape))}] {str(t.dtype).replace('torch.', '')}"


class Checks:
    """The checks in order, sharing the data batch, the built model and what earlier ones saw."""

    def __init__(self, cfg, batch: int, export: bool):
        self.cfg, self.export = cfg, export
        self.data = build(cfg.dataset).prepare(build(cfg.task), build(cfg.corruption))
        idx = torch.arange(min(batch, len(self.data.train)))
        self.x, self.y = self.data.batch(self.data.train, idx)
        self.labels = self.data.train.labels(idx)
        self.b, self.out_shape, self.seen = len(idx), tuple(self.data.out_shape), {}

    def fresh(self, seed: int):
        seed_everything(seed)
        return build_model(self.cfg.model, self.data)   # (a conditional one gets num_classes)

    def build(self):
        self.model = self.fresh(self.cfg.seed)
        self.given = (self.labels,) if getattr(self.model, "conditional", False) else ()   # (models.call)
        if not isinstance(self.model, Autoencoder):
            raise AssertionError(f"{type(self.model).__name__} is not an aexp.models.Autoencoder "
                                 f"(subclass it: the training loop calls its start_epoch, latent_range, ...)")
        n = sum(p.numel() for p in self.model.parameters())
        return f"{type(self.model).__name__}, {n:,} parameters"

    def encode(self):
        self.model.eval()
        with torch.no_grad():
            z = self.model.encode(self.x, *self.given)
        if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.dim() < 2 or len(z) != self.b:
            raise AssertionError(f"encode(x) of a batch of {self.b} must be a float tensor [{self.b}, ...], "
                                 f"got {shape(z) if isinstance(z, torch.Tensor) else type(z).__name__}")
        self.seen["z"] = z
        return f"z {shape(z)}"

    def decode(self):
        if "z" not in self.seen:
            raise Skip("needs encode")
        with torch.no_grad():
            x_hat = self.model.decode(self.seen["z"], *self.given)
        want = (self.b, *self.out_shape)
        if not isinstance(x_hat, torch.Tensor) or tuple(x_hat.shape) != want or x_hat.dtype != self.y.dtype:
            got = shape(x_hat) if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__
            raise AssertionError(f"decode(z) must be the target's shape and dtype "
                                 f"[{', '.join(map(str, want))}] {str(self.y.dtype).replace('torch.', '')}, got {got}")
        if self.given and same(x_hat, self.model.decode(self.seen["z"], (self.labels + 1) % self.model.num_classes).detach()) is None:
            raise AssertionError("decode(z, labels) gives the same output for other labels: they reach nothing")
        return f"x_hat {shape(x_hat)}" + ("; changes with the class label" if self.given else "")

    def forward(self):
        self.model.train()
        out = self.model(self.x)
        if not all(hasattr(out, k) for k in ("x_hat", "z", "extras")) or not isinstance(out.extras, dict):
            raise AssertionError(f"forward(x) must return aexp.models.Output(x_hat, z, extras: dict), "
                                 f"got {type(out).__name__}")
        want = (self.b, *self.out_shape)
        if tuple(out.x_hat.shape) != want or len(out.z) != self.b:
            raise AssertionError(f"forward(x).x_hat must be [{', '.join(map(str, want))}] and z of batch "
                                 f"{self.b}, got x_hat {shape(out.x_hat)}, z {shape(out.z)}")
        self.seen["out"] = out
        return f"Output(x_hat {shape(out.x_hat)}, z {shape(out.z)}, extras {sorted(out.extras) or '{}'})"

    def finite(self):
        self.model.eval()
        with torch.no_grad():
            out = self.model(self.x)
        tensors = {"x_hat": out.x_hat, "z": out.z, **{k: v for k, v in out.extras.items() if isinstance(v, torch.Tensor)}}
        bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise AssertionError(f"NaN or inf in {', '.join(bad)} of an eval-mode forward pass")
        return f"{', '.join(tensors)} finite"

    def backward(self):
        loss_fn = build_loss(self.cfg.loss, data_size=len(self.data.train))
        preflight(self.model, loss_fn, self.data)
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        terms = loss_fn(call(self.model, self.x, self.labels), self.x, self.y, self.model, labels=self.labels)
        if not torch.isfinite(terms["loss"]):
            raise AssertionError(f"the loss ({', '.join(loss_fn.terms)}) is {float(terms['loss'])}")
        terms["loss"].backward()
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        got = [(n, p.grad) for n, p in params if p.grad is not None]
        if not got:
            raise AssertionError("no parameter gets a gradient from the loss")
        bad = [n for n, g in got if not torch.isfinite(g).all()]
        if bad:
            raise AssertionError(f"NaN or inf gradients in {', '.join(bad[:3])}")
        none = f"; {len(params) - len(got)} get none" if len(got) < len(params) else ""
        return f"loss {float(terms['loss'].detach()):.4g} ({', '.join(loss_fn.terms)}), {len(got)} finite gradients{none}"

    def deterministic(self):
        a, b = self.fresh(self.cfg.seed), self.fresh(self.cfg.seed)
        sa, sb = a.state_dict(), b.state_dict()
        differ = [k for k in sa if k not in sb or same(sa[k], sb[k]) is not None]
        if differ or set(sb) - set(sa):
            raise AssertionError(f"two builds under seed {self.cfg.seed} differ ({', '.join(differ[:3])})")
        a.eval()
        with torch.no_grad():
            one, two = a(self.x).x_hat, a(self.x).x_hat
        if (d := same(one, two)) is not None:
            raise AssertionError(f"two eval-mode forward passes on the same batch differ (by up to {d:.3g})")
        a.train()
        outs = []
        for _ in range(2):   # each from the same state: a training pass may update some (EMA codebooks)
            torch.manual_seed(self.cfg.seed)
            with torch.no_grad():
                outs.append(copy.deepcopy(a)(self.x).x_hat)
        if (d := same(*outs)) is not None:
            raise AssertionError(f"two training-mode forward passes under the same seed differ (by up to {d:.3g})")
        return f"same weights from seed {self.cfg.seed}; forward passes repeat exactly"

    def state_dict(self):
        buffer = io.BytesIO()
        torch.save(self.model.state_dict(), buffer)
        buffer.seek(0)
        other = self.fresh(self.cfg.seed + 1)
        other.load_state_dict(torch.load(buffer, weights_only=True))
        self.model.eval(), other.eval()
        with torch.no_grad():
            if (d := same(self.model(self.x).x_hat, other(self.x).x_hat)) is not None:
                raise AssertionError(f"a model loaded from the state dict computes otherwise (by up to "
                                     f"{d:.3g}): is some state outside parameters and buffers?")
        return f"{len(self.model.state_dict())} tensors saved and loaded; same outputs"

    def variational(self):
        if "out" not in self.seen:
            raise Skip("needs forward")
        extras = self.seen["out"].extras
        if not {"mu", "logvar"} & set(extras):
            raise Skip("no mu/logvar in forward's extras: not variational")
        z = self.seen["out"].z
        for k in ("mu", "logvar"):
            if k not in extras or extras[k].shape != z.shape:
                got = shape(extras[k]) if k in extras else "missing"
                raise AssertionError(f"extras['{k}'] must be the code's shape {shape(z)}, got {got}")
        self.model.eval()
        with torch.no_grad():
            mu, z_eval = self.model(self.x).extras["mu"], self.model.encode(self.x)
        if (d := same(mu, z_eval)) is not None:
            raise AssertionError(f"encode(x) must be the posterior mean mu in eval mode (differs by up to {d:.3g})")
        return f"mu, logvar {shape(mu)}; encode gives mu"

    def code(self):
        if "z" not in self.seen:
            raise Skip("needs encode")
        z, m, said = self.seen["z"], self.model, []
        if m.latent_range is not None:
            low, high = m.latent_range
            if z.min() < low or z.max() > high:
                raise AssertionError(f"latent_range is {m.latent_range} but codes span "
                                     f"[{float(z.min()):.3g}, {float(z.max()):.3g}]")
            said.append(f"codes within latent_range {tuple(m.latent_range)}")
        if m.codebook_size is not None:
            with torch.no_grad():
                idx = m.code_indices(self.x)
            if idx is None or len(idx) != self.b or idx.min() < 0 or idx.max() >= m.codebook_size:
                raise AssertionError(f"code_indices(x) must give indices in [0, {m.codebook_size}) per sample")
            said.append(f"code indices in [0, {m.codebook_size})")
        if not said:
            raise Skip("an unbounded, continuous code: nothing more promised")
        return "; ".join(said)

    def exports(self):
        if not self.export:
            raise Skip("--no-export")
        with tempfile.TemporaryDirectory() as tmp:
            diffs = to_pt2(self.model.to(memory_format=torch.contiguous_format), self.x.contiguous(), Path(tmp), self.labels)
        return f"encoder and decoder as torch.export programs (largest difference {max(diffs.values()):.2g})"


NEED_FORWARD = ("finite", "backward", "deterministic", "state_dict", "variational", "code", "exports")
ORDER = ("build", "encode", "decode", "forward", "finite", "backward", "deterministic", "state_dict",
         "variational", "code", "exports")


def run(cfg, batch: int = 8, export: bool = True, out=print) -> list[str]:
    """Run every check, print one line each through `out`; return the names of the failed ones."""
    checks, failed = Checks(cfg, batch, export), []
    out(f"aexp check-model {cfg.model._target_} on {checks.data.name} {tuple(checks.data.in_shape)} -> "
        f"{checks.out_shape}, a batch of {checks.b}")
    for name in ORDER:
        if name in NEED_FORWARD and {"encode", "forward"} & set(failed):   # they would fail the same way
            out(f"  skip  {name:<14}needs {' and '.join(n for n in ('encode', 'forward') if n in failed)}")
            continue
        if failed == ["build"]:
            out(f"  skip  {', '.join(ORDER[1:])}: need a built model")
            break
        try:
            out(f"  ok    {name:<14}{getattr(checks, name)()}")
        except Skip as e:
            out(f"  skip  {name:<14}{e}")
        except Exception as e:   # the user's code may raise anything: each is one line
            text = " ".join(str(e).split())[:300]
            kind = "" if isinstance(e, (AssertionError, AexpError)) else f"{type(e).__name__}: "
            out(f"  FAIL  {name:<14}{kind}{text or type(e).__name__}")
            failed.append(name)
    return failed


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="aexp check-model", description="Check that a model keeps aexp's "
                        "model contract, on a batch of the run's dataset (default colors; dataset=...).")
    ap.add_argument("target", help="a model option (conf/model/NAME.yaml, aexp's or the project's) "
                    "or a class: package.module.Class")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=digits model.latent_dim=4")
    ap.add_argument("--batch", type=int, default=8, help="samples in the checked batch (default 8)")
    ap.add_argument("--no-export", action="store_true", help="skip the torch.export check")
    args = ap.parse_args(argv)
    if args.batch < 2:
        raise ConfigError(f"--batch must be at least 2, got {args.batch}")
    torch.set_num_threads(1)   # a few small batches: more threads only wait on each other
    failed = run(compose_for(args.target, args.overrides), args.batch, not args.no_export)
    if failed:
        print(f"aexp: error: check-model: {len(failed)} of {len(ORDER)} checks failed "
              f"({', '.join(failed)})", file=sys.stderr)
        return 2
    return 0
