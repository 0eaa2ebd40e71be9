"""Frames -> MP4 (H.264, yuv420p) or GIF, with imageio-ffmpeg's bundled ffmpeg.
Imports neither torch nor Hydra, so `aexp render` starts fast."""
from pathlib import Path

import numpy as np
from PIL import Image

from aexp.errors import ArgumentParser, RenderError


def frame_paths(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "frames").glob("epoch_*.png"))


def _load(paths: list[Path]) -> list[np.ndarray]:
    frames = []
    for p in paths:
        try:
            frames.append(np.asarray(Image.open(p).convert("RGB")))
        except OSError as e:
            raise RenderError(f"cannot read frame {p}: {e}") from None
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) > 1:
        raise RenderError(f"frames in {paths[0].parent} have different sizes: "
                          f"{', '.join(f'{w}x{h}' for h, w in sorted(sizes))}")
    return frames


def _even(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: pad one white row/column where needed."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


def render(run_dir: Path, out: Path | None = None, fps: float = 10, gif: bool = False) -> Path:
    """Write the run's frames as a video, one video frame per epoch frame; return its path."""
    run_dir = Path(run_dir)
    paths = frame_paths(run_dir)
    if not paths:
        raise RenderError(f"no frames in {run_dir / 'frames'} (expected epoch_0000.png, ...)")
    frames = _load(paths)
    out = Path(out) if out else run_dir / ("latent.gif" if gif else "latent.mp4")
    return write_video(out, frames, fps, gif)


def write_video(out: Path, frames: list[np.ndarray], fps: float = 10, gif: bool = False) -> Path:
    """Write RGB uint8 frames (all one size) as an MP4, or a looping GIF when `gif` or the name
    ends in .gif. Every video aexp writes goes through here."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if gif or out.suffix.lower() == ".gif":
            imgs = [Image.fromarray(f) for f in frames]
            imgs[0].save(out, save_all=True, append_images=imgs[1:], loop=0,
                         duration=max(1, round(1000 / fps)))
        else:
            _write_mp4(out, [_even(f) for f in frames], fps)
    except OSError as e:
        raise RenderError(f"cannot write {out}: {e.strerror or e}") from None
    return out


def _write_mp4(out: Path, frames: list[np.ndarray], fps: float) -> None:
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    with open(out, "ab"):   # fail early and clearly on an unwritable destination
        pass
    writer = imageio_ffmpeg.write_frames(
        str(out), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        macro_block_size=1, quality=8, output_params=["-movflags", "+faststart"])
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()


def count_video_frames(path: Path) -> int:
    """Number of frames ffmpeg decodes from a video (used by tests and the summary)."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    next(gen)  # metadata
    return sum(1 for _ in gen)


def targets(path: Path) -> list[Path]:
    """A run folder renders itself; a multirun folder renders each job folder with frames."""
    path = Path(path)
    if not path.is_dir():
        raise RenderError(f"no such folder: {path}")
    if (path / "frames").is_dir():
        return [path]
    jobs = sorted(p.parent for p in path.glob("*/frames") if p.is_dir())
    if not jobs:
        raise RenderError(f"no frames in {path} or its job folders (expected frames/epoch_0000.png)")
    return jobs


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="aexp render",
                                 description="Turn a run's per-epoch latent frames into a video.")
    ap.add_argument("run_dir", type=Path, help="run folder, or a multirun folder (renders each job)")
    ap.add_argument("--fps", type=float, default=10, help="frames per second (default 10)")
    ap.add_argument("--out", type=Path, help="output file (default RUN_DIR/latent.mp4)")
    ap.add_argument("--gif", action="store_true", help="write an animated GIF instead of MP4")
    args = ap.parse_args(argv)
    if args.fps <= 0:
        raise RenderError(f"--fps must be positive, got {args.fps}")
    jobs = targets(args.run_dir)
    if args.out and len(jobs) > 1:
        raise RenderError("--out names one file but the folder holds several runs")
    for job in jobs:
        out = render(job, args.out, args.fps, args.gif)
        print(f"wrote {out} ({len(frame_paths(job))} frames)")
    return 0
