"""`aexp eval RUN_DIR`: test-set numbers people can compare, written to `RUN_DIR/eval.json` and
printed as a table, plus the run's pictures (see `report/pictures.py`). Also run by the job
after training when `eval.enabled` is true (aexp.jobs).

What is measured depends on what the run is:
- every run: MSE, MAE, PSNR (and SSIM, and MS-SSIM with the `metrics` extra, for images) of
  prediction against target, latent spread, parameter count, training time;
- a VAE (its output extras carry `mu` and `logvar`): ELBO and importance-sampled NLL
  (report/likelihood.py);
- a VQ model (its extras carry `codes`): the test set's codebook usage (codes used, perplexity);
- colourisation (`data.task.name == "colorize"`): accuracy of a,b within bounds and the curve;
- labelled images: a cached small CNN's accuracy on the originals and on the predictions, and
  FID/KID on its features (report/quality.py);
- images, when `eval.inception_weights` names a local file: an Inception FID;
- data made from known factors (dataset=dsprites): the disentanglement metrics, beside a random
  encoder (baseline) and the true factors (ceiling) (report/factors.py)."""
import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import OmegaConf

from aexp.assemble import check_values, conf_dir, load_run
from aexp.errors import ArgumentParser
from aexp.io import atomic_write, flatten, read_csv
from aexp.models import call, quantize
from aexp.report import baselines, eval_json, measures, quality, sample
from aexp.report import factors as factors_of
from aexp.report import scores as scores_of
from aexp.report.likelihood import vae_likelihood
from aexp.report.pictures import make_all

CURVE_BOUNDS = [round(0.005 * i, 3) for i in range(51)]   # 0 .. 0.25, the accuracy-vs-bound curve


def settings(cfg=None, **overrides):
    """The `eval:` section: conf/config.yaml's defaults, then the run's own, then overrides (a run
    trained before a setting existed still evaluates)."""
    base = OmegaConf.load(conf_dir() / "config.yaml").get("eval", {})
    own = (cfg.get("eval") if cfg is not None else None) or {}
    return OmegaConf.merge(base, own, {k: v for k, v in overrides.items() if v is not None})


@torch.no_grad()
def predict(model, data, split, batch_size: int) -> dict:
    """Run the model over a split: inputs, targets, predictions, codes (and VAE posteriors), on
    the CPU so pictures and metrics can use them freely."""
    parts = {}
    n = len(split)
    for i in range(0, n, batch_size):
        idx = torch.arange(i, min(i + batch_size, n), device=split.x.device)
        x, y = data.batch(split, idx)
        out = call(model, x, split.labels(idx))   # (labels: a conditional model's)
        got = {"x": x, "y": y, "x_hat": out.x_hat, "z": out.z}
        if "mu" in out.extras and "logvar" in out.extras:
            got.update(mu=out.extras["mu"], logvar=out.extras["logvar"])
        if "codes" in out.extras:       # a VQ model's code indices
            got["codes"] = out.extras["codes"]
        for k, v in got.items():
            parts.setdefault(k, []).append(v.detach().float().cpu())
    res = {k: torch.cat(v) for k, v in parts.items()}
    res["labels"] = None if split.y is None else split.y.cpu()
    return res


def reconstruction(pred: dict, is_image: bool) -> dict:
    p, t = pred["x_hat"].clamp(0, 1), pred["y"]
    res = {"mse": measures.mse(pred["x_hat"], t).mean().item(),
           "mae": measures.mae(pred["x_hat"], t).mean().item(),
           "psnr": measures.psnr(p, t).mean().item()}
    if is_image and p.dim() == 4:
        res["ssim"] = torch.cat([measures.ssim(p[i:i + 500], t[i:i + 500])
                                 for i in range(0, len(p), 500)]).mean().item()
        res.update(quality.ms_ssim(p, t) or {})
    return res


def colorization(pred: dict, bounds) -> dict:
    curve = measures.within_bound(pred["x_hat"].clamp(0, 1), pred["y"], CURVE_BOUNDS).mean(0)
    at = measures.within_bound(pred["x_hat"].clamp(0, 1), pred["y"], bounds).mean(0)
    return {"accuracy": {f"{b:g}": float(a) for b, a in zip(bounds, at)},
            "curve": {"bounds": CURVE_BOUNDS, "accuracy": [float(a) for a in curve]}}


def baseline(pred: dict, constant: torch.Tensor, task: str, is_image: bool, ev) -> dict:
    """The model's own measures of a constant prediction on the same test split."""
    const = {**pred, "x_hat": constant.to(pred["y"].device).expand_as(pred["y"])}
    out = {"reconstruction": reconstruction(const, is_image)}
    if task == "colorize":
        out["colorization"] = colorization(const, list(ev.bounds))
    return out


def sampler(run, pred) -> str | None:
    """How samples are drawn (pictures, the quality section): "prior" N(0, I) for a VAE and for a
    code trained towards N(0, I) by an MMD term (WAE), "fitted" (a Gaussian fitted to the test
    codes) for other continuous codes, None for a VQ code (no prior to sample)."""
    if run.model.codebook_size is not None:
        return None
    terms = ((run.cfg or {}).get("loss") or {}).get("terms") or {}
    mmd = any(str(t.get("_target_", "")).endswith(".MMD") for t in terms.values() if isinstance(t, Mapping))
    return "prior" if "mu" in pred or mmd else "fitted"


def codebook_usage(codes: torch.Tensor, size: int) -> dict:
    """How much of a VQ codebook the test set uses: codes used, and the perplexity of the code
    distribution over all positions of all test images (`size` if every code were equally used)."""
    used, perplexity = quantize.usage(codes, size, torch.float64)
    return {"size": size, "used": int(used), "perplexity": float(perplexity)}


def latent_stats(pred: dict) -> dict:
    z = pred["z"].flatten(1)
    std = z.std(0) if len(z) > 1 else torch.zeros(z.shape[1])
    res = {"dim": z.shape[1], "std_mean": std.mean().item(), "std_min": std.min().item(),
           "std_max": std.max().item(), "std": [round(float(s), 6) for s in std[:256]]}
    if "mu" in pred:
        sigma = torch.exp(0.5 * pred["logvar"])
        res["posterior_sigma_mean"] = sigma.mean().item()
        res["posterior_sigma"] = [round(float(s), 6) for s in sigma.mean(0)[:256]]
        # Burda et al.: a unit is active when its posterior mean varies across data (Cov > 0.01)
        res["active_units"] = int((pred["mu"].var(0) > 0.01).sum()) if len(z) > 1 else 0
    return res


def evaluate(run, ev, log=print, pictures: bool = True) -> dict:
    """Every number for a loaded run (see `aexp.assemble.load_run`); writes eval.json and pictures."""
    t0 = time.perf_counter()
    data, model = run.data, run.model
    task = data.task.name
    pred = predict(model, data, data.test, int(ev.batch_size))
    pred["sampler"] = sampler(run, pred)
    notes = []
    if pred["sampler"] == "fitted" and not ev.get("fitted_samples", False):
        pred["sampler"] = None
        notes.append("no samples: this autoencoder has no prior to sample from; eval.fitted_samples=true "
                     "draws samples from a Gaussian fitted to the test codes (samples_fitted.png)")
    rows = read_csv(run.run_dir / "metrics.csv") if (run.run_dir / "metrics.csv").is_file() else []
    report = {
        "run_dir": str(run.run_dir), "checkpoint": str(ev.checkpoint), "epoch": run.state.get("epoch"),
        "dataset": data.name, "task": task, "model": type(model).__name__, "n_test": len(data.test),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(sum(r.get("seconds") or 0 for r in rows), 3),
        "reconstruction": reconstruction(pred, data.kind == "image"),
        "latent": latent_stats(pred),
        "samples_from": pred["sampler"],
    }
    report["notes"] = notes   # filled below too; left out at the end when empty
    if "codes" in pred:
        report["codebook"] = codebook_usage(pred["codes"], model.codebook_size)
    if task == "colorize":
        report["colorization"] = colorization(pred, list(ev.bounds))
    constants = baselines.constants(data, int(ev.seed))
    if constants:
        report["baseline"] = {name: baseline(pred, c, task, data.kind == "image", ev)
                              for name, c in constants.items()}
    if "mu" in pred and int(ev.nll_samples) > 0:
        report["vae"], base_nll = vae_likelihood(model, data, ev, run.device,
                                                 constants.get("mean_image"))
        if base_nll is not None:
            report["baseline"]["mean_image"]["vae"] = {"nll": base_nll}
    # the images the classifier and the FIDs see (samples decoded once for both)
    seen = scores_of.views(run, pred, ev) if ev.classifier.enabled or ev.get("inception_weights") else None
    if ev.classifier.enabled:
        acc, scores = scores_of.classifier_accuracy(run, pred, ev, log, constants, seen)
        if acc:
            report["classifier"] = {k: v for k, v in acc.items() if k != "baseline"}
            for name, value in acc["baseline"].items():
                report["baseline"][name]["classifier"] = {"accuracy_reconstruction": value}
        if scores:
            report["quality"] = scores
    fid = scores_of.inception(run, pred, ev, seen)
    if fid:
        report["inception"] = fid
    if factors_of.wanted(data, ev):   # data made from known factors: report/factors.py
        report["disentanglement"] = factors_of.section(run, pred, ev, report)
    # fitted after training, drawn and scored (report/sample.py); those `aexp sample` scored on
    # this checkpoint are kept from the eval.json this one replaces (report/eval_json.py)
    fresh = sample.section(run, ev, list(ev.samplers), log=log) if ev.get("samplers") else {}
    old, note = eval_json.previous(run.run_dir / "eval.json")
    others, left_out = eval_json.kept(old, run.state.get("epoch"), fresh)
    for n in (note, left_out):
        if n:
            notes.append(n)
            log(f"note: {n}")
    if fresh or others:
        report["samplers"] = {**others, **fresh}
    if pictures:
        report["pictures"] = [str(p.relative_to(run.run_dir))
                              for p in make_all(run, pred, report, ev) + factors_of.pictures(run, pred, report)]
    if not notes:
        del report["notes"]
    report["eval_seconds"] = round(time.perf_counter() - t0, 3)
    path = run.run_dir / "eval.json"
    atomic_write(path, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return report


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"aexp eval · {report['run_dir']}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    names = list(report.get("baseline", {}))     # trivial baselines: a column each, beside the model
    for name in names:
        table.add_column(f"baseline: {name.replace('_', ' ')}", justify="right")
    ceilings = list(report.get("ceiling", {}))   # ceilings (e.g. the true factors as the code)
    for name in ceilings:
        table.add_column(f"ceiling: {name.replace('_', ' ')}", justify="right")
    shown = lambda v: "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)
    flat = flatten(report)
    for k, v in flat.items():
        if k in ("run_dir", "classifier.cache") or k.endswith(".data") or k.startswith("baseline.") \
                or ".curve." in k or k.startswith(("ceiling.", "disentanglement.estimators.")):
            continue
        table.add_row(k, shown(v), *[shown(flat.get(f"baseline.{n}.{k}")) for n in names],
                      *[shown(flat.get(f"ceiling.{n}.{k}")) for n in ceilings])
    Console().print(table)


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="aexp eval", description="Evaluate a run on its test split: "
                                 "eval.json, a table, and pictures in RUN_DIR/pictures/.")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--checkpoint", choices=["best", "last"], help="which checkpoint (default: eval.checkpoint)")
    ap.add_argument("--nll-samples", type=int, help="importance samples K for the VAE NLL (0 = skip)")
    ap.add_argument("--nll-max-images", type=int, help="test images for the NLL (0 = all)")
    ap.add_argument("--nll-repeats", type=int, help="NLL estimates with independent samples (mean, std)")
    ap.add_argument("--no-classifier", action="store_true", help="skip the classifier accuracy")
    ap.add_argument("--classifier-epochs", type=int, metavar="N",
                    help="train (or load) the evaluation classifier with N epochs (default: the run's)")
    ap.add_argument("--fitted-samples", action="store_true", default=None,
                    help="a plain AE: draw samples_fitted.png from a Gaussian fitted to its codes")
    ap.add_argument("--inception-weights", metavar="FILE",
                    help="local InceptionV3 weights (torch-fidelity's): adds an Inception FID")
    ap.add_argument("--no-pictures", action="store_true", help="numbers only")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default auto)")
    args = ap.parse_args(argv)
    given = {"nll_samples": args.nll_samples, "nll_max_images": args.nll_max_images,
             "nll_repeats": args.nll_repeats,
             "inception_weights": args.inception_weights, "fitted_samples": args.fitted_samples}
    check_values(OmegaConf.create({"eval": settings(None, **given)}))   # before any loading
    run = load_run(args.run_dir, which=args.checkpoint or str(settings().checkpoint),
                   device=args.device)
    ev = settings(run.cfg, checkpoint=args.checkpoint, **given)
    if args.no_classifier:
        ev.classifier.enabled = False
    if args.classifier_epochs is not None:
        ev.classifier.epochs = args.classifier_epochs
        check_values(OmegaConf.create({"eval": ev}))
    report = evaluate(run, ev, log=lambda m: print(m, flush=True), pictures=not args.no_pictures)
    print_table(report)
    print(f"wrote {run.run_dir / 'eval.json'}" +
          (f" and {len(report['pictures'])} pictures in {run.run_dir / 'pictures'}" if "pictures" in report else ""))
    return 0
