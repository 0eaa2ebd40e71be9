"""A user project (aexp.project, aexp init): its conf groups compose beside aexp's, its Python
imports, and its runs open without --trust because aexp.yaml declares its package; a run naming a
class outside aexp and outside the open project's list is still refused in one line."""
import json
import shutil

import pytest
import torch

from aexp import checkpoint, project, trust
from aexp.errors import ConfigError
from conftest import aexp, run_cli

TINY = ["model=my_ae", "dataset=my_data", "loss=my_loss", "dataset.n_train=128", "dataset.n_val=32",
        "dataset.n_test=32", "train.epochs=1", "train.threads=1", "frames.probe_size=32",
        "eval.enabled=false", "eval.classifier.enabled=false", "hydra.run.dir=outputs/first"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`aexp init` -> `aexp train` -> `aexp eval` -> `aexp explore` -> `aexp export`, each the real
    entry point in a subprocess run inside the new project, none with --trust."""
    where = tmp_path_factory.mktemp("proj")
    aexp("init", "myproject", cwd=where)
    root = where / "myproject"
    aexp("train", *TINY, cwd=root)
    aexp("eval", "outputs/first", "--no-pictures", cwd=root)   # (the classifier: off in the run's config)
    aexp("explore", "outputs/first", cwd=root)
    aexp("export", "outputs/first", "--format", "safetensors", cwd=root)
    return root


def test_init_train_eval_explore_export_without_trust(trained):
    run = trained / "outputs" / "first"
    config = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["config"]
    assert config["model"]["_target_"] == "my_project.models.TinyAE"
    assert config["dataset"]["_target_"] == "my_project.data.bars"
    assert config["loss"]["terms"]["edges"]["_target_"] == "my_project.losses.EdgeL1"
    report = json.loads((run / "eval.json").read_text())
    assert report["n_test"] == 32 and report["reconstruction"]
    assert (run / "explorer.html").stat().st_size > 1000
    assert (run / "export" / "safetensors" / "model.safetensors").is_file()
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert "train_edges" in metrics[0] and len(metrics) == 2   # the project's term is logged


def test_init_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    code, err = run_cli(["init", tmp_path / "x"], capsys)
    assert code == 2 and err.strip().startswith("aexp: error: ") and len(err.strip().splitlines()) == 1
    assert "not empty" in err and [p.name for p in (tmp_path / "x").iterdir()] == ["notes.txt"]


def _project(root, trusts, python=("src",)):
    """A project folder trusting `trusts`, each prefix's package present in its first python folder."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix in trusts:
        package = root / python[0] / prefix.split(".")[0]
        if not package.exists():
            package.mkdir(parents=True)
            (package / "__init__.py").write_text("")
    (root / "aexp.yaml").write_text(json.dumps({"trust": list(trusts), "python": [str(p) for p in python]}))
    return root


def test_the_open_project_is_found_by_walking_up_or_named(tmp_path, monkeypatch):
    root = _project(tmp_path / "p", ["pkg"])
    (root / "deep" / "er").mkdir(parents=True)
    monkeypatch.delenv(project.ENV, raising=False)
    monkeypatch.chdir(root / "deep" / "er")
    assert project.current().root == root.resolve() and project.current().trust == ("pkg",)
    monkeypatch.chdir(tmp_path)
    assert project.current() is None
    monkeypatch.setenv(project.ENV, str(root))
    assert project.current().root == root.resolve()
    monkeypatch.setenv(project.ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="holds no aexp.yaml"):
        project.current()


def test_trust_by_declaration_is_by_prefix_of_dotted_names(tmp_path, monkeypatch):
    monkeypatch.delenv(trust.ENV, raising=False)
    monkeypatch.setenv(project.ENV, str(_project(tmp_path / "p", ["my_project", "lab.models.Big"])))
    ok = lambda t: trust.allows(t, frozenset({"aexp.models.dense.MLP"}))
    assert ok("aexp.models.dense.MLP") and ok("my_project.models.TinyAE") and ok("my_project")
    assert ok("lab.models.Big") and not ok("lab.models.Bigger") and not ok("lab.models.Small")
    assert not ok("my_projectx.Evil") and not ok("os.system") and not ok("aexp.models.dense.VAEx")
    monkeypatch.setenv(project.ENV, str(_project(tmp_path / "q", [])))
    assert not ok("my_project.models.TinyAE")


@pytest.mark.parametrize("text, words", [
    ("trust: [os.system(1)]", "not a module or package name"),
    ("trust: [os]\npython: [.]", "os is not a package of this project"),
    ("trust: [torch]\npython: [.]", "torch is not a package of this project"),
    ("trust: ['']", "not a module or package name"),
    ("trsut: [x]", "unknown field trsut"),
    ("python: 3", "python must be a list of strings"),
    ("[1, 2", "cannot read it"),
])
def test_a_bad_aexp_yaml_is_one_line(tmp_path, capsys, monkeypatch, text, words):
    (tmp_path / "aexp.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["eval", "nowhere"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def _copy(run, to, target=None):
    shutil.copytree(run, to)
    (to / "eval.json").unlink()
    (to / "explorer.html").unlink()
    if target:
        for ckpt in ("best.pt", "last.pt"):
            state = torch.load(to / "checkpoints" / ckpt, weights_only=True)
            state.pop("format")
            state["config"]["model"]["_target_"] = target
            checkpoint.save(to / "checkpoints" / ckpt, state)
    return to


def test_a_run_is_opened_only_from_a_project_declaring_its_classes(trained, tmp_path, capsys, monkeypatch):
    """The same run folder: refused from a project whose list lacks its classes (and with no
    project open), accepted from one that declares them; a class outside the open project's
    list is refused even inside the project that made the run."""
    monkeypatch.delenv(trust.ENV, raising=False)
    monkeypatch.delenv(project.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    run = _copy(trained / "outputs" / "first", tmp_path / "run")
    src = str(trained / "src")
    others = _project(tmp_path / "others", ["their_lab"], python=["lib", src])
    declares = _project(tmp_path / "declares", ["my_project.models", "my_project.data",
                                                "my_project.losses.EdgeL1"], python=[src])
    for opened in ([], ["--project", others]):
        code, err = run_cli(["eval", run, "--no-pictures", *opened], capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("aexp: error: ") and "my_project." in last, err[-600:]
        assert "--trust" in last and "Traceback" not in err
        assert ("--project DIR" in last) == (not opened)   # no project open: which one may be
    assert not (run / "eval.json").exists()
    code, err = run_cli(["eval", run, "--no-pictures", "--project", declares], capsys)
    assert code == 0, err[-600:]
    assert json.loads((run / "eval.json").read_text())["n_test"] == 32

    evil = _copy(trained / "outputs" / "first", tmp_path / "evil", target="my_project_evil.models.TinyAE")
    code, err = run_cli(["explore", evil, "--project", trained], capsys)
    assert code == 2 and "my_project_evil.models.TinyAE" in err.strip().splitlines()[-1], err[-600:]
    assert not (evil / "explorer.html").exists()


def test_the_python_api_opens_the_projects_runs(trained, monkeypatch):
    import aexp as api
    monkeypatch.delenv(trust.ENV, raising=False)
    monkeypatch.setenv(project.ENV, str(trained))
    cfg = api.compose(["model=my_ae", "dataset=my_data", "loss=my_loss"])
    assert cfg.model._target_ == "my_project.models.TinyAE" and cfg.loss.terms.edges.weight == 0.5
    run = api.load_run(trained / "outputs" / "first")
    assert type(run.model).__name__ == "TinyAE"
    monkeypatch.delenv(project.ENV)
    monkeypatch.chdir(trained.parent)
    with pytest.raises(ConfigError, match="my_project"):
        api.load_run(trained / "outputs" / "first")


def test_a_project_run_resumes_from_the_project_without_trust(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(trust.ENV, raising=False)
    monkeypatch.delenv(project.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    run = _copy(trained / "outputs" / "first", tmp_path / "run")
    # from outside the project, its options are unknown: one line, pointing at --project
    code, err = run_cli(["train", f"resume={run}", "train.epochs=2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Could not find 'model/my_ae'" in err, err[-800:]
    assert "--project DIR" in err
    code, err = run_cli(["train", "model=vea"], capsys)   # (any option aexp lacks: the same hint)
    assert code == 2 and "--project DIR" in err
    code, err = run_cli(["train", "model.nosuch=1"], capsys)   # not a missing option: no hint
    assert code == 2 and "--project" not in err
    code, err = run_cli(["train", f"resume={run}", "train.epochs=2", "--project", trained], capsys)
    assert code == 0, err[-800:]
    assert len((run / "metrics.csv").read_text().splitlines()) == 3   # header + epochs 1 and 2
