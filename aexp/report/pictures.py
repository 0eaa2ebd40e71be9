"""A run's pictures, in `RUN_DIR/pictures/`: image grids drawn with numpy + PIL (reconstructions,
denoising, colourisation, samples, decoded latent plane, interpolations; for a conditional model
the samples and the plane per class) and, through
`report/plots.py`, the matplotlib figures (loss curves, latent scatter, W2·W1, accuracy curve).

Images are shown the way the data is: grey or RGB images as themselves, colour vectors as
swatches, colourisation predictions as RGB through the dataset's `to_rgb(L, ab)`."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aexp import draw
from aexp.data.corruption import NoCorruption
from aexp.io import read_csv
from aexp.models import call
from aexp.report import plots
from aexp.report.render import write_video
from aexp.report.samplers import Normal

SWATCH = 24   # pixels per colour sample
TILE = 64     # small images are enlarged (nearest) to at least this many pixels


def as_images(t: torch.Tensor) -> np.ndarray:
    """Values -> uint8 RGB tiles [N, H, W, 3]; colour vectors as SWATCH-pixel squares."""
    return draw.tiles(t, swatch=SWATCH)


def save(img: np.ndarray, path: Path, tile_h: int) -> Path:
    """Save with an integer nearest-neighbour enlargement so small tiles (8×8 digits) are visible."""
    k = max(1, -(-TILE // max(tile_h, 1))) if tile_h < TILE else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.kron(img, np.ones((k, k, 1), np.uint8)) if k > 1 else img).save(path)
    return path


def rows_over(tops: np.ndarray, *others: np.ndarray, cols: int = 12) -> np.ndarray:
    """Interleave row groups: originals over reconstructions (over further rows), `cols` a row."""
    n = min(len(a) for a in (tops, *others))
    groups = -(-n // cols)
    tiles = []
    for g in range(groups):
        for a in (tops, *others):
            chunk = a[g * cols:(g + 1) * cols]
            tiles += list(chunk) + [np.full_like(a[0], 255)] * (cols - len(chunk))
    k = 1 + len(others)
    return draw.grid(np.stack(tiles), cols, gaps=[r for r in range(k, groups * k, k)])


def pick(n_total: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:min(n, n_total)]


def fitted_samples(z: torch.Tensor, n: int, gen) -> torch.Tensor:
    """Samples from a Gaussian fitted to codes: `aexp sample`'s `normal` sampler (full covariance
    up to 512 dims and more codes than dims, else diagonal)."""
    return Normal().fit(z.flatten(1)).sample(n, gen).view(n, *z.shape[1:])


def sample_codes(pred: dict, n: int, gen, model=None) -> torch.Tensor:
    """`n` codes to decode as samples: draws from the prior N(0, I) when the model was trained
    towards it (`pred["sampler"] == "prior"`: a VAE, or a code pushed to N(0, I) by an MMD
    term), or from the model's own prior where it draws its codes itself (`prior_codes`: a
    hierarchical VAE), else from a Gaussian fitted to the test codes."""
    z = pred["z"]
    if pred.get("sampler") == "prior" and hasattr(model, "prior_codes"):
        return model.prior_codes(n, gen)
    if pred.get("sampler") == "prior":
        return torch.randn(n, *z.shape[1:], generator=gen)
    return fitted_samples(z, n, gen)


def make_all(run, pred: dict, report: dict, ev) -> list[Path]:
    """Draw every picture that fits this run; return the files written."""
    out = run.run_dir / "pictures"
    data, model = run.data, run.model
    seed, task = int(ev.seed), data.task.name
    files = []
    idx = pick(len(pred["x"]), 48, seed)
    x, y, x_hat = pred["x"][idx], pred["y"][idx], pred["x_hat"][idx]
    orig, recon = as_images(data.to_rgb(x, y)), as_images(data.to_rgb(x, x_hat))
    if task == "colorize":
        files += colorization_pictures(out, data, x, y, x_hat, orig, recon)
    else:
        files.append(save(rows_over(orig, recon), out / "reconstruction.png", orig.shape[1]))
        files += denoising(out, data, model, seed)
    if task == "reconstruct" and model.codebook_size is not None:
        report.setdefault("notes", []).append(
            "no samples.png or latent_traversal.png: a VQ code has no prior of its own (train a "
            "PixelCNN over its code indices with `aexp prior RUN_DIR`, then draw with `aexp sample "
            "RUN_DIR --sampler prior`) and no continuous units to sweep")
        files += interpolations(out, model, data, pred, seed)
    elif task == "reconstruct":   # a colourisation decoder's a,b mean nothing without an L input
        files += decoder_pictures(out, model, data, pred, seed)
        if model.conditional:     # the pictures above show its default class (0); these, each class
            files += per_class(out, model, data, pred["z"], seed)
    product = model.weight_product()
    if product is not None:
        files.append(plots.heatmap(product.detach().float().cpu().numpy(),
                                   out / "weight_product.png", "W2·W1"))
    if (run.run_dir / "metrics.csv").is_file():
        files.append(plots.loss_curves(read_csv(run.run_dir / "metrics.csv"), out / "loss_curves.png"))
    files += plots.latent_scatters(pred, data, out, seed, bool(ev.tsne), int(ev.tsne_points))
    if "colorization" in report:
        c = report["colorization"]["curve"]
        series = [("model", c["bounds"], c["accuracy"])] + plots.baseline_curves(report)
        files.append(plots.curves(series, out / "accuracy_vs_bound.png", "bound on |error| of a,b",
                                  "accuracy", "colourisation accuracy vs bound (test)"))
    return files


def colorization_pictures(out, data, x, y, x_hat, orig, recon) -> list[Path]:
    """Collage original | L | prediction, and the true vs predicted a,b channels."""
    files = []
    lum = as_images(data.to_rgb(x, torch.full_like(y, 0.5)))   # a,b at 0.5 = no colour
    files.append(save(rows_over(orig[:12], lum[:12], recon[:12]), out / "colorization.png",
                      orig.shape[1]))
    if y.dim() == 4 and y.shape[1] >= 2:
        chans = [as_images(t[:8, c:c + 1]) for t in (y, x_hat) for c in (0, 1)]
        files.append(save(rows_over(*chans, cols=8), out / "colorization_ab.png", chans[0].shape[1]))
    return files


@torch.no_grad()
def denoising(out, data, model, seed) -> list[Path]:
    """Original / corrupted / reconstructed, when the data corrupts its training inputs (the
    training batch's input differs from its target)."""
    split = data.test
    idx = pick(len(split), 12, seed).to(split.x.device)
    torch.manual_seed(seed)
    noisy, clean = data.batch(split, idx, train=True)
    if data.task.name != "reconstruct" or isinstance(data.corruption, NoCorruption):
        return []
    shown = data.task.unnormalize(noisy)   # inputs may be normalised: show them in [0, 1]
    tiles = [as_images(data.to_rgb(None, t)) for t in (clean, shown, call(model, noisy, split.labels(idx)).x_hat)]
    return [save(rows_over(*tiles), out / "denoising.png", tiles[0].shape[1])]


def decoder_pictures(out, model, data, pred, seed) -> list[Path]:
    """Samples (`samples.png`: N(0, I) for a VAE or WAE; `samples_fitted.png`: a Gaussian fitted
    to the codes, when asked), the decoded latent plane of a 2-D latent, traversals and
    interpolations."""
    z, files = pred["z"], []
    if pred.get("sampler"):
        tiles = decode(model, sample_codes(pred, 64, torch.Generator().manual_seed(seed), model), data)
        name = "samples.png" if pred["sampler"] == "prior" else "samples_fitted.png"
        files.append(save(draw.grid(tiles, 8), out / name, tiles.shape[1]))
    if z.dim() == 2 and z.shape[1] == 2:
        files += latent_plane(out, model, data, z)
    if z.dim() == 2 and len(z) > 1 and z.shape[1] <= TRAVERSE_MAX_DIM:
        files.append(latent_traversal(out, model, data, z))
    return files + interpolations(out, model, data, pred, seed)


TRAVERSE_MAX_DIM = 64   # wider codes (a conv AE's flattened feature map) have no units to read


def latent_traversal(out, model, data, z, rows: int = 10, steps: int = 9) -> Path:
    """The standard β-VAE picture: row d decodes the first test sample's code with unit d swept
    from its mean - 3σ to mean + 3σ over the test codes, the other units fixed; first `rows` units."""
    d = min(rows, z.shape[1])
    mean, std = z.mean(0), z.std(0)
    codes = z[0].repeat(d, steps, 1)
    sweep = torch.linspace(-3, 3, steps)
    for i in range(d):
        codes[i, :, i] = mean[i] + sweep * std[i]
    tiles = decode(model, codes.reshape(d * steps, -1), data)
    return save(draw.grid(tiles, steps), out / "latent_traversal.png", tiles.shape[1])


def decode(model, z: torch.Tensor, data) -> np.ndarray:
    """Decoded codes as tiles (colours as swatches)."""
    if data.kind == "colors":
        return np.kron(draw.decoded(model, data, z), np.ones((SWATCH, SWATCH, 1), np.uint8))
    return draw.decoded(model, data, z)


def per_class(out, model, data, z, seed: int, n: int = 10, side: int = 8, span: float = 2.5) -> list[Path]:
    """A conditional model's pictures: `samples_per_class.png`, one row per class decoding the
    same `n` codes z ~ N(0, I) as that class (a column: one code, one "style", in every class),
    and for a 2-D code `latent_plane_per_class.png`, one small panel per class: the decoder
    over the same `side` x `side` grid of [-span, span]^2 (± span σ of the prior)."""
    classes = range(model.num_classes)
    codes = torch.randn(n, *z.shape[1:], generator=torch.Generator().manual_seed(seed))
    rows = np.concatenate([draw.decoded(model, data, codes, label=c) for c in classes])
    files = [save(draw.grid(rows, n), out / "samples_per_class.png", rows.shape[1])]
    if z.dim() == 2 and z.shape[1] == 2:
        pts = draw.plane_points((-span, span, -span, span), side)
        panels = np.stack([draw.grid(draw.decoded(model, data, pts, label=c), side, pad=1)
                           for c in classes])
        files.append(save(draw.grid(panels, min(5, len(panels)), pad=6),
                          out / "latent_plane_per_class.png", rows.shape[1]))
    return files


def latent_plane(out, model, data, z) -> list[Path]:
    """The decoder over a grid spanning the codes (or a bounded latent's range)."""
    if model.latent_range:
        lo, hi = (torch.tensor([float(v)] * 2) for v in model.latent_range)
    else:
        lo, hi = torch.quantile(z, 0.01, dim=0), torch.quantile(z, 0.99, dim=0)
    n = 100 if data.kind == "colors" else 15
    pts = draw.plane_points((float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])), n)
    tiles = draw.decoded(model, data, pts)   # colours: one pixel per cell, enlarged when saved
    pad = 0 if data.kind == "colors" else 1
    return [save(draw.grid(tiles, n, pad=pad), out / "latent_plane.png",
                 16 if data.kind == "colors" else tiles.shape[1])]


def interpolations(out, model, data, pred, seed) -> list[Path]:
    """A mosaic over origin + u·(A − origin) + v·(B − origin), and a GIF of 8 pairs morphing
    from one code to the other and back."""
    z, labels = pred["z"], pred["labels"]
    files = []
    if len(z) < 3:      # a test split this small has no three codes to span the mosaic
        return files
    anchors = pick(len(z), 3, seed + 1)
    if labels is not None:   # three samples of different classes where there are three
        firsts = {}
        for i in range(len(labels)):
            firsts.setdefault(int(labels[i]), i)
        if len(firsts) >= 3:
            anchors = torch.tensor(list(firsts.values())[:3])
    o, a, b = (z[int(i)] for i in anchors)
    ts = torch.linspace(0, 1, 9)
    mosaic = torch.stack([o + u * (a - o) + v * (b - o) for v in ts for u in ts])
    tiles = decode(model, mosaic, data)
    files.append(save(draw.grid(tiles, 9), out / "interpolation_mosaic.png", tiles.shape[1]))
    pairs = pick(len(z), 16, seed + 2)
    src, dst = z[pairs[:8]], z[pairs[8:16]]
    if len(dst) == 0:
        return files
    src = src[:len(dst)]
    steps = torch.cat([torch.linspace(0, 1, 16), torch.linspace(1, 0, 16)[1:-1]])
    frames = []
    for t in steps:
        tiles = decode(model, src + t * (dst - src), data)
        frames.append(draw.grid(tiles, len(tiles)))
    k = max(1, -(-TILE // tiles.shape[1]))
    frames = [np.kron(f, np.ones((k, k, 1), np.uint8)) for f in frames]
    files.append(write_video(out / "interpolation.gif", frames, fps=12, gif=True))
    return files


@torch.no_grad()
def sweep_colorization(runs: list[tuple], path: Path, n: int = 8, seed: int = 0) -> Path:
    """One grid for a colourisation sweep: the same `n` test photos as original, L, and each
    job's prediction (a row group per job, in `runs` order: [(label, loaded run), ...]). Jobs
    share the test split (same data config and seed), so the photos are the same ones."""
    data = runs[0][1].data
    idx = pick(len(data.test), n, seed).to(data.test.x.device)
    x, y = data.batch(data.test, idx)
    rows = [as_images(data.to_rgb(x, y)), as_images(data.to_rgb(x, torch.full_like(y, 0.5)))]
    for _, run in runs:
        xr, _ = run.data.batch(run.data.test, idx.to(run.data.test.x.device))
        rows.append(as_images(run.data.to_rgb(xr, run.model(xr).x_hat.clamp(0, 1)).cpu()))
    save(rows_over(*rows, cols=n), path, rows[0].shape[1])
    (path.with_suffix(".txt")).write_text("rows: original, L (a,b = 0.5), then\n" +
                                          "\n".join(label for label, _ in runs) + "\n")
    return path
