"""The conditional VAE (model=cvae): labels reach the encoder and the decoder through the real
loop and evaluation, a killed run resumes exactly, it is refused on unlabelled data in one line,
eval draws its per-class pictures, check-model and the exports take the labels."""
import json

import pytest
import torch

from aexp.assemble import build_model, load_run
from aexp.data import Data, Split
from aexp.errors import ConfigError
from aexp.models import call
from aexp.report.evaluate import predict
from conftest import run_cli
from test_disentangling_models import assert_same_end, stop_then_resume

TINY = ["dataset=digits", "model=cvae", "model.hidden=[64]", "train.batch_size=64",
        "train.threads=1", "frames.enabled=false", "eval.enabled=false", "device=cpu"]


def labelled(n=4, classes=3):
    x = lambda: Split(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8), torch.arange(n) % classes)
    return Data("toy", "image", x(), x(), x(), num_classes=classes)


def test_one_code_decodes_differently_for_two_labels(compose_cfg):
    torch.manual_seed(0)
    model = build_model(compose_cfg(TINY).model, labelled()).eval()
    assert model.conditional and model.num_classes == 3
    z = torch.randn(1, 2)
    with torch.no_grad():
        a, b = model.decode(z, torch.tensor([0])), model.decode(z, torch.tensor([2]))
        default = model.decode(z)
    assert a.shape == b.shape == (1, 1, 8, 8)
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(default, a)          # without labels: class 0, as documented


def test_call_passes_labels_to_a_conditional_model_only(compose_cfg):
    data = labelled()
    cvae = build_model(compose_cfg(TINY).model, data).eval()
    vae = build_model(compose_cfg([*TINY, "model=vae"]).model, data).eval()
    x, _ = data.batch(data.train)
    with torch.no_grad():
        assert not torch.equal(call(cvae, x, torch.zeros(4)).x_hat, call(cvae, x, torch.ones(4)).x_hat)
        assert torch.equal(call(vae, x, torch.ones(4)).x_hat, vae(x).x_hat)


def test_refused_on_unlabelled_data_in_one_line(tmp_path, capsys):
    code, err = run_cli(["train", "model=cvae", "dataset=colors", "train.epochs=1",
                         f"hydra.run.dir={tmp_path / 'r'}"], capsys)
    assert code == 2, err
    line = [ln for ln in err.splitlines() if ln.strip()]
    assert len(line) == 1 and "conditional" in line[0] and "colors has none" in line[0], err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_trains_with_its_labels_and_eval_draws_per_class(tmp_path, capsys):
    run = tmp_path / "cvae"
    code, err = run_cli(["train", *TINY, "train.epochs=15", "eval.enabled=true",
                         "eval.classifier.enabled=false", "eval.nll_samples=4", "eval.nll_max_images=50",
                         f"hydra.run.dir={run}"], capsys)
    assert code == 0, err
    report = json.loads((run / "eval.json").read_text())
    assert report["model"] == "CVAE" and report["vae"]["given"] == "the test image's class label"
    for name in ("samples_per_class.png", "latent_plane_per_class.png", "samples.png"):
        assert (run / "pictures" / name).is_file(), name
    # the labels were learned from: true labels reconstruct better than wrong ones
    loaded = load_run(run, device="cpu")
    test = loaded.data.test
    right = predict(loaded.model, loaded.data, test, 512)
    wrong = predict(loaded.model, loaded.data, Split(test.x, (test.y + 5) % 10), 512)
    mse = lambda p: float(((p["x_hat"] - p["y"]) ** 2).mean())
    assert torch.isfinite(right["x_hat"]).all() and mse(right) < 0.9 * mse(wrong), (mse(right), mse(wrong))
    assert abs(mse(right) - report["reconstruction"]["mse"]) < 1e-6   # eval used the true labels
    code, err = run_cli(["check-model", "cvae", "dataset=digits", "model.hidden=[16]"], capsys)
    assert code == 0, err


def test_a_killed_run_resumes_exactly(compose_cfg, tmp_path):
    assert_same_end(*stop_then_resume(compose_cfg([*TINY, "train.epochs=2"]), tmp_path, call=30))


def test_exports_take_the_labels_as_a_second_input(tmp_path, capsys):
    run = tmp_path / "cvae"
    assert run_cli(["train", *TINY, "train.epochs=1", f"hydra.run.dir={run}"], capsys)[0] == 0
    code, err = run_cli(["export", run, "--format", "pt2"], capsys)
    assert code == 0, err
    info = json.loads((run / "export" / "pt2" / "export.json").read_text())
    assert any("second input" in n for n in info["notes"])
    decoder = torch.export.load(str(run / "export" / "pt2" / "decoder.pt2")).module()
    model = load_run(run, device="cpu").model
    z = torch.randn(3, 2)
    for label in (1, 7):
        y = torch.full((3,), label)
        assert torch.allclose(decoder(z, y), model.decode(z, y), atol=1e-5)
    assert not torch.allclose(decoder(z, torch.full((3,), 1)), decoder(z, torch.full((3,), 7)))


def test_build_model_refuses_a_conditional_model_without_classes(compose_cfg):
    data = labelled()
    data.num_classes = None
    with pytest.raises(ConfigError, match="conditional"):
        build_model(compose_cfg(TINY).model, data)


def test_codes_drawn_from_samples_are_encoded_with_their_labels(tmp_path, capsys):
    from aexp.report.sample import training_codes
    from aexp.run.frames import FrameWriter
    run = tmp_path / "cvae"
    assert run_cli(["train", *TINY, "train.epochs=1", f"hydra.run.dir={run}"], capsys)[0] == 0
    loaded = load_run(run, device="cpu")
    train_split, model = loaded.data.train, loaded.model
    x, _ = loaded.data.batch(train_split)
    with torch.no_grad():
        own, zero = model.encode(x, train_split.y), model.encode(x)
        assert torch.allclose(training_codes(loaded, 0), own) and not torch.allclose(own, zero)
        frames = FrameWriter(loaded.data, tmp_path / "frames", probe_size=50)
        assert torch.equal(frames.labels, loaded.data.val.y[torch.as_tensor(frames.probe["index"])])


@pytest.mark.parametrize("loss", ["iwae", "rae"])
def test_terms_that_decode_again_decode_with_the_labels(compose_cfg, loss):
    """IWAE's importance samples and RAE-GP's penalty run the decoder a second time: with the
    batch's labels, not class 0 (changing the labels changes the value)."""
    from aexp.assemble import build_loss
    data = labelled(n=6)
    cfg = compose_cfg([*TINY, f"loss={loss}"])
    model, loss_fn = build_model(cfg.model, data).eval(), build_loss(cfg.loss)
    x, y = data.batch(data.train)
    torch.manual_seed(0)
    one = loss_fn(call(model, x, data.train.y), x, y, model, labels=data.train.y)["loss"]
    torch.manual_seed(0)
    other = loss_fn(call(model, x, data.train.y), x, y, model, labels=(data.train.y + 1) % 3)["loss"]
    assert torch.isfinite(one) and abs(float(one.detach()) - float(other.detach())) > 1e-6


def test_samples_for_the_dataset_are_drawn_for_every_class(compose_cfg):
    from aexp import draw
    model = build_model(compose_cfg(TINY).model, labelled()).eval()
    labels = draw.every_class(model, 7)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0] and draw.every_class(object(), 7) is None
    z = torch.randn(7, 2)
    with torch.no_grad():
        assert torch.allclose(draw.decode(model, z, batch=3, label=labels), model.decode(z, labels), atol=1e-6)
        assert torch.allclose(draw.decode(model, z, label=2), model.decode(z, torch.full((7,), 2)), atol=1e-6)
