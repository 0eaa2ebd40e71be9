"""Faults outside bad settings: Ctrl-C outside the training loop, a sweep job failing with an
error that is not aexp's own, a cut completion marker, the stop message of a run whose every
batch was skipped, and the run's own log in train.log."""
import json

import pytest

from aexp import jobs
from aexp.report import evaluate
from conftest import run_cli

SMALL = ["dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16", "train.epochs=1",
         "frames.probe_size=16"]


def test_ctrl_c_during_the_evaluation_after_training_is_one_line_and_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "evaluate", interrupted)
    code, err = run_cli(["train", *SMALL, f"hydra.run.dir={tmp_path}"], capsys)
    lines = [line for line in err.splitlines() if line.strip().startswith("aexp: error")]
    assert code == 130 and lines == ["aexp: error: interrupted"] and "Traceback" not in err
    assert not (tmp_path / "COMPLETED.json").exists()          # not finished: the next run redoes it
    monkeypatch.undo()
    code, err = run_cli(["train", *SMALL, f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0 and (tmp_path / "eval.json").is_file() and (tmp_path / "COMPLETED.json").is_file()


def test_a_sweep_job_failing_with_any_error_is_marked_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    real = jobs.train

    def train(cfg, run_dir, **kwargs):
        if cfg.seed == 0:
            raise RuntimeError("a bug in job 0")
        return real(cfg, run_dir, **kwargs)
    monkeypatch.setattr(jobs, "train", train)
    sweep = tmp_path / "sweep"
    code, err = run_cli(["train", "-m", "seed=0,1", *SMALL, "eval.enabled=false",
                         f"hydra.sweep.dir={sweep}"], capsys)
    assert code == 1 and "job 0 failed: RuntimeError: a bug in job 0" in err and "Traceback" not in err
    assert (sweep / "0" / "FAILED").read_text().strip() == "RuntimeError: a bug in job 0"
    assert (sweep / "1" / "COMPLETED.json").is_file()


@pytest.mark.parametrize("content", ["", '{"config": {"tra', "[1, 2]"])
def test_a_cut_completion_marker_counts_as_not_finished(tmp_path, capsys, content):
    args = ["train", *SMALL, "eval.enabled=false", f"hydra.run.dir={tmp_path}"]
    assert run_cli(args, capsys)[0] == 0
    (tmp_path / "COMPLETED.json").write_text(content)
    code, err = run_cli(args, capsys)
    assert code == 0 and "is unreadable; the run counts as not finished" in err
    assert json.loads((tmp_path / "COMPLETED.json").read_text())["final"]["epoch"] == 1


def test_every_batch_skipped_names_only_a_checkpoint_that_exists(tmp_path):
    import torch

    from aexp.errors import TrainingDiverged
    from aexp.run.faults import FirstNonFinite
    from aexp.run.resume import EpochProgress
    from aexp.run.train import epoch_means
    ep = EpochProgress(perm=torch.arange(4), drawn_from=torch.zeros(1), skipped=2)   # nothing seen
    last_pt = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(TrainingDiverged, match=r"the last good checkpoint is none \(no epoch finished\)"):
        epoch_means(ep, FirstNonFinite(), 1, last_pt)
    last_pt.parent.mkdir()
    last_pt.write_bytes(b"x")
    with pytest.raises(TrainingDiverged, match=f"the last good checkpoint is {last_pt}"):
        epoch_means(ep, FirstNonFinite(), 2, last_pt)


def test_train_log_holds_the_run_log_as_plain_text(tmp_path, capsys):
    assert run_cli(["train", *SMALL, "train.epochs=2", f"hydra.run.dir={tmp_path}"], capsys)[0] == 0
    assert run_cli(["train", *SMALL, "train.epochs=3", f"resume={tmp_path}"], capsys)[0] == 0
    log = (tmp_path / "train.log").read_text()
    for text in ("epoch 1/2", "epoch 2/2", "resuming from", "epoch 3/3", "done 3 epochs", "eval "):
        assert text in log, text
    assert "\x1b[" not in log and "[bold" not in log
