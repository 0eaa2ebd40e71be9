"""`aexp sample RUN --sampler NAME`: samples from a trained autoencoder through a sampler fitted
after training on its training codes, and how good they are (also `aexp eval`, for each name in
`eval.samplers`).

Samplers: `normal`, `gmm`, `two_stage`, `flow` (conf/sampler/<name>.yaml: the class and its
settings; report/samplers.py, report/latent_models.py), fitted on the training split's codes
(the encoder's output; a VAE's posterior means) and stored in RUN/samplers/<name>.pt; and
`prior`, the model's own prior: N(0, I) for a VAE or a WAE (nothing to fit), the PixelCNN that
`aexp prior RUN` trained for a VQ-VAE (RUN/prior/); and `vamp`, the prior of a VampPrior VAE
(loss=vamp, aexp.losses.vamp): a component k of K drawn uniformly, then z ~ q(z | u_k), the
encoder's posterior at the k-th learned pseudo-input (nothing to fit either).

Each draws `eval.sampler_images` samples (seed `eval.seed`): RUN/samplers/<name>_samples.npy
(the decoder's output, float32), RUN/pictures/samples_<name>.png (the first 64), and the
`samplers` section of eval.json (report/sample_metrics.py), beside its floor and ceiling."""
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from aexp import checkpoint, draw, trust
from aexp.assemble import allowed_targets, build, check_values, conf_dir, load_run
from aexp.errors import ArgumentParser, CheckpointError, ConfigError
from aexp.io import atomic_write
from aexp.losses.vamp import VampKL
from aexp.models import encode_with
from aexp.models.pixelcnn import PixelCNN
from aexp.report import classifier, quality, sample_metrics, samplers
from aexp.report.eval_json import merge_into_eval_json
from aexp.report.pictures import save
from aexp.report.scores import TrainViews

SPECIAL = ("prior", "vamp")   # not fitted from config: the model's own prior; VampPrior
MAX_CODES = 20000             # training codes a sampler is fitted on (a seeded subset above)


def names() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "sampler").glob("*.yaml")) + list(SPECIAL)


def table() -> dict:
    """Sampler name -> class, from aexp's own conf/sampler/ (never from a sampler file)."""
    return {p.stem: get_class(OmegaConf.load(p)._target_) for p in (conf_dir() / "sampler").glob("*.yaml")}


def check_name(name: str, run) -> None:
    if name not in names():
        raise ConfigError(f"unknown sampler {name!r}; choose from {', '.join(names())}")
    if run.data.task.name != "reconstruct":
        raise ConfigError(f"samples need a run that reconstructs its input; {run.run_dir}'s task is "
                          f"{run.data.task.name} (its decoder's output means nothing without an input)")
    if name == "vamp" and vamp_term(run) is None:
        raise ConfigError(f"--sampler vamp needs a VampPrior VAE (a run trained with loss=vamp); "
                          f"{run.run_dir} has no VampPrior term in its loss")
    if name == "prior" and run.model.codebook_size is None and not own_prior(run):
        raise ConfigError(f"{run.run_dir} is a plain autoencoder: it has no prior to sample "
                          "(fit one: --sampler normal, gmm, two_stage or flow)")


def own_prior(run) -> bool:
    """A VAE (its outputs carry mu) or a code trained towards N(0, I) by an MMD term (WAE)."""
    terms = ((run.cfg or {}).get("loss") or {}).get("terms") or {}
    mmd = any(str(t.get("_target_", "")).endswith(".MMD") for t in terms.values() if hasattr(t, "get"))
    x, _ = run.data.batch(run.data.train, torch.arange(1, device=run.data.train.x.device))
    with torch.no_grad():
        return mmd or "mu" in run.model(x).extras


def vamp_term(run):
    """The run's VampPrior KL term (its pseudo-inputs restored from the checkpoint), or None."""
    terms = getattr(run.loss_fn, "terms", {}) if run.loss_fn is not None else {}
    return next((t for t in terms.values() if isinstance(t, VampKL)), None)


@torch.no_grad()
def vamp_codes(run, n: int, gen: torch.Generator) -> tuple:
    """`n` codes from the VampPrior mixture: a uniform component k, then N(mu_k, exp(logvar_k))."""
    term = vamp_term(run)
    mu, logvar = (t.cpu() for t in term.prior_components(run.model))
    k = torch.randint(len(mu), (n,), generator=gen)
    z = mu[k] + torch.exp(0.5 * logvar[k]) * torch.randn(n, mu.shape[1], generator=gen)
    return z, {"from": f"the VampPrior: a mixture of the posteriors at {len(mu)} learned pseudo-inputs"}


@torch.no_grad()
def training_codes(run, seed: int, batch: int = 1000) -> torch.Tensor:
    """The encoder's codes [N, D] of the training split (at most MAX_CODES, a seeded subset)."""
    n = len(run.data.train)
    idx = torch.arange(n) if n <= MAX_CODES else torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:MAX_CODES]
    dev = run.data.train.x.device
    train, out = run.data.train, []
    for i in range(0, len(idx), batch):
        part = idx[i:i + batch].to(dev)
        out.append(encode_with(run.model, run.data.batch(train, part)[0], train.labels(part)).flatten(1).float().cpu())
    return torch.cat(out)


def fitted(run, name: str, overrides=(), log=print) -> tuple:
    """(the sampler NAME fitted on this run's training codes, its entry for eval.json): read from
    RUN/samplers/NAME.pt when that was fitted on this very checkpoint with these settings, else
    fitted now and stored there."""
    node = OmegaConf.merge(OmegaConf.load(conf_dir() / "sampler" / f"{name}.yaml"),
                           OmegaConf.from_dotlist(list(overrides)))
    fresh = build(node)
    path = run.run_dir / "samplers" / f"{name}.pt"
    epoch = run.state.get("epoch")
    if path.is_file():
        try:
            sampler, meta = samplers.load(path, table())
        except CheckpointError as e:
            raise CheckpointError(f"{e}; delete it to fit the sampler anew") from None
        if meta.get("epoch") == epoch and sampler.settings == fresh.settings:
            return sampler, {"file": f"samplers/{name}.pt", **meta}
    codes = training_codes(run, seed=0)
    log(f"fitting the {name} sampler on {len(codes)} training codes of {codes.shape[1]} values")
    t0 = time.perf_counter()
    fresh.fit(codes)
    meta = {"epoch": epoch, "codes": len(codes), "code_dim": codes.shape[1],
            "fit_seconds": round(time.perf_counter() - t0, 3),
            "train_log_likelihood": float(fresh.log_prob(codes).mean())}
    samplers.save(path, name, fresh, meta)
    return fresh, {"file": f"samplers/{name}.pt", **meta}


def pixelcnn(run) -> tuple:
    """(the PixelCNN prior `aexp prior` trained for this VQ run, its eval numbers)."""
    path = run.run_dir / "prior" / "checkpoints" / "best.pt"
    if not path.is_file():
        raise CheckpointError(f"{run.run_dir} has no code prior yet ({path}); train one with: aexp prior {run.run_dir}")
    state = checkpoint.load(path)
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path} holds no prior config")
    trust.check_config(config, allowed_targets(), path)   # before anything is built
    if state.get("run_epoch") != run.state.get("epoch"):   # its codes came from other weights
        raise CheckpointError(f"{path} was trained on the codes of epoch {state.get('run_epoch')} of "
                              f"the VQ run, and this checkpoint is epoch {run.state.get('epoch')}; "
                              f"train a new prior (delete {path.parent.parent}, then aexp prior {run.run_dir})")
    net = build(OmegaConf.create(config["model"]), codebook_size=run.model.codebook_size)
    try:
        net.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the weights do not fit its PixelCNN: {str(e).splitlines()[0][:160]}") from None
    if not isinstance(net, PixelCNN):
        raise CheckpointError(f"{path} is not a PixelCNN prior")
    return net.eval(), {"file": "prior/checkpoints/best.pt", "epoch": state.get("epoch"),
                        **prior_scores(run.run_dir / "prior" / "nll.json")}


def prior_scores(path) -> dict:
    """The prior's test NLL figures from `aexp prior`'s nll.json, for the sampler's entry. The
    folder may come from anyone: only plain numbers and short strings at the top level are
    taken, and a file that is not a JSON object gives a note instead of the figures."""
    try:
        info = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict):
        return {"note": f"{path.name} is unreadable; its figures are left out"}
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    return {str(k)[:64]: v for k, v in info.items()
            if number(v) or isinstance(v, str) and len(v) <= 200
            or isinstance(v, list) and len(v) <= 8 and all(number(e) for e in v)}


@torch.no_grad()
def draw_codes(run, name: str, n: int, gen: torch.Generator, overrides=(), log=print) -> tuple:
    """(`n` codes [n, D] to decode, the sampler's eval.json entry)."""
    model = run.model
    if name == "vamp":
        return vamp_codes(run, n, gen)
    if name != "prior":
        sampler, entry = fitted(run, name, overrides, log)
        return sampler.sample(n, gen), entry
    if hasattr(model, "prior_codes"):   # a hierarchical VAE: z2 ~ N(0, I), then z1 ~ p(z1 | z2)
        return model.prior_codes(n, gen), {"from": f"ancestral draws from {model.prior_name}"}
    if model.codebook_size is None:
        x, _ = run.data.batch(run.data.train, torch.arange(1, device=run.data.train.x.device))
        dim = model.encode(x).flatten(1).shape[1]
        return torch.randn(n, dim, generator=gen), {"from": "N(0, I), the model's own prior"}
    net, entry = pixelcnn(run)
    maps = net.sample(n, tuple(model.sizes[-1]), gen)
    vectors = model.quantizer.codebook.detach().cpu()[maps.cpu()]   # [n, H, W, dim]
    return vectors.permute(0, 3, 1, 2).flatten(1), {**entry, "from": "the PixelCNN code prior"}


def section(run, ev, which, overrides=None, log=print, strict: bool = False) -> dict:
    """The `samplers` section of eval.json for the sampler names `which` (overrides: NAME ->
    key=value settings); also writes each one's samples and picture. A sampler this run cannot
    have (a plain AE's prior, a VQ prior not trained yet) is refused when `strict` (`aexp
    sample`), else skipped with the reason (`eval.samplers`, after a training that succeeded)."""
    out, usable = {}, []
    for name in which:
        try:
            check_name(name, run)
            if name == "prior" and run.model.codebook_size is not None:
                pixelcnn(run)
            usable.append(name)
        except (ConfigError, CheckpointError) as e:
            if strict:
                raise
            out[name] = {"skipped": str(e)}
    n, seed = int(ev.sampler_images), int(ev.seed)
    judge = Judge(run, ev, n, log)
    out = {"images": n, "k": int(ev.pr_k), "reference": judge.reference, "baseline": judge.floors(), **out}
    for name in usable:
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        codes, entry = draw_codes(run, name, n, gen, (overrides or {}).get(name, ()), log)
        images = draw.decode(run.model, codes, label=draw.every_class(run.model, len(codes))).clamp(0, 1).cpu()
        entry["draw_seconds"] = round(time.perf_counter() - t0, 3)
        folder = run.run_dir / "samplers"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{name}_samples.npy", lambda f: np.save(f, images.numpy()))
        seen = run.data.to_rgb(None, images)        # what a person and the classifier see
        tiles = draw.tiles(seen[:64])
        save(draw.grid(tiles, 8), run.run_dir / "pictures" / f"samples_{name}.png", tiles.shape[1])
        entry.update(samples=f"samplers/{name}_samples.npy", picture=f"pictures/samples_{name}.png",
                     run_epoch=run.state.get("epoch"), **judge(seen))   # whose decoder drew them
        out[name] = entry
    return out


class Judge:
    """Scores samples on the run's test images with the dataset's cached classifier (labelled
    images only; otherwise the scores say why they are missing)."""

    def __init__(self, run, ev, n: int, log):
        data = run.data
        self.k, self.seed, self.extractor = int(ev.pr_k), int(ev.seed), None
        if data.kind != "image" or data.train.y is None or not data.num_classes or not ev.classifier.enabled:
            self.reference = "none: scores need labelled images and eval.classifier.enabled"
            return
        idx = torch.arange(min(n, len(data.test)), device=data.test.x.device)
        x, y = data.batch(data.test, idx)
        self.real = data.to_rgb(x, y).float().cpu()
        self.train = TrainViews(data, run.device)
        ds_cfg = OmegaConf.to_container(run.cfg.dataset, resolve=True)
        net, _, _ = classifier.get(ds_cfg, data.task.name, self.train, data.train.y.long(), data.num_classes,
                                   ev.classifier.cache_dir, int(ev.classifier.epochs), self.seed, log)
        self.extractor = quality.ClassifierFeatures(net)
        self.real_feats = sample_metrics.features(self.extractor, self.real)
        self.reference = f"{len(self.real)} test images"

    def floors(self) -> dict:
        if self.extractor is None:
            return {}
        return sample_metrics.floors(self.extractor, self.real, self.train, self.k, self.seed)

    def __call__(self, images: torch.Tensor) -> dict:
        if self.extractor is None:
            return {}
        return sample_metrics.score(self.extractor, self.real, images, self.k, self.real_feats)


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="aexp sample", description="Fit a sampler on a run's training codes, "
                        "draw samples (picture + .npy) and score them in eval.json.")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--sampler", required=True, help=f"one of: {', '.join(names())}")
    ap.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                    help="the sampler's settings (conf/sampler/NAME.yaml), e.g. k=20")
    ap.add_argument("-n", "--images", type=int, help="samples drawn and scored (default: eval.sampler_images)")
    ap.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default auto)")
    args = ap.parse_intermixed_args(argv)   # settings may come after --sampler NAME
    bad = [s for s in args.settings if "=" not in s]
    if bad:
        raise ConfigError(f"aexp sample: settings are KEY=VALUE, got {bad[0]!r}")
    if args.sampler not in names():
        raise ConfigError(f"unknown sampler {args.sampler!r}; choose from {', '.join(names())}")
    run = load_run(args.run_dir, which=args.checkpoint, device=args.device)
    # the eval: section as `aexp eval` reads it: the defaults, then the run's own
    ev = OmegaConf.merge(OmegaConf.load(conf_dir() / "config.yaml").eval, run.cfg.get("eval") or {})
    if args.images is not None:
        ev.sampler_images = args.images
    check_values(OmegaConf.create({"eval": ev}))
    part = section(run, ev, [args.sampler], {args.sampler: args.settings}, log=lambda m: print(m, flush=True),
                   strict=True)
    path, note = merge_into_eval_json(run.run_dir, part, run.state.get("epoch"))
    if note:
        print(f"note: {note}")
    entry = part[args.sampler]
    shown = {k: entry[k] for k in ("precision", "recall", "fid_classifier") if k in entry}
    base = {b: {k: round(v[k], 4) for k in ("precision", "recall") if k in v} for b, v in part["baseline"].items()}
    print(f"{args.sampler}: {', '.join(f'{k} {v:.4g}' for k, v in shown.items()) or 'no scores (' + part['reference'] + ')'}"
          + (f"; baselines {base}" if base else ""))
    print(f"wrote {run.run_dir / entry['picture']}, {run.run_dir / entry['samples']} and {path}")
    return 0
