"""`aexp export RUN_DIR --format safetensors|onnx|pt2`: a trained run's model in a form other tools
load, each file checked against the model before the command says it is done.

- safetensors: `model.safetensors`, every tensor of the state dict (weights and buffers) and, as
  JSON metadata, the model's config and the data's shapes; `read_safetensors`
  (`aexp.load_safetensors`) rebuilds the model from it, `safetensors` alone reads both;
- onnx: `encoder.onnx` (x -> z) and `decoder.onnx` (z -> x_hat), by torch's dynamo exporter
  (it needs onnxscript), checked with ONNX Runtime;
- pt2: `encoder.pt2` and `decoder.pt2`, `torch.export` programs (`torch.export.load`).
A conditional model's graphs take the class labels (int64 [N]) as a second input, `labels`.
The graphs have a dynamic batch axis (exported at batch EXAMPLE, checked at batch CHECK) and the
run's own image size; they take the model's input as the run's data gives it (`task.normalize`
applied). They are `encode` and `decode`: a VAE's encoder gives the posterior mean μ (no
sampling), a VQ model's decoder snaps its input to the codebook (an ArgMin in ONNX).
`export.json` beside them says what was exported, from which run and checkpoint, and how far
the exported outputs were from the model's."""
import importlib.metadata
import importlib.util
import io
import json
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from aexp import trust
from aexp.assemble import allowed_targets, build, load_run
from aexp.errors import AexpError, ArgumentParser, CheckpointError
from aexp.io import atomic_write

FORMATS = ("safetensors", "onnx", "pt2")
# Modules each format needs beyond torch: the `export` extra of pyproject.toml.
NEEDS = {"safetensors": ("safetensors",), "onnx": ("onnx", "onnxscript", "onnxruntime"), "pt2": ()}
EXAMPLE, CHECK = 2, 5   # batch sizes: traced at one, checked at another (2, not 1: torch.export
                        # would treat a size-1 axis as a constant)
# Exported graphs run other kernels (ONNX Runtime's, or the same ones in another order): their
# outputs differ from the model's in the last bits, never by this much.
ATOL = RTOL = 1e-4
SAFETENSORS_FORMAT = "aexp-safetensors-1"


def require(fmt: str) -> None:
    """Refuse, in one line, a format whose packages are not installed (before any loading)."""
    missing = [m for m in NEEDS[fmt] if importlib.util.find_spec(m) is None]
    if missing:
        raise AexpError(f"--format {fmt} needs {', '.join(missing)}, which "
                        f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'aexp[export]'")


class Part(nn.Module):
    """A model's `encode` or `decode` as a module's forward: what the exporters take."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, t, labels=None):   # (labels: a conditional model's second input)
        method = getattr(self.model, self.method)
        return method(t) if labels is None else method(t, labels)


def parts(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None) -> list[tuple]:
    """(file stem, module, input names, output name, inputs) for the encoder and the decoder,
    each input a batch of CHECK: test inputs, and their codes; a conditional model's graphs
    take the class labels (int64 [N]) as a second input, `labels`."""
    model.eval()
    given = (labels,) if model.conditional else ()
    with torch.no_grad():
        z = model.encode(x, *given)
    names = ("labels",) if given else ()
    # eval() on the wrappers too: an exporter that restores a wrapper's mode afterwards would
    # otherwise put the model back into training mode (BatchNorm on batch statistics)
    return [("encoder", Part(model, "encode").eval(), ("x", *names), "z", (x, *given)),
            ("decoder", Part(model, "decode").eval(), ("z", *names), "x_hat", (z, *given))]


def batch_axes(inputs: tuple) -> tuple:
    """One dynamic batch axis shared by every input."""
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} for _ in inputs)


def check(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    diff = float((got.float() - want.float()).abs().max()) if got.numel() else 0.0
    if got.shape != want.shape or not torch.allclose(got.float(), want.float(), atol=ATOL, rtol=RTOL):
        raise AexpError(f"the exported {name} does not reproduce the model (shape {tuple(got.shape)} "
                        f"vs {tuple(want.shape)}, largest difference {diff:.3g}); nothing to trust in it")
    return diff


def _export_error(fmt: str, name: str, e: Exception) -> AexpError:
    text = " ".join(str(e).split())[:300] or type(e).__name__
    return AexpError(f"cannot export the {name} to {fmt}: {text} (AEXP_DEBUG=1 shows the traceback)")


def to_onnx(model: nn.Module, x: torch.Tensor, out: Path, labels=None) -> dict:
    """encoder.onnx and decoder.onnx; {file: largest difference from the model at batch CHECK}."""
    import onnxruntime
    found = {}
    for name, part, inp, outp, t in parts(model, x, labels):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the exporter's notes on its own internals
                program = torch.onnx.export(part, tuple(a[:EXAMPLE] for a in t), dynamo=True,
                                            input_names=list(inp), output_names=[outp], verbose=False,
                                            dynamic_shapes=batch_axes(t))
            data = program.model_proto.SerializeToString()
        except Exception as e:
            raise _export_error("ONNX", name, e) from e
        atomic_write(out / f"{name}.onnx", lambda f: f.write(data))
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {k: a.numpy() for k, a in zip(inp, t)})[0])
        with torch.no_grad():
            found[f"{name}.onnx"] = check(f"{name}.onnx", got, part(*t))
    return found


def to_pt2(model: nn.Module, x: torch.Tensor, out: Path, labels=None) -> dict:
    """encoder.pt2 and decoder.pt2 (torch.export programs); differences as `to_onnx`."""
    found = {}
    for name, part, _, _, t in parts(model, x, labels):
        try:
            program = torch.export.export(part, tuple(a[:EXAMPLE] for a in t),
                                          dynamic_shapes=batch_axes(t))
        except Exception as e:
            raise _export_error("pt2", name, e) from e
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        atomic_write(out / f"{name}.pt2", lambda f: f.write(buffer.getvalue()))
        buffer.seek(0)
        with torch.no_grad():   # the program as it will be loaded, not as it was traced
            found[f"{name}.pt2"] = check(f"{name}.pt2", torch.export.load(buffer).module()(*t), part(*t))
    return found


def to_safetensors(model: nn.Module, meta: dict, out: Path) -> dict:
    """model.safetensors: every tensor, the config as metadata; checked bit for bit on reading."""
    from safetensors.torch import load, save
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata={"format": SAFETENSORS_FORMAT,
                                 **{k: json.dumps(v) for k, v in meta.items()}})
    atomic_write(out / "model.safetensors", lambda f: f.write(data))
    back = load(data)
    same = set(back) == set(state) and all(back[k].dtype == v.dtype and torch.equal(back[k], v)
                                           for k, v in state.items())
    if not same:
        raise AexpError("model.safetensors does not hold the model's tensors exactly")
    return {"model.safetensors": 0.0}   # (bit for bit)


def read_safetensors(path: Path, device: str = "cpu") -> nn.Module:
    """The model of a `model.safetensors` export, in eval mode. Its config is untrusted input like
    a run folder's: only aexp's own targets, unless trusted (aexp.trust)."""
    from safetensors import safe_open
    if not Path(path).is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            meta, state = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != SAFETENSORS_FORMAT:
            raise CheckpointError(f"{path} is not a model exported by aexp (no aexp metadata)")
        model_cfg, in_shape, out_shape = (json.loads(meta[k]) for k in ("model", "in_shape", "out_shape"))
    except CheckpointError:
        raise
    except Exception as e:   # not safetensors, cut short, or metadata that is not ours
        raise CheckpointError(f"cannot read {path}: {' '.join(str(e).split())[:200]}") from None
    trust.check_config({"model": model_cfg}, allowed_targets(), path)
    if model_cfg.get("weights"):   # a pretrained file to start from: every weight is in `state`
        model_cfg["weights"] = None
    classes = {"num_classes": json.loads(meta["num_classes"])} if "num_classes" in meta else {}
    model = build(OmegaConf.create(model_cfg), in_shape=tuple(in_shape), out_shape=tuple(out_shape),
                  **classes)   # (a conditional model's number of classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its tensors do not fit its model: "
                              f"{str(e).strip().splitlines()[0][:200]}") from None
    model.eval()
    model.start_epoch(None)
    return model.to(device)


def export(run, fmt: str, out: Path, checkpoint: str) -> dict:
    """Write `fmt`'s files and export.json into `out`; return export.json's dict."""
    require(fmt)
    model = run.model.to(memory_format=torch.contiguous_format)   # (training keeps NHWC weights)
    data = run.data
    idx = torch.arange(CHECK, device=data.test.x.device) % len(data.test)
    x, _ = data.batch(data.test, idx)
    x = x.cpu().contiguous()
    labels = data.test.y[idx].cpu() if model.conditional else None
    with torch.no_grad():
        model.eval()
        z, extras = model.encode(x), model(x).extras
    config = OmegaConf.to_container(run.cfg, resolve=True)
    meta = {"model": config["model"], "in_shape": list(data.in_shape), "out_shape": list(data.out_shape),
            "config": config, **({"num_classes": model.num_classes} if model.conditional else {})}
    out = Path(out)
    writer = {"safetensors": lambda: to_safetensors(model, meta, out),
              "onnx": lambda: to_onnx(model, x, out, labels), "pt2": lambda: to_pt2(model, x, out, labels)}[fmt]
    diffs = writer()
    graphs, notes = fmt != "safetensors", []
    if "mu" in extras:
        notes.append("variational: the encoder gives the posterior mean mu (encode), no sample")
    if model.conditional:
        notes.append(f"conditional: encoder and decoder take the class labels (int64 [N], 0 to "
                     f"{model.num_classes - 1}) as a second input, `labels`")
    if model.codebook_size is not None:
        notes.append(f"vector-quantised: the decoder snaps its input to the nearest of "
                     f"{model.codebook_size} codebook vectors")
    info = {"format": fmt, "files": sorted(diffs), "run_dir": str(run.run_dir), "checkpoint": checkpoint,
            "epoch": run.state.get("epoch"), "model": config["model"], "dataset": data.name,
            "task": config.get("task"), "in_shape": meta["in_shape"], "out_shape": meta["out_shape"],
            "code_shape": list(z.shape[1:]), "dynamic_batch_axis": 0 if graphs else None, "notes": notes,
            "check": ({"batch": CHECK, "max_abs_diff": diffs} if graphs
                      else {"read_back": "every tensor identical"}),
            "versions": {m: importlib.metadata.version(m) for m in ("torch", *NEEDS[fmt])}}
    atomic_write(out / "export.json", lambda f: f.write(json.dumps(info, indent=2).encode()))
    return info


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="aexp export", description="Export a run's model: safetensors "
                        "(weights + config), onnx or pt2 (encoder and decoder graphs).")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--out", type=Path, help="folder for the files (default RUN_DIR/export/FORMAT)")
    ap.add_argument("--checkpoint", choices=["best", "last"], default="best",
                    help="which checkpoint (default best)")
    args = ap.parse_args(argv)
    require(args.format)   # before the run is loaded
    run = load_run(args.run_dir, which=args.checkpoint, device="cpu")
    out = args.out or args.run_dir / "export" / args.format
    info = export(run, args.format, out, args.checkpoint)
    diffs = info["check"].get("max_abs_diff")
    checked = (f"checked on a batch of {CHECK}: largest difference from the model "
               f"{max(diffs.values()):.2g}" if diffs else "every tensor read back identical")
    print(f"wrote {', '.join(info['files'])} and export.json in {out} ({checked})")
    return 0
