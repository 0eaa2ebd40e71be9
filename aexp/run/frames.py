"""Per-epoch latent-space frames, rasterised with numpy (a new matplotlib figure per epoch
would cost more than a small model's epoch).

A frame shows the latents of a fixed probe set from the validation data, coloured by class
(or by the sample's own colour for the colours dataset), on axes that stay put between epochs.
For a 2-D latent it also shows the decoder's output over a grid of latent points; for a VQ model,
how often the probe set uses each code of the codebook.
Latents of more than two dimensions are projected on a PCA basis fitted once, at epoch 0
(`aexp.draw`'s projection, the one the pictures and the explorer use).
Each frame's raw probe latents are also kept (`latents_XXXX.npy`, float16; the probe's
validation indices and labels once in `probe.npz`) for `aexp explore`'s epoch slider.
"""
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from aexp import draw
from aexp.io import atomic_write
from aexp.models import encode_with

MARGIN = 28  # pixels around each panel, room for the tick labels


class FrameWriter:
    """Draws `frames/epoch_XXXX.png` for a model and a fixed probe set."""

    def __init__(self, data, out_dir: Path, probe_size: int = 2000, size: int = 400,
                 grid: int = 15, seed: int = 0):
        self.out_dir = Path(out_dir)
        self.size, self.grid = size, grid
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data.val), generator=g)[:probe_size].to(data.val.x.device)
        self.x, target = data.batch(data.val, idx)
        self.labels = data.val.labels(idx)   # (a conditional model's)
        self.probe = {"index": idx.cpu().numpy(),
                      "label": None if self.labels is None else self.labels.cpu().numpy()}
        self.data = data
        if data.kind == "colors":   # a colour's own RGB, whatever encoding the model sees
            self.colors = draw.tiles(data.to_rgb(self.x, target))[:, 0, 0]
        elif self.labels is not None:
            self.colors = draw.PALETTE[self.probe["label"] % len(draw.PALETTE)]
        else:
            self.colors = np.tile(draw.PALETTE[0], (len(idx), 1))
        self.projection = None   # chosen at the first frame: raw (2-D) or a PCA fitted then
        self.limits = None       # ((x0, x1), (y0, y1)) in plotted coordinates

    @torch.no_grad()
    def write(self, model, epoch: int) -> Path:
        was_training = model.training
        model.eval()
        z = encode_with(model, self.x, self.labels).float()
        p = self._project(z.cpu().numpy())
        self._update_limits(p, model.latent_range)
        panels, titles = [self._scatter(p)], []
        if z.shape[1] == 2 and self.data.task.name == "reconstruct":   # others decode no sample
            panels.append(self._decoded_plane(model))
            titles.append("decoded latent plane")
        codes = model.code_indices(self.x)
        if codes is not None:
            counts = np.bincount(codes.flatten().cpu().numpy(), minlength=model.codebook_size)
            panels.append(self._usage(counts))
            titles.append(f"code use: {(counts > 0).sum()} of {len(counts)} codes used")
        model.train(was_training)
        frame = np.full((self.size + 2 * MARGIN, len(panels) * (self.size + 2 * MARGIN), 3),
                        255, np.uint8)
        for i, panel in enumerate(panels):
            x0 = i * (self.size + 2 * MARGIN) + MARGIN
            frame[MARGIN:MARGIN + self.size, x0:x0 + self.size] = panel
        img = Image.fromarray(frame)
        self._annotate(ImageDraw.Draw(img), epoch, titles, z.shape[1])
        path = self.out_dir / f"epoch_{epoch:04d}.png"
        atomic_write(path, lambda f: img.save(f, format="PNG", compress_level=1))
        self._save_latents(z, epoch)
        return path

    def _save_latents(self, z, epoch: int) -> None:
        """A few KB per epoch; atomic, because the explorer may read them while training runs."""
        if epoch == 0 or not (self.out_dir / "probe.npz").is_file():
            probe = {k: v for k, v in self.probe.items() if v is not None}
            atomic_write(self.out_dir / "probe.npz", lambda f: np.savez(f, **probe))
        latents = z.cpu().numpy().astype(np.float16)
        atomic_write(self.out_dir / f"latents_{epoch:04d}.npy", lambda f: np.save(f, latents))

    def state(self) -> dict:
        """What later frames depend on (PCA basis, axes), saved in checkpoints so a resumed run
        draws the frames the uninterrupted run would have."""
        # the PCA basis as (mean [1, D], components [D, 2]) tensors: weights_only loads them
        pca = self.projection if isinstance(self.projection, draw.PCA) else None
        basis = None if pca is None else [torch.from_numpy(pca.mean[None]).float(),
                                          torch.from_numpy(pca.components.T).float()]
        return {"basis": basis, "limits": self.limits}

    def load_state(self, state: dict) -> None:
        basis = state["basis"]
        self.projection = None if basis is None else draw.PCA.of(basis[0][0].double().numpy(),
                                                                  basis[1].T.double().numpy())
        self.limits = None if state["limits"] is None else tuple(map(tuple, state["limits"]))

    def _project(self, z: np.ndarray) -> np.ndarray:
        if self.projection is None:   # fitted once: later frames share the first frame's axes
            self.projection = draw.choose("auto", z.shape[1])
            return self.projection.fit(z)
        return self.projection.transform(z)

    def _update_limits(self, p, latent_range):
        """Bounded latents use their range. Unbounded ones use a symmetric box whose half-width
        is a power of two that only grows, so the axes change rarely and never shrink."""
        if latent_range is not None and isinstance(self.projection, draw.Raw):
            lo, hi = latent_range
            self.limits = ((lo, hi), (lo, hi))
            return
        spread = float(np.quantile(np.abs(p), 0.995)) if len(p) else 1.0
        half = 2.0 ** math.ceil(math.log2(max(spread, 1e-3) * 1.05))
        if self.limits is not None:
            half = max(half, self.limits[0][1])
        self.limits = ((-half, half), (-half, half))

    def _to_pixels(self, p: np.ndarray):
        (x0, x1), (y0, y1) = self.limits
        px = np.round((p[:, 0] - x0) / (x1 - x0) * (self.size - 1)).astype(np.int64)
        py = np.round((y1 - p[:, 1]) / (y1 - y0) * (self.size - 1)).astype(np.int64)
        return px, py

    def _scatter(self, p: np.ndarray) -> np.ndarray:
        canvas = np.full((self.size, self.size, 3), 255, np.uint8)
        px, py = self._to_pixels(p)
        inside = (px >= 0) & (px < self.size) & (py >= 0) & (py < self.size)
        px, py, colors = px[inside], py[inside], self.colors[inside]
        for dy in (-1, 0, 1):       # 3x3 dots
            for dx in (-1, 0, 1):
                canvas[np.clip(py + dy, 0, self.size - 1), np.clip(px + dx, 0, self.size - 1)] = colors
        canvas[[0, -1], :] = 160    # panel border
        canvas[:, [0, -1]] = 160
        return canvas

    def _decoded_plane(self, model) -> np.ndarray:
        """The decoder's output over a grid of latent points spanning the axes: one colour per
        cell for colour data, else a mosaic of decoded images."""
        (x0, x1), (y0, y1) = self.limits
        n = 100 if self.data.kind == "colors" else self.grid
        img = draw.grid(draw.decoded(model, self.data, draw.plane_points((x0, x1, y0, y1), n)),
                        n, pad=0)
        return np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.NEAREST))

    def _usage(self, counts: np.ndarray) -> np.ndarray:
        """One bar per code (in index order), its height the code's share of the most used one's."""
        canvas = np.full((self.size, self.size, 3), 255, np.uint8)
        heights = np.round(counts / max(counts.max(), 1) * (self.size - 2)).astype(np.int64)
        edges = np.linspace(1, self.size - 1, len(counts) + 1).astype(np.int64)
        for h, a, b in zip(heights, edges[:-1], edges[1:]):
            if h:
                canvas[self.size - 1 - h:self.size - 1, a:max(b - 1, a + 1)] = draw.PALETTE[0]
        canvas[[0, -1], :] = 160
        canvas[:, [0, -1]] = 160
        return canvas

    def _annotate(self, draw, epoch, titles, latent_dim):
        (x0, x1), (y0, y1) = self.limits
        label = "latent" if latent_dim <= 2 else f"PCA of {latent_dim}-d latent"
        draw.text((MARGIN, 8), f"epoch {epoch}   {label}", fill=(0, 0, 0))
        bottom = self.size + MARGIN + 4
        draw.text((MARGIN, bottom), f"{x0:g}", fill=(90, 90, 90))
        draw.text((MARGIN + self.size - 24, bottom), f"{x1:g}", fill=(90, 90, 90))
        draw.text((2, MARGIN + self.size - 12), f"{y0:g}", fill=(90, 90, 90))
        draw.text((2, MARGIN), f"{y1:g}", fill=(90, 90, 90))
        for i, title in enumerate(titles, 1):
            draw.text((i * (self.size + 2 * MARGIN) + MARGIN, 8), title, fill=(0, 0, 0))
