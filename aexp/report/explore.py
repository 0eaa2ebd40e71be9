"""`aexp explore RUN_DIR`: write `RUN_DIR/explorer.html`, one self-contained page (data and images
embedded, plain JS and canvas, no network) to click around a run's latent space.

What the page gets from here: the test-set latents of a checkpoint in 2-D (raw, PCA or t-SNE;
see `aexp.draw`) with each sample's class, index, input, target and reconstruction as PNG
sprites; the decoder's output over a grid of the visible plane (back-projected to latent space);
and the probe latents the training run recorded every frame epoch (`frames/latents_XXXX.npy`),
for the epoch slider. `--serve` serves the page on 127.0.0.1 for runs too large to pass around.
"""
import base64
import io
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aexp import draw
from aexp.assemble import load_run
from aexp.errors import AexpError, ArgumentParser, ConfigError
from aexp.models import call, encode_with


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="aexp explore", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a run folder (with checkpoints/)")
    ap.add_argument("--out", help="where to write the page (default RUN_DIR/explorer.html)")
    ap.add_argument("--projection", default="auto", help="auto (raw 2-D latent, PCA above 2-D), "
                    "raw, pca or tsne (scikit-learn; subsampled to --tsne-points)")
    ap.add_argument("--checkpoint", default="best", help="best or last (default best)")
    ap.add_argument("--points", type=int, default=10000, help="most test samples shown (default 10000)")
    ap.add_argument("--max-mb", type=float, default=6.0,
                    help="size budget of the embedded images; fewer samples are kept to fit (default 6)")
    ap.add_argument("--tsne-points", type=int, default=3000, help="samples embedded by t-SNE (default 3000)")
    ap.add_argument("--grid", type=int, default=0,
                    help="decoded grid cells per side (default 20 for images, 48 for colours)")
    ap.add_argument("--max-epochs", type=int, default=200, help="most recorded epochs on the slider")
    ap.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subsampling and t-SNE")
    ap.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 until Ctrl-C")
    ap.add_argument("--port", type=int, default=8000, help="port for --serve (0 = any free port)")
    args = ap.parse_args(argv)
    if args.points < 1 or args.max_mb <= 0 or args.grid < 0 or args.max_epochs < 1:
        raise ConfigError("--points, --max-mb and --max-epochs must be positive, --grid not negative")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")

    run = load_run(args.run_dir, which=args.checkpoint, device=args.device)
    payload = build_payload(run, args)
    out = Path(args.out) if args.out else run.run_dir / "explorer.html"
    out.write_text(render_page(payload), encoding="utf-8")
    mb = out.stat().st_size / 1e6
    print(f"{out}  ({mb:.1f} MB; {payload['meta']['subsampled']})")
    if args.serve:
        serve(out, args.port)
    return 0


def render_page(payload: dict) -> str:
    template = resources.files("aexp.report").joinpath("explorer_template.html").read_text(encoding="utf-8")
    blob = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")  # no early </script>
    return template.replace("/*__AEXP_DATA__*/null", blob)


@torch.no_grad()
def build_payload(run, args) -> dict:
    data, model = run.data, run.model
    n_total = len(data.test)
    rng = np.random.default_rng(args.seed)
    limit = min(args.points, args.tsne_points) if args.projection == "tsne" else args.points
    order = np.sort(rng.permutation(n_total)[:limit])
    test = encode_split(run, data.test, order)
    order, test = fit_budget(order, test, args.max_mb)
    if len(order) < 2:
        raise AexpError(f"the test split has {len(order)} sample(s); the explorer needs at least 2")

    proj = draw.choose(args.projection, test["z"].shape[1], seed=args.seed)
    plane = proj.fit(test["z"].astype(np.float64))
    final = view(f"checkpoint (epoch {run.state.get('epoch', '?')}) · test set", "test", plane,
                 run.state.get("epoch"), proj.label)
    grid = decoded_grid(run, proj, final["bounds"], args.grid or (48 if data.kind == "colors" else 20))

    epochs, probe = recorded_epochs(run, proj, args.max_epochs)
    samples = {"test": pack_samples(data, order, test)}
    if probe is not None:
        samples["probe"] = probe
    kept = (f"{len(order)} of {n_total} test samples"
            + ("" if len(order) == n_total else " (random subsample)"))
    return {
        "meta": {"run": str(run.run_dir), "model": type(model).__name__, "dataset": data.name,
                 "kind": data.kind, "latent_dim": int(test["z"].shape[1]), "projection": proj.label,
                 "checkpoint_epoch": run.state.get("epoch"), "subsampled": kept},
        "classes": list(map(str, data.classes)) or None,
        "samples": samples, "views": epochs + [final], "grid": grid,
    }


def encode_split(run, split, order: np.ndarray, batch: int = 1024) -> dict:
    """Latents, display images of input / target / reconstruction for `split[order]`."""
    parts = {"z": [], "input": [], "target": [], "recon": []}
    for i in range(0, len(order), batch):
        idx = torch.as_tensor(order[i:i + batch], device=split.x.device)
        x, y = run.data.batch(split, idx)
        labels = split.labels(idx)   # (a conditional model's)
        out = call(run.model, x, labels)
        parts["z"].append(encode_with(run.model, x, labels).float().cpu().numpy())
        parts["input"].append(draw.tiles(run.data.task.unnormalize(x)))   # what the model sees
        parts["target"].append(draw.tiles(run.data.to_rgb(x, y)))
        parts["recon"].append(draw.tiles(run.data.to_rgb(x, out.x_hat)))
    enc = {k: np.concatenate(v) for k, v in parts.items()}
    # 64 levels per channel (off by at most 2/255, invisible): smooth reconstructions' PNGs
    # shrink by a third, so a 10,000-sample MNIST test set fits the default budget whole.
    enc["recon"] = np.minimum((enc["recon"] & 0xFC) + 2, 255).astype(np.uint8)
    return enc


def sprite(images: np.ndarray) -> dict:
    """Tiles in one PNG (grey when every tile is grey), as base64: browsers decode it natively."""
    n, h, w, _ = images.shape
    cols = max(1, math.ceil(math.sqrt(n * h / w)))
    rows = math.ceil(n / cols)
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
    grey = bool((sheet[..., 0] == sheet[..., 1]).all() and (sheet[..., 0] == sheet[..., 2]).all())
    img = Image.fromarray(sheet[..., 0] if grey else sheet, "L" if grey else "RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return {"png": base64.b64encode(buf.getvalue()).decode(), "n": n, "h": h, "w": w, "cols": cols}


def fit_budget(order, enc, max_mb: float):
    """Keep as many samples as the image budget allows, estimated from 500 samples' PNGs."""
    probe = slice(0, min(500, len(order)))
    per = sum(len(sprite(enc[k][probe])["png"]) for k in ("target", "recon")) / (probe.stop or 1)
    keep = min(len(order), max(2, int(max_mb * 1e6 / max(per, 1.0))))
    if keep < len(order):
        pick = np.sort(np.random.default_rng(1).permutation(len(order))[:keep])
        order, enc = order[pick], {k: v[pick] for k, v in enc.items()}
    return order, enc


def pack_samples(data, order, enc, split=None) -> dict:
    split = data.test if split is None else split
    labels = split.labels(order)
    same_input = data.task.name == "reconstruct"   # input == target
    return {
        "index": order.tolist(),
        "label": None if labels is None else labels.cpu().tolist(),
        "color": b64(point_colors(data, enc["target"], labels)),
        "target": sprite(enc["target"]),
        "recon": sprite(enc["recon"]) if "recon" in enc else None,
        "input": None if same_input else sprite(enc["input"]),
    }


def point_colors(data, target, labels) -> np.ndarray:
    """RGB per point: the sample's own colour for colour data, else its class colour."""
    if data.kind == "colors":
        return target.reshape(len(target), -1, 3).mean(1).astype(np.uint8)
    if labels is None:
        return np.tile(draw.PALETTE[0], (len(target), 1))
    return draw.PALETTE[labels.cpu().numpy() % len(draw.PALETTE)]


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def view(name, samples, plane, epoch, axis_label) -> dict:
    """A scatter: plane coordinates quantised to uint16 between their extremes (4x smaller than
    JSON floats), and display bounds that leave out the farthest 0.5% of points on each side."""
    lo, hi = plane.min(0), plane.max(0)
    hi = np.where(hi > lo, hi, lo + 1e-6)
    q = np.round((plane - lo) / (hi - lo) * 65535).astype("<u2")
    a, b = np.percentile(plane, 0.5, 0), np.percentile(plane, 99.5, 0)
    pad = np.maximum((b - a) * 0.08, 1e-3)
    bounds = [float(a[0] - pad[0]), float(b[0] + pad[0]), float(a[1] - pad[1]), float(b[1] + pad[1])]
    return {"name": name, "samples": samples, "epoch": epoch, "axis": axis_label,
            "lo": lo.tolist(), "hi": hi.tolist(), "xy": b64(q), "bounds": bounds}


@torch.no_grad()
def decoded_grid(run, proj, bounds, n: int) -> dict:
    """The decoder at the centres of an n x n grid over the checkpoint view's visible plane
    (row 0 at the top); plane points are mapped back to latent space by the projection."""
    z = proj.inverse(draw.plane_points(bounds, n))
    images = draw.decoded(run.model, run.data, z)
    return {"n": n, "bounds": list(bounds), "z": np.round(z, 6).tolist(), "tiles": sprite(images)}


def recorded_epochs(run, proj, max_epochs: int):
    """Views of the probe latents the run recorded (frames/latents_XXXX.npy), and the probe's
    samples; ([], None) for runs without them. Raw latents stay raw; otherwise each epoch gets
    its own PCA, its axes' signs following the epoch before so the picture does not flip."""
    frames = run.run_dir / "frames"
    files = sorted(frames.glob("latents_*.npy"))
    if not files or not (frames / "probe.npz").is_file():
        return [], None
    probe = np.load(frames / "probe.npz")
    index = probe["index"]
    if len(files) > max_epochs:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_epochs).round().astype(int)]
    views, ref = [], proj if isinstance(proj, draw.PCA) else None
    for f in files:
        z = np.load(f).astype(np.float64)
        if len(z) != len(index):
            continue  # recorded with another probe size (e.g. before a resume with new settings)
        if isinstance(proj, draw.Raw):
            plane, label = proj.transform(z), proj.label
        else:
            ref = draw.PCA(ref)
            plane, label = ref.fit(z), "PCA"
        epoch = int(f.stem.split("_")[1])
        views.append(view(f"epoch {epoch} · validation probe", "probe", plane, epoch, label))
    order = index.astype(np.int64)
    enc = encode_split(run, run.data.val, order)
    del enc["recon"]  # the model of those epochs is gone: a reconstruction would mislead
    return views, pack_samples(run.data, order, enc, split=run.data.val)


def serve(path: Path, port: int) -> None:
    """Serve the one page on 127.0.0.1 (nothing else in the folder) until Ctrl-C."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = path.read_bytes()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            # Only pages asked for by this machine's name: a page elsewhere that makes the browser
            # look up its own name as 127.0.0.1 (DNS rebinding) sends its own Host and gets nothing.
            host = self.headers.get("Host", "").rsplit(":", 1)[0].strip("[]")
            if host not in ("127.0.0.1", "localhost"):
                self.send_error(421, "this server answers to 127.0.0.1 and localhost only")
                return
            ok = self.path in ("/", "/explorer.html", f"/{path.name}")
            try:
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body) if ok else 0))
                self.end_headers()
                if ok:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass   # the browser went away mid-page: nothing to answer

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Page)
    print(f"serving http://127.0.0.1:{httpd.server_address[1]}/  (Ctrl-C to stop)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
