"""The NaN policy (stop naming epoch, step and terms, keeping the last good checkpoint; or skip
the bad batch) and the signal flag, in-process on tiny colour runs."""
import re
import signal

import pytest
import torch
from omegaconf import open_dict

from aexp import checkpoint
from aexp.errors import TrainingDiverged
from aexp.run.faults import StopSignals
from aexp.losses import Term
from aexp.io import read_csv
from aexp.run.train import train


class NaNOnCalls(Term):
    """A zero loss term that is NaN on the given training-mode calls (1 = the pre-flight check,
    then one call per training step)."""

    def __init__(self, calls, weight=1.0):
        super().__init__(weight)
        self.bad, self.calls = set(calls), 0

    def __call__(self, out, x, y, model, reduction):
        if not model.training:
            return torch.zeros(len(x))
        self.calls += 1
        return torch.full((len(x),), float("nan") if self.calls in self.bad else 0.0)


def tiny_cfg(compose_cfg, calls, *extra):
    cfg = compose_cfg(["train.epochs=2", "train.batch_size=10", "dataset.n_train=100",
                       "dataset.n_val=20", "dataset.n_test=10", "frames.enabled=false", *extra])
    with open_dict(cfg):
        cfg.loss.terms.bomb = {"_target_": "test_faults.NaNOnCalls", "calls": list(calls)}
    return cfg


def test_nan_stops_naming_epoch_step_and_terms_and_keeps_the_last_checkpoint(compose_cfg, tmp_path):
    cfg = tiny_cfg(compose_cfg, [14])       # 10 steps per epoch: epoch 2, step 2
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, tmp_path)
    msg = str(err.value)
    assert msg.startswith("loss is not finite at epoch 2, step 2 (")
    assert re.search(r"mse=[0-9.e-]+, bomb=nan, loss=nan", msg)
    assert f"last good checkpoint is {tmp_path / 'checkpoints' / 'last.pt'}" in msg
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_csv(tmp_path / "metrics.csv")] == [1]
    assert TrainingDiverged("").exit_code == 3


def test_skip_nonfinite_skips_bad_batches_and_counts_them(compose_cfg, tmp_path):
    cfg = tiny_cfg(compose_cfg, [4, 8, 12, 16, 20], "train.skip_nonfinite=true")
    row = train(cfg, tmp_path)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["skipped_batches"] for r in rows] == [2, 3]
    assert row["train_loss"] == row["train_loss"]      # finite: skipped batches left no NaN
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_every_batch_bad_is_a_clear_stop(compose_cfg, tmp_path):
    cfg = tiny_cfg(compose_cfg, range(2, 12), "train.skip_nonfinite=true")
    with pytest.raises(TrainingDiverged, match="every batch of epoch 1 had a non-finite loss"):
        train(cfg, tmp_path)


@pytest.fixture
def sigint_default():
    """Python's own SIGINT handler for the test: a process started in the background by a shell
    without job control (`make test &`) begins with SIGINT ignored instead."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_signals_only_raise_a_flag_and_a_second_one_acts(sigint_default):
    with StopSignals() as stop:
        assert not stop.requested()
        signal.raise_signal(signal.SIGINT)
        assert stop.requested() and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):      # the previous handler is back
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_ignored_signal_stays_ignored(sigint_default):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        assert not stop.requested()
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL    # SIGTERM is still taken
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
