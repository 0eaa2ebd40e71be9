"""What the layering must not change, and when checks run: the default `aexp train` (seed 0)
writes the metrics it wrote before the layering (a golden copy of the first rows, from the
commit before it), and every value check refuses a bad setting before any data is loaded."""
import csv
from pathlib import Path

import pytest

from conftest import run_cli


GOLDEN = Path(__file__).parent / "golden" / "default_metrics.csv"
TIMING = ("seconds", "train_seconds", "frame_seconds")


def test_default_train_writes_the_golden_metrics(tmp_path, capsys):
    """The golden rows are the first 10 epochs of the whole default run (60 epochs, constant
    learning rate), so the default config cut to 10 epochs must reproduce them; the evaluation
    after training is left out (it writes no metrics row). Every column but the timing ones, to
    1e-6 relative: the same code on another CPU may differ in float rounding (summation order of
    its kernels), never by more; a change of data order, seeding, initialisation or loss changes
    these values in the first digits."""
    code, err = run_cli(["train", "train.epochs=10", "eval.enabled=false", f"hydra.run.dir={tmp_path}"],
                        capsys)
    assert code == 0, err[-1500:]
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    with open(GOLDEN) as f:
        golden = list(csv.DictReader(f))
    assert len(rows) == len(golden) == 10 and set(rows[0]) == set(golden[0]) | set(TIMING)
    for got, want in zip(rows, golden):
        for k, v in want.items():
            assert float(got[k]) == pytest.approx(float(v), rel=1e-6, abs=0), (got["epoch"], k)


@pytest.mark.parametrize("command", ["train", "lr-find"])
@pytest.mark.parametrize("bad, named", [
    ("objective.reduce=bogus", "objective.reduce must be one of last, min, max"),
    ("eval.likelihood=bogus", "eval.likelihood must be one of bernoulli, gaussian"),
    ("eval.checkpoint=newest", "eval.checkpoint must be one of best, last"),
    ("train.precision=fp8", "train.precision must be one of auto, fp32, bf16"),
    ("device=banana", "device must be auto, cpu, cuda or cuda:N"),
    ("optimizer.lr=inf", "optimizer.lr must be a positive number"),
    ("train.max_steps=0", "train.max_steps must be at least 1"),
    ("lr_find.start=20", "lr_find needs 0 < start < end"),
    ("+train.progressive=[{size: 16}]", "train.progressive stages need a size and epochs >= 1"),
])
def test_value_checks_come_before_the_data(command, bad, named, tmp_path, capsys):
    """The dataset named here does not exist: a refusal about the setting came before any data
    was loaded (loading would have failed first, naming the missing MNIST files)."""
    code, err = run_cli([command, "dataset=mnist", f"dataset.root={tmp_path / 'nothing'}", bad,
                     f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("aexp: error: ") and named in last, err[-800:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_saved_before_the_layering_still_opens_and_resumes(tmp_path, capsys):
    """Its stored config names targets by their old module paths (aexp.tasks, aexp.corruption,
    aexp.schedules): eval rebuilds it and resume accepts it as the same config."""
    import torch

    from aexp import checkpoint
    run = tmp_path / "run"
    args = ["schedule=cosine", "dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16",
            "train.epochs=1", "frames.enabled=false", "eval.enabled=false"]
    assert run_cli(["train", *args, f"hydra.run.dir={run}"], capsys)[0] == 0
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        cfg = state["config"]
        cfg["task"]["_target_"] = "aexp.tasks.Reconstruct"
        cfg["corruption"]["_target_"] = "aexp.corruption.NoCorruption"
        cfg["schedule"]["_target_"] = "aexp.schedules.Cosine"
        checkpoint.save(run / "checkpoints" / name, {k: v for k, v in state.items() if k != "format"})
    code, err = run_cli(["eval", run, "--no-pictures", "--device", "cpu"], capsys)
    assert code == 0, err[-1500:]
    code, err = run_cli(["train", f"resume={run}", "train.epochs=2"], capsys)
    assert code == 0, err[-1500:]
    with open(run / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
