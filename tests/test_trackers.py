"""The `logger` group: TensorBoard, MLflow and W&B (offline) hold what a run logged, read back with
each tool's own reader; a resumed run continues the same tracker runs with every epoch once; a
multirun is one MLflow parent with a child per job; a tracker failing mid-run costs one warning,
not the run; a missing package is refused before training. Nothing here needs the network: W&B
is offline, MLflow writes a SQLite file (or talks to a server on 127.0.0.1 started here)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from aexp import checkpoint
from aexp.io import read_csv
from conftest import ROOT, aexp, run_cli

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

# colours, 50 steps an epoch, small frames: a few seconds a run
TINY = ["train.threads=1", "dataset.n_train=400", "dataset.n_val=50", "dataset.n_test=50",
        "train.batch_size=8", "frames.probe_size=40", "frames.size=48", "eval.tsne=false"]
ALL = "logger=[csv,tensorboard,mlflow,wandb]"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Nothing phones home (W&B offline, no MLflow telemetry), and the MLflow store (mlflow.db,
    mlruns/) lands in tmp_path, the folder aexp runs in."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
                       "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                       "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                       "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}.items():
        monkeypatch.setenv(key, value)
    # wandb.init in this process (an earlier test) names its service here for child processes to
    # share; the runs started below as processes of their own get their own, as from a shell
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    monkeypatch.chdir(tmp_path)


# --- readers: each tool's own ------------------------------------------------------------------

def tensorboard(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def mlflow_run(run_dir: Path):
    from mlflow import MlflowClient
    state = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(state["tracking_uri"])
    return client, client.get_run(state["run_id"])


def wandb_records(run_dir: Path) -> list:
    """Every record of the run's offline W&B files (.wandb: W&B's header, then LevelDB-log
    records in 32 KiB blocks), oldest folder first, as protobuf Records."""
    from wandb.proto import wandb_internal_pb2
    out = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, pending = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:          # a block's tail too short for a header: padding
                pos += 32768 - pos % 32768
                continue
            length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind == 0:
                continue
            pending = chunk if kind in (1, 2) else pending + chunk   # FULL/FIRST, MIDDLE/LAST
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                out.append(record)
    return out


def wandb_history(run_dir: Path) -> list[dict]:
    rows = []
    for r in wandb_records(run_dir):
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def epochs_of(acc, tag="val_loss") -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


# --- one run, every tracker ----------------------------------------------------------------------

@pytest.fixture
def finished_run(tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_cli(["train", ALL, *TINY, "train.epochs=2", "logger.tensorboard.every_steps=10",
                         f"hydra.run.dir={run}"], capsys)
    assert code == 0, err
    assert "warning" not in err
    return run


def test_one_run_reaches_tensorboard_mlflow_and_wandb(finished_run, capsys):
    run = finished_run
    columns = [c for c in (run / "metrics.csv").read_text().splitlines()[0].split(",") if c != "epoch"]
    # TensorBoard: a scalar per epoch for every column, the frames (epoch 0 too), eval, hparams
    acc = tensorboard(run / "tb")
    for column in columns:
        assert epochs_of(acc, column) == [1, 2], column
    assert [e.step for e in acc.Images("latent")] == [0, 1, 2]
    assert "eval/reconstruction.mse" in acc.Tags()["scalars"]
    assert "eval/reconstruction" in acc.Tags()["images"]
    from tensorboard.plugins.hparams import plugin_data_pb2
    hp = {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
          for tag, content in acc.PluginTagToContent("hparams").items()}
    session = hp["_hparams_/session_start_info"].session_start_info
    assert session.hparams["optimizer.lr"].number_value == pytest.approx(1e-3)
    assert session.hparams["model.hidden"].string_value == "[]"
    metrics = [m.name.tag for m in hp["_hparams_/experiment"].experiment.metric_infos]
    assert {"val_loss", "best_val_loss", "eval/reconstruction.mse"} <= set(metrics)
    assert [e.step for e in tensorboard(run / "tb" / "steps").Scalars("train_loss_step")] == \
        list(range(10, 101, 10))            # 50 steps an epoch, every 10th
    # MLflow: the run in the SQLite store beside the run, its params, metrics and artifacts
    client, found = mlflow_run(run)
    assert Path("mlflow.db").is_file() and found.info.status == "FINISHED"
    assert client.get_experiment(found.info.experiment_id).name == "colors"   # the dataset option
    assert found.data.params["optimizer.lr"] == "0.001" and found.data.params["train.epochs"] == "2"
    history = client.get_metric_history(found.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["val_loss"]))
                                                    for r in read_csv(run / "metrics.csv")]
    assert "eval/reconstruction.psnr" in found.data.metrics
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"eval.json", "metrics.csv", "pictures"} <= artifacts
    assert "pictures/reconstruction.png" in {a.path for a in client.list_artifacts(found.info.run_id, "pictures")}
    assert run_cli(["render", run], capsys)[0] == 0      # the video follows the run to MLflow
    assert "latent.mp4" in {a.path for a in client.list_artifacts(found.info.run_id)}
    # W&B offline: the run folder holds the config and one history row per epoch
    config = {i.key: json.loads(i.value_json) for r in wandb_records(run)
              if r.WhichOneof("record_type") == "run" for i in r.run.config.update}
    assert config["optimizer"]["lr"] == pytest.approx(1e-3) and config["train"]["epochs"] == 2
    rows = [h for h in wandb_history(run) if "val_loss" in h]
    assert [h["epoch"] for h in rows] == [1, 2] and all(h["_step"] == h["epoch"] for h in rows)
    assert [h["epoch"] for h in wandb_history(run) if h.get("latent/_type") == "image-file"] == [0, 1, 2]


# --- resume ---------------------------------------------------------------------------------------

def start(run: Path, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "aexp.cli", "train", ALL, *TINY, *extra,
                             f"hydra.run.dir={run}"], cwd=os.getcwd(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_each_epoch_once(run: Path, epochs: int, run_id: str, wandb_id: str) -> None:
    steps = list(range(1, epochs + 1))
    acc = tensorboard(run / "tb")
    assert epochs_of(acc) == steps and epochs_of(acc, "train_loss") == steps
    assert [e.step for e in acc.Images("latent")] == [0, *steps]
    logged = [e.step for e in tensorboard(run / "tb" / "steps").Scalars("train_loss_step")]
    assert logged == sorted(set(logged)) and logged[-1] == epochs * 50
    client, found = mlflow_run(run)
    assert found.info.run_id == run_id and found.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == steps
    assert json.loads((run / "trackers.json").read_text())["wandb"]["run_id"] == wandb_id
    assert {p.stem[len("run-"):] for p in run.glob("wandb/offline-run-*/run-*.wandb")} == {wandb_id}
    assert [h["epoch"] for h in wandb_history(run) if "val_loss" in h] == steps


def test_killed_after_epoch_2_and_resumed_to_4_logs_each_epoch_once(tmp_path):
    run = tmp_path / "run"
    proc = start(run, "train.epochs=4", "logger.tensorboard.every_steps=5")
    deadline = time.monotonic() + 120
    last = run / "checkpoints" / "last.pt"
    while proc.poll() is None and not (last.is_file() and checkpoint.load(last)["epoch"] >= 2):
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert checkpoint.load(last)["epoch"] < 4
    state = json.loads((run / "trackers.json").read_text())
    done = aexp("train", f"resume={run}", cwd=tmp_path)
    assert "resuming from" in done.stderr and "warning" not in done.stderr
    assert_each_epoch_once(run, 4, state["mlflow"]["run_id"], state["wandb"]["run_id"])


def test_trackers_ahead_of_the_checkpoint_are_neither_repeated_nor_short(tmp_path, capsys):
    """A kill after the trackers logged an epoch but before its checkpoint: the resumed run
    redoes that epoch, and each tracker still holds it once."""
    run = tmp_path / "run"
    args = ["train", ALL, *TINY, "logger.tensorboard.every_steps=5", "eval.enabled=false",
            f"hydra.run.dir={run}"]
    assert run_cli([*args, "train.epochs=2"], capsys)[0] == 0
    epoch2 = tmp_path / "last_epoch2.pt"
    shutil.copy(run / "checkpoints" / "last.pt", epoch2)
    assert run_cli([*args, "train.epochs=3"], capsys)[0] == 0
    shutil.copy(epoch2, run / "checkpoints" / "last.pt")     # as if killed before epoch 3's
    (run / "COMPLETED.json").unlink()
    state = json.loads((run / "trackers.json").read_text())
    assert state["tensorboard"]["epoch"] == 3
    code, err = run_cli([*args, "train.epochs=4"], capsys)
    assert code == 0 and "resuming from" in err and "after epoch 2" in err, err
    assert_each_epoch_once(run, 4, state["mlflow"]["run_id"], state["wandb"]["run_id"])


# --- sweeps ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("launcher", ["basic", pytest.param("joblib", marks=pytest.mark.slow)])
def test_a_multirun_is_one_mlflow_parent_with_a_child_per_job(tmp_path, launcher):
    """One process after the other, or two at once (joblib): the jobs find one parent."""
    sweep = tmp_path / "sweep"
    at_once = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    aexp("train", "-m", *at_once, "logger=[csv,mlflow]", *TINY, "train.epochs=1", "eval.enabled=false",
         "optimizer.lr=1e-3,3e-3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    client, first = mlflow_run(sweep / "0")
    _, second = mlflow_run(sweep / "1")
    parent = first.data.tags["mlflow.parentRunId"]
    assert second.data.tags["mlflow.parentRunId"] == parent
    top = client.get_run(parent)
    assert top.data.tags["aexp.sweep_dir"] == str(sweep.resolve()) and top.info.status == "FINISHED"
    runs = client.search_runs([first.info.experiment_id])
    assert len(runs) == 3 and {first.data.params["optimizer.lr"], second.data.params["optimizer.lr"]} == \
        {"0.001", "0.003"}


# --- failures ----------------------------------------------------------------------------------------

def test_a_tracker_failing_mid_run_costs_one_warning_not_the_run(tmp_path, capsys, monkeypatch):
    from aexp.run.trackers.tensorboard import TensorBoard
    real = TensorBoard.log_epoch

    def full_disk(self, row, frame):
        if row["epoch"] == 2:
            raise OSError(28, "No space left on device")
        real(self, row, frame)

    monkeypatch.setattr(TensorBoard, "log_epoch", full_disk)
    run = tmp_path / "run"
    code, err = run_cli(["train", "logger=[csv,tensorboard]", *TINY, "train.epochs=3",
                         "eval.enabled=false", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "tensorboard tracker failed" in warnings[0]
    assert "No space left on device" in warnings[0]
    assert len((run / "metrics.csv").read_text().splitlines()) == 4 and (run / "COMPLETED.json").is_file()
    assert epochs_of(tensorboard(run / "tb")) == [1]


def test_an_mlflow_server_that_is_down_costs_one_warning(tmp_path, capsys):
    port = free_port()
    run = tmp_path / "run"
    code, err = run_cli(["train", "logger=[csv,mlflow]", *TINY, "train.epochs=1", "eval.enabled=false",
                         f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "mlflow tracker failed" in warnings[0]
    assert (run / "COMPLETED.json").is_file()


@pytest.mark.parametrize("tracker,package", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"),
                                              ("wandb", "wandb")])
def test_a_missing_package_is_one_line_before_training(tmp_path, capsys, monkeypatch, tracker, package):
    monkeypatch.setitem(sys.modules, package, None)    # import fails as if not installed
    run = tmp_path / "run"
    code, err = run_cli(["train", f"logger=[csv,{tracker}]", *TINY, f"hydra.run.dir={run}"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == f"aexp: error: logger {tracker} needs the {package} package: pip install 'aexp[tracking]'"
    assert not (run / "metrics.csv").exists()


def test_bad_tracker_settings_are_one_line(tmp_path, capsys):
    for bad in ("logger.wandb.mode=sometimes", "logger.tensorboard.every_steps=-1",
                "logger.mlflow.tracking_uri=sqlte:///mlflow.db"):
        tracker = bad.split(".")[1]
        code, err = run_cli(["train", f"logger=[csv,{tracker}]", bad, *TINY,
                             f"hydra.run.dir={tmp_path / 'run'}"], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("aexp: error: "), err
        assert bad.split("=")[0] in lines[0]


def test_only_rank_0_builds_trackers(compose_cfg, tmp_path):
    from aexp.run.trackers.group import Trackers
    cfg = compose_cfg([ALL])
    assert set(Trackers(cfg.logger, tmp_path).members) == {"tensorboard", "mlflow", "wandb"}
    assert Trackers(cfg.logger, tmp_path, enabled=False).members == {}


@pytest.mark.slow
def test_under_ddp_only_rank_0_logs(tmp_path):
    """Two CPU processes under torchrun: one TensorBoard writer, one MLflow run, one W&B run."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "aexp.cli", "train", ALL, *TINY, "train.epochs=2", "eval.enabled=false",
                           "device=cpu", f"hydra.run.dir={run}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((run / "tb").glob("events.*"))) == 1 and epochs_of(tensorboard(run / "tb")) == [1, 2]
    client, found = mlflow_run(run)
    assert len(client.search_runs([found.info.experiment_id])) == 1
    assert len(list(run.glob("wandb/offline-run-*"))) == 1


# --- a real MLflow server, read over REST and in a browser ----------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free port of 127.0.0.1, its SQLite store and artifacts in tmp_path;
    stopped (its process group) when the test ends."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts")],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                break
        except OSError:
            pass
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "mlflow server did not start"
        time.sleep(0.3)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.mark.slow
def test_a_run_on_a_real_mlflow_server_read_over_rest_and_in_the_browser(mlflow_server, tmp_path, request):
    run = tmp_path / "colours_on_a_server"      # a name the page can be seen to show
    aexp("train", "logger=[csv,mlflow]", *TINY, "train.epochs=2", f"logger.mlflow.tracking_uri={mlflow_server}",
         f"hydra.run.dir={run}", cwd=tmp_path)
    state = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert state["tracking_uri"] == mlflow_server
    get = lambda path: json.loads(urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/{path}").read())
    history = get(f"metrics/get-history?run_id={state['run_id']}&metric_key=val_loss")["metrics"]
    assert [m["step"] for m in history] == [1, 2]
    found = get(f"runs/get?run_id={state['run_id']}")["run"]
    assert found["info"]["status"] == "FINISHED"
    assert {p["key"]: p["value"] for p in found["data"]["params"]}["train.epochs"] == "2"
    files = {f["path"] for f in get(f"artifacts/list?run_id={state['run_id']}")["files"]}
    assert {"eval.json", "metrics.csv", "pictures"} <= files
    assert (tmp_path / "server-artifacts").is_dir()     # uploaded through the server

    browser = request.getfixturevalue("browser")       # tests/test_explore.py's headless Chromium
    browser.get(f"{mlflow_server}/#/experiments/{state['experiment_id']}/runs/{state['run_id']}")
    from selenium.webdriver.support.ui import WebDriverWait
    page = lambda d: d.find_element("tag name", "body").text
    WebDriverWait(browser, 90).until(lambda d: run.name in page(d) and "val_loss" in page(d))
    shot = tmp_path / "mlflow_run_page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
