"""Faults during training: SIGINT/SIGTERM become a request to stop at the next safe point (a step
boundary, where the whole training state can be saved and resumed exactly), and a non-finite
loss becomes a message naming where it happened."""
import signal
import threading

import torch
import torch.distributed

from aexp import distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: while active, SIGINT and SIGTERM only record themselves; the loop asks
    `stop.requested()` at each safe point. A second signal of the same kind acts at once (the
    previous handler is back), so a stuck run can still be killed with a second Ctrl-C."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        # Python delivers signals to the main thread only; elsewhere (a test runner's worker
        # thread) there is nothing to install and the run simply cannot be stopped this way.
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
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
