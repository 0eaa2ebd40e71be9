"""How many CPU threads torch computes with (`train.threads`). Torch's default, one thread per
core, suits one large job on a quiet machine: every operation is split over all threads and ends
when the slowest finishes, so on a shared machine the threads wait for cores other processes
hold, and a small step pays that wait on every one of its many short operations (the default
colours run: 1.085 s per epoch at torch's 2 threads next to one busy process, 0.209 s at 1).

`auto` decides from what one training step costs (counted, `aexp.models.cost.profile`) and the
cores this process may use, shared among the aexp jobs running at once on this machine."""
import os

import torch

from aexp.data.decode import usable_cores as cores
from aexp.errors import ConfigError
from aexp.models.cost import profile

# Forward and backward FLOPs of one training step each thread must get before one more thread
# pays for itself. Training steps at 1 vs 2 threads on this project's 2-core EPYC, quiet machine,
# batch 64 (FLOPs per step: 1 thread / 2 threads): dense AEs of 0.03, 0.1, 1.8 and 6.7 MFLOP lost
# 5-8% with 2 threads (0.23-0.38 ms per step, all of it synchronisation); 13 MFLOP gained 1.11x,
# 52 MFLOP 1.36x, 359 MFLOP 1.67x, conv AEs of 208 MFLOP 1.38x and 2.2 GFLOP 1.71x. Beside one
# spinning process the crossover stayed near 10 MFLOP (6.7 MFLOP 1.02x, 13 MFLOP 1.08x, 52 MFLOP
# 1.20x), though bigger steps lost there too while OpenMP's waiting threads spun (208 MFLOP
# 0.55x), which the passive wait policy the CLI sets largely removes (aexp.cli.main). So a thread
# per 10 MFLOP of the step, up to this process's share of the cores: under 20 MFLOP, one.
FLOPS_PER_THREAD = 10e6
# The backward pass costs about twice the forward (gradients for the inputs and for the weights).
STEP_PER_FORWARD = 3
JOBS_ENV = "AEXP_JOBS"   # aexp jobs running at once on this machine; the CLI sets it for joblib sweeps

_torch_default: int | None = None   # torch's own count in this process, before aexp changed it


def jobs_at_once() -> int:
    """aexp processes computing at once on this machine: the jobs a sweep runs side by side
    (AEXP_JOBS: the CLI sets it from the joblib launcher's n_jobs; set it yourself when starting
    several runs by hand) times the processes torchrun starts per machine (LOCAL_WORLD_SIZE)."""
    n = 1
    for var in (JOBS_ENV, "LOCAL_WORLD_SIZE"):
        value = os.environ.get(var, "1")
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"{var} must be a positive integer, got {value!r}")
        n *= int(value)
    return n


def choose(setting, step_flops: float | None, device: torch.device) -> tuple[int | None, str]:
    """(threads, why) for `train.threads`: an integer as given; null = torch's default (None);
    auto = one thread per FLOPS_PER_THREAD of the step (`step_flops`, None when unknown), at
    least 1, at most this process's share of the cores (cores / jobs at once, at least 1)."""
    if setting is None:
        return None, "torch's default"
    if setting != "auto":
        return int(setting), "train.threads"
    jobs = jobs_at_once()
    share = max(1, cores() // jobs)
    where = f"{cores()} core{'s' * (cores() != 1)} / {jobs} job{'s' * (jobs != 1)}"
    if device.type == "cuda" or step_flops is None:
        # the step runs on the GPU (CPU threads only serve frames and evaluation), or its cost
        # is unknown: the share, as torch would choose were it alone
        return share, f"auto: {where}"
    mflop = f"~{step_flops / 1e6:.3g} MFLOP per step"
    by_work = int(step_flops // FLOPS_PER_THREAD)
    if by_work <= 1 or share == 1:
        return 1, f"auto: {'small step' if by_work <= 1 else where}, {mflop}"
    if by_work < share:
        return by_work, f"auto: {mflop}, a thread per {FLOPS_PER_THREAD / 1e6:.0f} MFLOP"
    return share, f"auto: {where}, {mflop}"


def apply(setting, model, data, batch: float, device: torch.device) -> str:
    """Set torch's CPU threads for a run of `model` on `data` at `batch` samples per step and
    process; return the run banner's words for it, e.g. "threads 1 (auto: small step, ...)"."""
    global _torch_default
    if _torch_default is None:
        _torch_default = torch.get_num_threads()
    flops = None
    if setting == "auto" and device.type != "cuda":
        x, _ = data.batch(data.train, torch.arange(min(1, len(data.train)), device=data.train.x.device))
        p = profile(model, x)
        flops = None if p is None else STEP_PER_FORWARD * p.flops * batch
    n, why = choose(setting, flops, device)
    # null puts torch's default back: a process that trains twice (a joblib worker, a test
    # session) would otherwise keep the previous run's count
    torch.set_num_threads(n or _torch_default)
    return f"threads {torch.get_num_threads()} ({why}{waits()})"


def waits() -> str:
    """The banner's words on how idle OpenMP threads wait (aexp.cli.openmp_waits decides), for
    runs that compute with more than one thread on the CPU."""
    if torch.get_num_threads() < 2:
        return ""
    return "; OpenMP waits " + wait_mode()


def wait_mode() -> str:
    """How idle OpenMP threads wait, in the words the banner and the bench print: sleep | spin."""
    return "sleep" if waits_sleep() else "spin"


def waits_sleep() -> bool:
    """Whether idle OpenMP threads sleep at once (OMP_WAIT_POLICY=PASSIVE), rather than spin."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
