"""matplotlib figures for evaluation and sweep summaries: loss curves, overlaid curves, heatmaps,
latent scatters (raw 2-D, PCA, t-SNE). Headless (Agg); every function saves a PNG and returns
its path."""
from pathlib import Path

import numpy as np
import torch

from aexp import draw  # frames and plots share class colours and projections
from aexp.errors import ConfigError


def _pyplot():
    """matplotlib's pyplot, headless (Agg), imported on first use: it takes about half a second,
    which `aexp train` and `aexp eval --no-pictures` need not pay."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curves(rows: list[dict], path: Path) -> Path:
    """One panel per logged term (loss first), train and validation against epoch."""
    terms = ["loss"] + sorted({k[4:] for r in rows for k in r if k.startswith("val_") and k != "val_loss"})
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2), squeeze=False)
    epochs = [r["epoch"] for r in rows]
    for ax, term in zip(axes[0], terms):
        for split, style in (("train", "-"), ("val", "--")):
            ys = [r.get(f"{split}_{term}") for r in rows]
            if any(v is not None for v in ys):
                ax.plot(epochs, [np.nan if v is None else v for v in ys], style, marker=".", label=split)
        vals = [r.get(f"{s}_{term}") for r in rows for s in ("train", "val")]
        if all(v is not None and v > 0 for v in vals) and max(vals) / min(vals) > 20:
            ax.set_yscale("log")
        ax.set_title(term)
        ax.set_xlabel("epoch")
        ax.legend()
    return _save(fig, path)


def curves(series: list[tuple], path: Path, xlabel: str, ylabel: str, title: str = "",
           xticklabels=None, logx: bool = False) -> Path:
    """Overlaid curves: `series` is [(label, xs, ys), ...]; `xticklabels` names the positions
    0, 1, ... of categorical x values."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, xs, ys in series:
        ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=str(label))
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), [str(t) for t in xticklabels])
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if 1 < len(series) <= 20:
        ax.legend(fontsize=7)
    elif len(series) == 1:
        ax.legend()
    return _save(fig, path)


def heatmap(matrix: np.ndarray, path: Path, title: str) -> Path:
    """A matrix on a symmetric diverging scale (the identity shows as a red diagonal)."""
    lim = float(np.abs(matrix).max()) or 1.0
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    return _save(fig, path)


def _scatter(p: np.ndarray, colors, labels, classes, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if labels is None:
        ax.scatter(p[:, 0], p[:, 1], c=colors, s=4, linewidths=0)
    else:
        for c in np.unique(labels):
            m = labels == c
            name = classes[c] if c < len(classes) else str(c)
            ax.scatter(p[m, 0], p[m, 1], color=draw.PALETTE[c % len(draw.PALETTE)] / 255, s=4, linewidths=0,
                       label=name)
        ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(title)
    return _save(fig, path)


def latent_scatters(pred: dict, data, out: Path, seed: int, tsne: bool, tsne_points: int) -> list[Path]:
    """Codes of the test set coloured by class (or by their own colour for colour data): the raw
    latent when it is 1-D or 2-D, else PCA and (optionally) t-SNE of a subsample."""
    z = pred["z"].flatten(1).numpy()
    labels = pred["labels"].numpy() if pred["labels"] is not None else None
    colors = "tab:blue"
    if data.kind == "colors":   # each point in its own colour, no class legend
        colors, labels = data.to_rgb(pred["x"], pred["y"]).clamp(0, 1).numpy(), None
    classes = list(data.classes or [])
    projection = draw.choose("auto", z.shape[1], seed)
    p = projection.fit(z)
    if isinstance(projection, draw.Raw):
        return [_scatter(p, colors, labels, classes, out / "latent_scatter.png", "latent (test set)")]
    files = [_scatter(p, colors, labels, classes, out / "latent_pca.png",
                      f"PCA of {z.shape[1]}-d latent ({projection.explained:.0%} of variance)")]
    idx = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:tsne_points].numpy()
    if tsne and len(idx) > 5:
        try:
            p = draw.TSNE(seed).fit(z[idx])
        except ConfigError:
            return files   # t-SNE is optional: scikit-learn is not installed
        files.append(_scatter(p, colors if isinstance(colors, str) else colors[idx],
                              None if labels is None else labels[idx], classes,
                              out / "latent_tsne.png", f"t-SNE of {len(idx)} test codes"))
    return files


def baseline_curves(report: dict) -> list[tuple]:
    """The trivial baselines' accuracy-vs-bound curves of an eval report, as plot series."""
    return [(f"baseline: constant {name.replace('_', ' ')}", b["colorization"]["curve"]["bounds"],
             b["colorization"]["curve"]["accuracy"])
            for name, b in report.get("baseline", {}).items() if "colorization" in b]
