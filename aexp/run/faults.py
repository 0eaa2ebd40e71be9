"""Faults during training: SIGINT/SIGTERM become a request to stop at the next safe point (a step
boundary, where the whole training state can be saved and resumed exactly), and a non-finite
loss becomes a message naming where it happened. Inside a submitit job (hydra/launcher=slurm or
submitit_local) the scheduler's timeout/preemption signal is caught the same way and, once the
checkpoint is saved, handed on to submitit, which requeues the job: the requeued job finds
checkpoints/last.pt in its folder and continues from the very step it stopped at."""
import os
import signal
import sys
import threading

import torch
import torch.distributed

from aexp.run import distributed
from aexp.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def requeue_signal() -> signal.Signals | None:
    """The signal submitit sends a job before its time limit (SLURM's --signal) or on preemption,
    and answers by requeuing it: USR2 unless SUBMITIT_PREEMPT_SIGNAL names another. None outside
    a submitit job. (SIGTERM is not one: `scancel` sends it, and a cancelled job must stay so.)"""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


class StopSignals:
    """Context manager: while active, SIGINT and SIGTERM (and submitit's requeue signal) only
    record themselves; the loop asks `stop.requested()` at each safe point. A second signal of the
    same kind acts at once (the previous handler is back), so a stuck run can still be killed with
    a second Ctrl-C."""

    def __init__(self):
        self.signum = None
        self._previous = {}
        self._requeue = requeue_signal()

    def __enter__(self):
        # Python delivers signals to the main thread only; elsewhere (a test runner's worker
        # thread) there is nothing to install and the run simply cannot be stopped this way.
        # A signal the process was started ignoring stays ignored (a shell without job control
        # starts `cmd &` with SIGINT ignored): taking it would let a signal meant to pass by stop
        # the run.
        if threading.current_thread() is threading.main_thread():
            for s in (*SIGNALS, self._requeue) if self._requeue else SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, exc_type, exc, tb):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        handler = self._previous.get(self._requeue)
        stopped = exc_type is None or issubclass(exc_type, Interrupted)
        if self.signum is not None and self.signum == self._requeue and callable(handler) and stopped:
            # The run is saved (or finished): now submitit's own handler may act. It requeues the
            # job and exits, or raises why it will not (e.g. timed out too many times). Swallowing
            # the signal instead would leave a job that ends unfinished and is never requeued.
            print(f"aexp: {exc or 'training finished'}; {self.name} handed on to submitit, which "
                  f"requeues the job", file=sys.stderr, flush=True)
            handler(self.signum, None)
        return False

    def requested(self) -> bool:
        """Whether to stop now. Under DDP the ranks agree (one tiny all-reduce), so they all stop
        at the same step: a rank stopping alone would leave the others waiting forever."""
        signum = _agree(self.signum or 0, torch.distributed.ReduceOp.MAX)
        if signum and self.signum is None:
            self.signum = signum
        return bool(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def finite(loss: torch.Tensor) -> bool:
    """Whether a step's loss is finite. This reads the value back to the host (one sync per step
    on a GPU): the price of deciding before `optimizer.step()` whether a batch may update the
    weights, as AMP's GradScaler does. Under DDP every rank takes the same decision."""
    return bool(_agree(int(torch.isfinite(loss)), torch.distributed.ReduceOp.MIN))


def _agree(value: int, op) -> int:
    """`value` reduced over the DDP ranks (itself outside torchrun)."""
    if not distributed.active():
        return value
    t = torch.tensor([value])
    torch.distributed.all_reduce(t, op=op)
    return int(t)


def describe_terms(terms: dict) -> str:
    return ", ".join(f"{k}={float(torch.as_tensor(v).detach()):.6g}" for k, v in terms.items())


class FirstNonFinite:
    """The first step of an epoch whose loss was not finite, with that step's loss terms,
    recorded on the device: no host sync per step. `check()` reads it once (at the epoch's end).
    This is the default policy's watch (stop): the steps after a bad one are wasted work, but
    nothing they compute is saved, since the run stops before the epoch's checkpoint."""

    def __init__(self):
        self.step = self.values = self.names = None

    def record(self, step: int, terms: dict) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        if self.step is None:
            self.names = list(terms)
            self.step = torch.full((), -1, dtype=torch.long, device=values.device)
            self.values = torch.zeros_like(values)
        new = (self.step < 0) & ~torch.isfinite(values[self.names.index("loss")])
        self.step = torch.where(new, step, self.step)
        self.values = torch.where(new, values, self.values)

    def check(self) -> tuple[int, dict] | None:
        """(step, {term: value}) of the first non-finite loss on any rank, or None."""
        step = -1 if self.step is None else int(self.step)
        if _agree(int(step >= 0), torch.distributed.ReduceOp.MAX) == 0:
            return None
        if step < 0:    # another rank saw it
            return step, {}
        return step, dict(zip(self.names, self.values.tolist()))
