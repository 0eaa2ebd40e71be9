"""eval.json's `disentanglement` section and its pictures, for data generated from known factors
(a test split carrying `factors`, e.g. dataset=dsprites): the metrics of aexp.report.disentangle
for the model's codes (a VAE's posterior means), beside their trivial baseline, a randomly
initialised encoder of the same architecture (`baseline.random_encoder`), and their ceiling,
the true factors used as the code (`ceiling.true_factors`): what these estimators give at best
on this data (MIG, for one, stays below 1 when a factor has more values than bins).

Pictures: `mutual_information.png` (units x factors, the heat map MIG reads from) and
`latent_traversal_factors.png` (each unit swept, labelled with the factor it best explains)."""
import numpy as np
import torch

from aexp import draw
from aexp.assemble import build
from aexp.report import disentangle
from aexp.report.pictures import decode
from aexp.report.plots import _pyplot, _save


MAX_UNITS = 256    # wider codes (a conv AE's feature map) are no set of units to score one by one
MIN_SAMPLES = 20   # fewer test samples leave the fitted estimators nothing to learn from


def settings(ev) -> dict:
    """The estimator settings from `eval.disentanglement` (and eval.seed)."""
    own = dict(ev.get("disentanglement") or {})
    return {k: int(own.get(k, v)) for k, v in disentangle.DEFAULTS.items() if k != "seed"} | \
        {"seed": int(ev.seed)}


def wanted(data, ev) -> bool:
    return data.test.factors is not None and bool((ev.get("disentanglement") or {}).get("enabled", True))


def codes_of(pred: dict) -> torch.Tensor:
    """The code the metrics score: a VAE's posterior mean, else the latent itself."""
    return (pred["mu"] if "mu" in pred else pred["z"]).flatten(1)


def section(run, pred: dict, ev, report: dict) -> dict:
    """The model's scores (returned: eval.json's `disentanglement`); the random encoder's go to
    report["baseline"]["random_encoder"], the true factors' to report["ceiling"]["true_factors"]."""
    data = run.data
    factors, names = data.test.factors.cpu().numpy(), list(data.factor_names)
    codes = codes_of(pred).numpy()
    if codes.shape[1] > MAX_UNITS:
        return {"note": f"not scored: a code of {codes.shape[1]} units (these metrics read units one "
                        f"by one; at most {MAX_UNITS})"}
    if not np.isfinite(codes).all():
        return {"note": "not scored: the test codes hold NaN or Inf"}
    if len(codes) < MIN_SAMPLES or not disentangle.live_columns(factors):
        return {"note": f"not scored: {len(codes)} test samples with "
                        f"{len(disentangle.live_columns(factors))} varying factors (the metrics fit "
                        f"on half the samples and score the other half; at least {MIN_SAMPLES})"}
    s = settings(ev)
    score = lambda codes: disentangle.score_all(codes, factors, s, names)
    out = score(codes)
    random = score(random_encoder_codes(run, int(ev.seed), int(ev.batch_size)).numpy())
    ceiling = score(factors.astype(np.float64))
    for scores in (random, ceiling):
        scores.pop("mutual_information")
    report.setdefault("baseline", {})["random_encoder"] = {"disentanglement": random}
    report.setdefault("ceiling", {})["true_factors"] = {"disentanglement": ceiling}
    sizes = ", ".join(f"{n} {k}" for n, k in zip(names, data.factor_sizes))
    out["data"] = (f"{data.name.split()[0]} (sha256 {data.content_hash}), {len(factors)} test "
                   f"images; factor values in the full grid: {sizes}")
    out["estimators"] = disentangle.estimators(s)
    return out


@torch.no_grad()
def random_encoder_codes(run, seed: int, batch_size: int) -> torch.Tensor:
    """The test codes of a freshly initialised model of the run's architecture (weights drawn
    from `seed`, the global random state left as it was): the trivial baseline."""
    data = run.data
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(run.cfg.model, in_shape=data.in_shape, out_shape=data.out_shape)
    model = model.to(run.device).eval()
    model.start_epoch(None)
    parts, n = [], len(data.test)
    for i in range(0, n, batch_size):
        x, _ = data.batch(data.test, torch.arange(i, min(i + batch_size, n), device=data.test.x.device))
        out = model(x)
        parts.append((out.extras["mu"] if "mu" in out.extras else out.z).flatten(1).float().cpu())
    return torch.cat(parts)


def pictures(run, pred: dict, report: dict, rows: int = 10, steps: int = 9) -> list:
    """The heat map and the labelled traversal, when the report has a disentanglement section."""
    sec = report.get("disentanglement")
    if not sec or "mutual_information" not in sec:
        return []
    out = run.run_dir / "pictures"
    mi, names = np.asarray(sec["mutual_information"]), sec["factors"]
    files = [heatmap(mi, names, out / "mutual_information.png",
                     f"mutual information (nats), units x factors; MIG {sec['mig']:.3f}")]
    z = pred["z"]
    if z.dim() == 2 and len(z) > 1 and mi.size:
        files.append(traversal(run, z, mi, names, out / "latent_traversal_factors.png", rows, steps))
    return files


def heatmap(mi: np.ndarray, names: list, path, title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 0.35 * len(mi) + 1.8))
    im = ax.imshow(mi, cmap="viridis", aspect="auto", vmin=0, interpolation="nearest")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(mi)), [f"z{j}" for j in range(len(mi))])
    ax.set_xlabel("factor")
    ax.set_ylabel("code unit")
    if mi.size <= 400:
        for (j, k), v in np.ndenumerate(mi):
            ax.text(k, j, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 * (mi.max() or 1) else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


@torch.no_grad()
def traversal(run, z: torch.Tensor, mi: np.ndarray, names: list, path, rows: int, steps: int):
    """Rows = the `rows` units of most mutual information with any factor, most first; each
    decodes the first test code with that unit swept over its mean +- 3 std (the others fixed),
    labelled with the factor it shares most information with."""
    order = np.argsort(-mi.max(1), kind="stable")[:rows]
    mean, std = z.mean(0), z.std(0)
    codes = z[0].repeat(len(order), steps, 1)
    sweep = torch.linspace(-3, 3, steps)
    for r, j in enumerate(order):
        codes[r, :, j] = mean[j] + sweep * std[j]
    tiles = decode(run.model, codes.reshape(len(order) * steps, -1), run.data)
    plt = _pyplot()
    fig, axes = plt.subplots(len(order), 1, figsize=(steps * 0.9 + 1.5, 0.95 * len(order) + 0.4),
                             squeeze=False)
    for r, j in enumerate(order):
        ax = axes[r, 0]
        ax.imshow(draw.grid(tiles[r * steps:(r + 1) * steps], steps))
        ax.set_xticks([])
        ax.set_yticks([])
        best = int(np.argmax(mi[j]))
        ax.set_ylabel(f"z{j}\n{names[best]}\n{mi[j, best]:.2f} nats", rotation=0, ha="right",
                      va="center", fontsize=8)
    fig.suptitle("traversals (mean ± 3 std), each unit labelled with its most informative factor",
                 fontsize=9)
    return _save(fig, path)

