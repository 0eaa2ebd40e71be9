"""Where torchmetrics computes what aexp computes by hand, the two are compared; what only the
library offers (MS-SSIM, the Inception FID from a local weights file) is checked here too."""
import json

import pytest
import torch

from aexp.errors import ConfigError
from aexp.report import measures, quality
from conftest import run_cli

tm = pytest.importorskip("torchmetrics.functional.image")


def _pair(shape, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(*shape, generator=g)
    return (t + noise * torch.randn(shape, generator=g)).clamp(0, 1), t


def test_psnr_agrees_with_torchmetrics():
    p, t = _pair((20, 3, 16, 16))
    ours = measures.psnr(p, t)
    theirs = tm.peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(6, 1, 28, 28), (4, 3, 32, 32)])
def test_ssim_is_torchmetrics_map_on_valid_windows_only(shape):
    """torchmetrics averages the SSIM map over reflection-padded borders as well; on the positions
    where the 11x11 window fits (what aexp, Wang et al.'s code and scikit-image average) the two
    maps are the same."""
    p, t = _pair(shape)
    _, full = tm.structural_similarity_index_measure(p, t, data_range=1.0, reduction="none",
                                                     return_full_image=True)
    inner = full[..., 5:-5, 5:-5].flatten(1).mean(1)
    torch.testing.assert_close(measures.ssim(p, t), inner, atol=1e-5, rtol=0)
    whole = tm.structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
    assert (measures.ssim(p, t) - whole).abs().max() < 0.01        # close, not equal: the borders


def test_ms_ssim_scales_fit_the_image_and_the_value_behaves():
    assert [quality.ms_ssim_scales(s, s) for s in (8, 28, 64, 128, 176, 256)] == [1, 2, 3, 4, 5, 5]
    assert quality.ms_ssim(*_pair((2, 1, 8, 8))) is None            # one scale: SSIM again
    x = _pair((4, 1, 64, 64))[1]
    same = quality.ms_ssim(x, x)
    assert same["ms_ssim_scales"] == 3 and abs(same["ms_ssim"] - 1) < 1e-5
    values = [quality.ms_ssim(*_pair((4, 1, 64, 64), noise))["ms_ssim"] for noise in (0.05, 0.2)]
    assert 1 > values[0] > values[1]


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """torch-fidelity's InceptionV3 with random weights, saved as a weights file (the real one is
    a download this machine cannot make): it exercises the same loading and feature path. Its
    BatchNorm statistics are recalibrated on random images, else the random layers shrink every
    feature to ~1e-8 and every FID to 0. (The Inception tests are slow: a 2048-d FID's matrix
    square root takes a minute on a busy 2-core machine.)"""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    cls = fe.FeatureExtractorInceptionV3
    load, fetch = cls.load_state_dict, fe.load_state_dict_from_url
    cls.load_state_dict, fe.load_state_dict_from_url = (lambda self, sd: None), (lambda *a, **k: {})
    try:
        torch.manual_seed(0)
        net = cls("inception-v3-compat", ["2048"])
    finally:
        cls.load_state_dict, fe.load_state_dict_from_url = load, fetch
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None            # a plain average over the calibration batch
    net.train()
    with torch.no_grad():
        net((torch.rand(6, 3, 299, 299) * 255).to(torch.uint8))
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_inception_fid_from_a_local_file(inception_file):
    real, _ = _pair((12, 1, 24, 24), noise=0.0)
    noisy = (real + 0.5 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    got = quality.inception_fid(str(inception_file), real, {"same": real, "noisy": noisy}, max_images=10)
    assert got["images"] == 10
    # ~0 up to the matrix square root's rounding on 2048-d covariances of rank 9
    assert abs(got["same"]) < 0.01 * got["noisy"], got


def test_inception_weights_that_are_not_inception_are_one_line(tmp_path, tiny_mnist, capsys):
    other = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(2)}, other)
    with pytest.raises(ConfigError, match="not an InceptionV3 state dict"):
        quality.inception_fid(str(other), torch.rand(2, 3, 8, 8), {}, 2)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="not a weights file"):
        quality.inception_fid(str(junk), torch.rand(2, 3, 8, 8), {}, 2)
    code, err = run_cli(["train", "dataset=mnist", f"dataset.root={tiny_mnist}",
                         f"eval.inception_weights={tmp_path / 'missing.pth'}"], capsys)
    assert code == 2 and "eval.inception_weights: no such file" in err and err.count("\n") == 1


def test_eval_reports_ms_ssim(tmp_path, tiny_mnist, capsys):
    run = tmp_path / "run"
    code, err = run_cli(["train", "dataset=mnist", "model=mlp", "model.hidden=[16]", f"dataset.root={tiny_mnist}",
                         "dataset.val_size=20", "train.epochs=1", "frames.enabled=false",
                         "eval.classifier.enabled=false", "eval.pictures=false", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err[-1500:]
    rec = json.loads((run / "eval.json").read_text())["reconstruction"]
    assert rec["ms_ssim_scales"] == 2 and rec["ssim"] < rec["ms_ssim"] <= 1   # coarse scales agree more


@pytest.mark.slow
def test_eval_reports_the_inception_fid(tmp_path, tiny_mnist, inception_file, capsys):
    run = tmp_path / "run"
    code, err = run_cli(["train", "dataset=mnist", "model=vae", "model.hidden=[16]", f"dataset.root={tiny_mnist}",
                         "dataset.val_size=20", "train.epochs=1", "frames.enabled=false",
                         "eval.classifier.enabled=false", "eval.pictures=false", "eval.nll_samples=0",
                         f"eval.inception_weights={inception_file}", "eval.inception_max_images=8",
                         f"hydra.run.dir={run}"], capsys)
    assert code == 0, err[-1500:]
    report = json.loads((run / "eval.json").read_text())
    assert report["inception"]["images"] == 8 and report["inception"]["reconstruction"] > 0
    assert "samples" in report["inception"]
    code, err = run_cli(["eval", run, "--inception-weights", tmp_path / "missing.pth"], capsys)
    assert code == 2 and "no such file" in err and err.count("\n") == 1

@pytest.mark.parametrize("shape", [(12, 3, 32, 32), (6, 1, 64, 64), (2, 3, 176, 176), (8, 1, 28, 28)])
@pytest.mark.parametrize("noise", [0.05, 0.3, 5.0])
def test_ms_ssim_is_torchmetrics_ms_ssim(shape, noise):
    """aexp computes MS-SSIM itself (faster on the CPU) with torchmetrics' exact definition:
    per image within 1e-5 of torchmetrics' default, from near-identical to unrelated images
    (whose negative terms the ReLU floors at 0)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim
    from aexp.report import measures
    torch.manual_seed(0)
    p = torch.rand(*shape)
    t = (p + noise * torch.randn(*shape)).clamp(0, 1)
    n = quality.ms_ssim_scales(*shape[-2:])
    betas = tuple(b / sum(quality.MS_SSIM_BETAS[:n]) for b in quality.MS_SSIM_BETAS[:n])
    want = msssim(p, t, data_range=1.0, betas=betas, reduction="none")
    got = measures.ms_ssim(p, t, betas)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    assert abs(quality.ms_ssim(p, t)["ms_ssim"] - want.mean().item()) < 1e-5
