"""`make bench --only precision` (and `--only compile`): fp32 against bf16 autocast on the CPU, per
model family, and torch.compile (inductor) on the CPU for the small models.

Precision: for each family (dense MLP, conv AE, pooling CNN, ResNet AE, VQ-VAE, the published
32x32 baseline, and two small models where bf16 does not pay: the default colours model and a
784-64-2 MLP) two copies of one model from one seed train on the same batches of smooth random
images, one step of each in turn (A B A B in one process, so a slow spell of a shared machine
lands on both). Each step runs the way aexp's loop runs it: the config's loss and optimiser, the
memory layout `train.channels_last=auto` picks, the forward and loss inside
`aexp.run.steps.autocast`. Reported: median ms per step and samples/s of each, the bf16 speed-up
(median of the per-pair ratios), and the loss after the N steps of each copy, measured in fp32 on
a held-out batch. The CPU's model name and its AMX-BF16 / AVX512-BF16 flags head the table.

Compile: the same models eager vs `torch.compile` (fp32), the first step (compilation) timed
apart from the median of the steps after it."""
import statistics
import time

import torch

from aexp.assemble import build, build_loss
from aexp.models import cost, layout
from aexp.run import precision as prec
from aexp.run.steps import autocast

# family -> (config overrides, input shape, target shape, batch)
FAMILIES = {
    "colours linear 3-2-3 (the default run)": (["model=linear"], (3,), (3,), 64),
    "small MLP 784-64-2": (["model=mlp", "model.hidden=[64]", "loss=bce"], (1, 28, 28), (1, 28, 28), 64),
    "dense MLP 784-512-128-2": (["model=mlp", "loss=bce"], (1, 28, 28), (1, 28, 28), 256),
    "conv AE [32,64,128]": (["model=conv", "loss=bce"], (1, 28, 28), (1, 28, 28), 128),
    "pooling CNN w32 p2 (L -> ab)": (["model=pooling_cnn", "loss=mse"], (1, 64, 64), (2, 64, 64), 32),
    "ResNet-18 AE": (["model=resnet", "loss=mse"], (3, 32, 32), (3, 32, 32), 64),
    "VQ-VAE [32,64]": (["model=vqvae"], (1, 28, 28), (1, 28, 28), 128),
    "published 32x32 baseline": (["model=baseline32", "model.channels=[12,24]", "model.grid=[16,8]",
                                  "model.head=false", "loss=mse", "loss.reduction=mean"],
                                 (3, 32, 32), (3, 32, 32), 128),
}
COMPILE_FAMILIES = ("dense MLP 784-512-128-2", "conv AE [32,64,128]", "published 32x32 baseline")


def images(n: int, shape, seed: int) -> torch.Tensor:
    """Smooth random images in [0, 1] (low-resolution noise upsampled): data with structure,
    so the loss after a few steps says something."""
    g = torch.Generator().manual_seed(seed)
    if len(shape) == 1:
        return torch.rand(n, *shape, generator=g)
    c, h, w = shape
    low = torch.randn(n, c, max(2, h // 7), max(2, w // 7), generator=g)
    return torch.sigmoid(2 * torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear",
                                                             align_corners=False))


def _setup(compose, overrides, in_shape, out_shape, seed=0):
    cfg = compose(overrides)
    torch.manual_seed(seed)
    model = build(cfg.model, in_shape=in_shape, out_shape=out_shape)
    x = images(1, in_shape, 99)
    if cost.channels_last("auto", model, torch.device("cpu"), x):
        model = layout.channels_last(model)
    return model, build_loss(cfg.loss, data_size=4096), build(cfg.optimizer, params=model.parameters())


def _target(x, out_shape):
    """The target for an input batch: the input itself, or for L -> ab two channels made from it."""
    return x if x.shape[1:] == out_shape else torch.cat([x, 1 - x], 1)[:, :out_shape[0]]


def _step(model, loss_fn, opt, ctx, x, y) -> tuple[float, float]:
    """(seconds, loss) of one training step."""
    t0 = time.perf_counter()
    with ctx:
        loss = loss_fn(model(x), x, y, model)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0, float(loss.detach())


@torch.no_grad()
def _held_out_loss(model, loss_fn, x, y) -> float:
    model.eval()
    loss = float(loss_fn(model(x), x, y, model)["loss"])
    model.train()
    return loss


def precision_rows(compose, steps: int, warmup: int = 3, families=None) -> dict:
    """fp32 vs bf16 autocast per family (see the module docstring)."""
    cpu = torch.device("cpu")
    out = {"cpu": prec.cpu_info(), "steps": steps, "threads": torch.get_num_threads(), "rows": {}}
    for name, (overrides, in_shape, out_shape, batch) in FAMILIES.items():
        if families and name not in families:
            continue
        data = images(batch * 8, in_shape, 0)
        held = images(batch, in_shape, 1)
        runs = {p: _setup(compose, overrides, in_shape, out_shape) for p in ("fp32", "bf16")}
        times = {p: [] for p in runs}
        t_start = time.perf_counter()
        for i in range(warmup + steps):
            x = data[(i % 8) * batch:(i % 8 + 1) * batch]
            y = _target(x, out_shape)
            for p, (model, loss_fn, opt) in runs.items():
                dt, _ = _step(model, loss_fn, opt, autocast(p, cpu), x, y)
                if i >= warmup:
                    times[p].append(dt)
        y_held = _target(held, out_shape)
        loss = {p: _held_out_loss(m, lf, held, y_held) for p, (m, lf, _) in runs.items()}
        fp32, bf16 = (statistics.median(times[p]) for p in ("fp32", "bf16"))
        row = {"batch": batch, "fp32_ms": fp32 * 1e3, "bf16_ms": bf16 * 1e3,
               "fp32_samples_per_s": batch / fp32, "bf16_samples_per_s": batch / bf16,
               "speedup": statistics.median(a / b for a, b in zip(times["fp32"], times["bf16"])),
               "fp32_loss": loss["fp32"], "bf16_loss": loss["bf16"],
               "loss_rel_diff": abs(loss["bf16"] - loss["fp32"]) / abs(loss["fp32"]),
               "seconds": time.perf_counter() - t_start}
        out["rows"][name] = row
        print(f"precision {name}: {row}", flush=True)
    return out


def compile_rows(compose, steps: int, families=COMPILE_FAMILIES) -> dict:
    """Eager vs torch.compile (inductor), fp32, for the small models: the first compiled step
    (compilation included) and the median step after it, A B A B."""
    rows = {}
    cpu = torch.device("cpu")
    for name in families:
        overrides, in_shape, out_shape, batch = FAMILIES[name]
        data = images(batch * 8, in_shape, 0)
        eager = _setup(compose, overrides, in_shape, out_shape)
        model, loss_fn, opt = _setup(compose, overrides, in_shape, out_shape)
        compiled = (torch.compile(model), loss_fn, opt)
        try:
            x = data[:batch]
            first, _ = _step(*compiled, autocast("fp32", cpu), x, _target(x, out_shape))
        except Exception as e:   # inductor needs a working C++ compiler: say so instead of failing
            rows[name] = {"failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        times = {"eager": [], "compiled": []}
        for i in range(2 + steps):
            x = data[(i % 8) * batch:(i % 8 + 1) * batch]
            y = _target(x, out_shape)
            for k, run in (("eager", eager), ("compiled", compiled)):
                dt, _ = _step(*run, autocast("fp32", cpu), x, y)
                if i >= 2:
                    times[k].append(dt)
        e, c = (statistics.median(times[k]) for k in ("eager", "compiled"))
        rows[name] = {"batch": batch, "compile_first_step_s": first, "eager_ms": e * 1e3,
                      "compiled_ms": c * 1e3,
                      "speedup": statistics.median(a / b for a, b in zip(times["eager"], times["compiled"]))}
        print(f"compile {name}: {rows[name]}", flush=True)
        torch._dynamo.reset()
    return rows


def markdown(p: dict | None, c: dict | None) -> list[str]:
    lines = []
    if p:
        cpu = p["cpu"]
        yes = lambda flag: "yes" if cpu[flag] else "no"
        lines += ["", f"fp32 vs bf16 autocast on the CPU: {cpu['model']} · amx_bf16 {yes('amx_bf16')} · "
                  f"avx512_bf16 {yes('avx512_bf16')} "
                  f"· {p['threads']} thread(s) · {p['steps']} steps each, A B A B; loss = held-out batch "
                  f"after the steps, in fp32", "",
                  "| model (batch) | fp32 samples/s | bf16 samples/s | bf16 speed-up | fp32 loss | bf16 loss |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, r in p["rows"].items():
            lines.append(f"| {name} ({r['batch']}) | {r['fp32_samples_per_s']:,.0f} "
                         f"| {r['bf16_samples_per_s']:,.0f} | {r['speedup']:.2f}× | {r['fp32_loss']:.5g} "
                         f"| {r['bf16_loss']:.5g} |")
    if c:
        lines += ["", "torch.compile (inductor) on the CPU, fp32, A B A B:", "",
                  "| model (batch) | first compiled step s | eager ms/step | compiled ms/step | speed-up |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, r in c.items():
            if "failed" in r:
                lines.append(f"| {name} | failed: {r['failed']} | – | – | – |")
            else:
                lines.append(f"| {name} ({r['batch']}) | {r['compile_first_step_s']:.1f} "
                             f"| {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | {r['speedup']:.2f}× |")
    return lines
