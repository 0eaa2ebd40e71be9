"""Which arithmetic a run trains in (`train.precision`): fp32, or bf16 autocast, and what `auto`
means on the machine at hand. The CPU's bf16 support is read from /proc/cpuinfo (AMX-BF16 tile
units, AVX512-BF16 vector instructions), so the decision is cheap and says why it was made."""
import json
import platform
from pathlib import Path

import torch

from aexp.io import atomic_write
from aexp.models.cost import profile
from aexp.run.threads import waits_sleep

CPUINFO = Path("/proc/cpuinfo")
RUN_INFO = "run_info.json"   # in the run folder: the precision trained in, and the machine


def cpu_info() -> dict:
    """{model, amx_bf16, avx512_bf16} of this machine's CPU (the flags False where unknown,
    e.g. on a system without /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags":
            flags = set(value.split())
        if key == "flags" and model:
            break   # the first processor says it for all
    return {"model": model, "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}


# train.precision=auto on the CPU: bf16 autocast when the CPU has AMX-BF16 (matrix tiles that
# multiply bf16; oneDNN uses them for matmuls and convolutions) and a training step's forward pass
# costs at least this many FLOPs, so the casts autocast adds are small beside the products.
# Measured (`make bench --only precision`, docs/explanation/performance-cpu.md) on this project's
# 2-core Xeon with AMX-BF16, 1 thread, fp32 vs bf16 A B A B, as (forward MFLOP per step: bf16
# speed-up): dense MLPs 13: 0.17x, 120: 0.76x, 205: 1.07x, 478: 1.51x; conv AEs 32: 1.04x,
# 92: 1.09x, 369: 1.43x, 1477: 1.53x; VQ-VAE 231: 1.28x, 925: 1.64x; the published 32x32 baseline
# 1296: 1.58x; ResNet-18 AE 7267: 1.15x; pooling CNN 11115: 2.75x; the default colours model
# (17 parameters) 0.91x. The same CPU with oneDNN kept off AMX (ONEDNN_MAX_CPU_ISA=
# AVX512_CORE_BF16, i.e. a CPU with AVX512-BF16 only) ran every family's bf16 at 0.68-0.98x, and
# without bf16 instructions (AVX512_CORE) at 0.30-0.88x: fp32 there.
MIN_STEP_FLOPS = 200e6
# ... and only when torch computes with one thread. In aexp's own loop on this 2-core machine,
# shared with other processes (load average 3-5), `model=conv loss=bce` on MNIST at batch 128 took
# fp32 / bf16: 10.8 / 7.3 s for 60 steps at 1 thread, but 8.7 / 46.5 s at 2 threads, and at 2
# threads 8.5 / 38.7 s (transpose upsampling), 12.6 / 47.5 s (nearest), 8.9 / 34.4 s (NCHW).
# With OMP_WAIT_POLICY=ACTIVE instead of the CLI's PASSIVE, 17.3 / 19.3 s: bf16's many short
# parallel regions (the casts) each wake a sleeping thread. So at 2 threads auto stays fp32 and
# the banner says how to get bf16's speed (train.threads=1 train.precision=bf16); a joblib sweep
# of 2 jobs on 2 cores (one thread each, aexp.run.threads) gets bf16. On quiet cores the CLI
# now keeps libgomp's spinning waits (aexp.cli.openmp_waits), and there bf16 at 2 threads paid as
# at 1 (bench --only precision --threads 2, quiet: dense MLP 1.29x, conv AE 1.61x, pooling CNN
# 2.61x, ResNet-18 1.08x, VQ-VAE 1.42x, 32x32 baseline 1.42x; under 200 MFLOP 0.77-0.87x). auto
# still keeps fp32 at 2 threads, so that one command trains in one arithmetic whatever the load
# when it starts; the banner names train.precision=bf16 instead.


def legacy(device) -> str:
    """What `auto` meant before the CPU rule: bf16 on CUDA, fp32 on the CPU. A run saved then
    (its folder has no run_info.json) resumes in it."""
    return "bf16" if device.type == "cuda" else "fp32"


def resolve(setting: str, device, step_flops=None, recorded: str | None = None,
            info: dict | None = None, threads: int = 1) -> tuple[str, str]:
    """(precision, why) a run trains in: fp32 or bf16. `setting` is train.precision;
    `step_flops` a callable giving a training step's forward FLOPs (returning None when
    unknown; only called when the rule needs it); `recorded` the precision the run being
    resumed trained in (`auto` keeps it, so a resume on another machine never changes the
    arithmetic silently);
    `info` this CPU's `cpu_info()` (read when None); `threads` torch's CPU threads."""
    if setting in ("fp32", "bf16"):
        changed = f"; the run trained in {recorded} before" if recorded and recorded != setting else ""
        return setting, f"train.precision{changed}"
    if recorded:
        return recorded, "auto: as the run started"
    if device.type == "cuda":
        return "bf16", "auto: CUDA"
    info = info or cpu_info()
    if not info["amx_bf16"]:
        return "fp32", "auto: no AMX-BF16 on this CPU"
    flops = step_flops() if step_flops else None
    if flops is None or flops < MIN_STEP_FLOPS:
        return "fp32", f"auto: a step under {MIN_STEP_FLOPS / 1e6:g} MFLOP"
    if threads > 1:   # auto stays one arithmetic whatever the load; the hint follows the waits
        if waits_sleep():
            return "fp32", (f"auto: {threads} threads; bf16 paid at 1 thread: train.threads=1 "
                            f"train.precision=bf16")
        return "fp32", (f"auto: {threads} threads; with OpenMP's spinning waits bf16 paid here "
                        f"too: train.precision=bf16")
    return "bf16", "auto: AMX-BF16 CPU; train.precision=fp32 to keep fp32"


def choose(setting: str, device, model, data, batch: float, resume_from: Path | None) -> tuple[str, str]:
    """`resolve` for a run: a step's forward FLOPs counted on one training sample times the
    samples a step takes here, `batch` (only when the rule needs them), and a resumed run's
    precision read from its folder."""
    def step_flops():
        x, _ = data.batch(data.train, torch.arange(1, device=data.train.x.device))
        p = profile(model, x)
        return None if p is None else p.flops * batch
    return resolve(setting, device, step_flops, recorded(resume_from, device),
                   threads=torch.get_num_threads())


def recorded(resume_from: Path | None, device) -> str | None:
    """The precision the run continued from `resume_from` (its checkpoints/last.pt) trained in,
    from its folder's run_info.json; a run from before that file trained in `legacy` (the folder
    may come from anyone: anything but fp32 or bf16 there counts as absent). None: a fresh run."""
    if resume_from is None:
        return None
    try:
        value = json.loads((Path(resume_from).parent.parent / RUN_INFO).read_text()).get("precision")
    except (OSError, ValueError, AttributeError):
        value = None
    return value if value in ("fp32", "bf16") else legacy(device)


def record(run_dir: Path, precision: str, why: str, device) -> None:
    """Write RUN_DIR/run_info.json: the precision this run trains in (what a resume keeps), why,
    and the machine it ran on, one entry per start or resume."""
    path = Path(run_dir) / RUN_INFO
    try:
        sessions = json.loads(path.read_text()).get("sessions", [])
        sessions = sessions if isinstance(sessions, list) else []
    except (OSError, ValueError, AttributeError):
        sessions = []
    sessions.append({"precision": precision, "why": why, "device": str(device),
                     "threads": torch.get_num_threads(), "cpu": cpu_info(), "torch": torch.__version__})
    info = {"precision": precision, "sessions": sessions}
    atomic_write(path, lambda f: f.write(json.dumps(info, indent=1).encode()))
