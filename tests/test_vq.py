"""VQ-VAE (models/quantize.py, the conv model's `codebook`, the `vq` loss term): straight-through
gradients, EMA codebook updates, dead-code restarts, usage logging, and a run through the CLI."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from aexp.errors import ConfigError
from aexp.losses import Loss, MSE, VectorQuantization
from aexp.models.conv import ConvAE
from aexp.models.quantize import VectorQuantizer
from conftest import make_photos, run_cli


def _vq_model(**codebook):
    torch.manual_seed(0)
    return ConvAE((1, 16, 16), (1, 16, 16), channels=[4, 8],
                  codebook={"size": 8, "dim": 4, **codebook})


def test_straight_through_gradients_reach_the_encoder():
    net = _vq_model()
    net.train()
    x = torch.rand(6, 1, 16, 16)
    ((net(x).x_hat - x) ** 2).sum().backward()      # reconstruction only: no commitment term
    assert net.encoder[0][0].weight.grad.abs().sum() > 0
    assert net.pre_vq.weight.grad.abs().sum() > 0


def test_the_code_is_on_the_codebook_and_decode_snaps_to_it():
    net = _vq_model().eval()
    x = torch.rand(3, 1, 16, 16)
    out = net(x)
    positions = out.z.view(3, 4, -1).permute(0, 2, 1).reshape(-1, 4)
    book = net.quantizer.codebook
    assert (positions[:, None] - book[None]).norm(dim=2).min(1).values.max() < 1e-5       # every position is a code
    nudged = out.z + 1e-3 * torch.randn_like(out.z)
    torch.testing.assert_close(net.decode(nudged), out.x_hat)           # snapped back
    idx = net.code_indices(x)
    assert idx.shape == (3, 4, 4) and torch.equal(idx, out.extras["codes"])


def test_ema_moves_codes_toward_their_assigned_encodings():
    vq = VectorQuantizer(size=2, dim=2, ema=0.9, restart_below=0.0)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
        vq.embed_sum.copy_(vq.codebook)
        vq.count.fill_(1.0)
    vq.train()
    target = torch.tensor([1.0, -1.0])            # every encoding near code 0, offset by target
    h = (target + 0.01 * torch.randn(64, 2)).T.reshape(1, 2, 8, 8)
    before = (vq.codebook[0] - target).norm()
    for _ in range(20):
        _, extras = vq(h)
    assert (extras["codes"] == 0).all()
    assert (vq.codebook[0] - target).norm() < 0.2 * before
    assert (vq.codebook[1] - 10.0).abs().max() < 0.01     # unassigned: unmoved (up to smoothing)


def test_a_dead_code_is_restarted_at_an_encoding_of_the_batch():
    vq = VectorQuantizer(size=3, dim=2, ema=0.9, restart_below=0.5)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]))
        vq.embed_sum.copy_(vq.codebook * 5)
        vq.count.fill_(5.0)
    vq.train()
    h = torch.rand(2, 2, 4, 4)                   # every encoding in [0, 1]²: code 2 is never chosen
    steps = 0
    while vq.codebook[2, 0] > 50 and steps < 100:
        vq(h)
        steps += 1
    assert 1 < steps < 100                       # not at once: only after its count decayed
    encodings = h.permute(0, 2, 3, 1).reshape(-1, 2)
    assert (encodings - vq.codebook[2]).norm(dim=1).min() < 1e-6


def test_codebook_loss_only_for_a_learned_codebook_and_usage_is_logged():
    loss = Loss({"recon": MSE(), "vq": VectorQuantization(commitment=0.25)})
    x = torch.rand(4, 1, 16, 16)
    ema = loss(_vq_model().train()(x), x, x, None)
    assert "vq_codebook" not in ema and {"vq_commit", "vq_perplexity", "vq_used"} <= set(ema)
    total = ema["recon"] + 0.25 * ema["vq_commit"]          # perplexity and used weigh nothing
    torch.testing.assert_close(ema["loss"], total)
    net = _vq_model(ema=None).train()
    learned = loss(net(x), x, x, None)
    assert "vq_codebook" in learned
    learned["loss"].backward()
    assert net.quantizer.codebook.grad.abs().sum() > 0


def test_perplexity_counts_equally_used_codes():
    from aexp.models.quantize import usage
    codes = torch.tensor([0, 1, 2, 3] * 4).view(4, 2, 2)
    for dtype in (torch.float32, torch.float64):
        used, perplexity = usage(codes, 16, dtype)
        assert int(used) == 4
        torch.testing.assert_close(perplexity, torch.tensor(4.0, dtype=dtype))
    # the loss logs the quantiser's own figures, one value per sample
    term = VectorQuantization()
    e = torch.zeros(4, 1, 2, 2)
    used, perplexity = usage(codes, 16)
    out = type("Out", (), {"extras": {"vq_e": e, "vq_q": e, "codes": codes, "vq_used": used,
                                      "vq_perplexity": perplexity, "vq_ema": True}})
    parts = term(out, None, None, None, "sum")
    torch.testing.assert_close(parts["perplexity"], torch.full((4,), 4.0))
    torch.testing.assert_close(parts["used"], torch.full((4,), 4.0))


def test_vq_settings_are_checked():
    with pytest.raises(ConfigError, match="latent_dim=null"):
        ConvAE((1, 16, 16), (1, 16, 16), channels=[4], latent_dim=8, codebook={"size": 8})
    with pytest.raises(ConfigError, match="ema"):
        VectorQuantizer(size=8, ema=1.5)
    with pytest.raises(ConfigError, match="size >= 2"):
        VectorQuantizer(size=1)


def test_vq_preset_logs_usage_draws_it_and_reports_the_codebook(tmp_path, capsys):
    photos = make_photos(tmp_path / "photos", 24)
    run = tmp_path / "run"
    code, err = run_cli(["train", "model=vqvae", "dataset=image_folder", f"dataset.root={photos}",
                         "dataset.size=16", "model.codebook.size=16", "train.epochs=2", "train.batch_size=8",
                         "eval.tsne=false", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err[-1500:]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_vq_commit", "train_vq_perplexity", "train_vq_used", "val_vq_used"} <= set(header)
    report = json.loads((run / "eval.json").read_text())
    assert report["codebook"]["size"] == 16 and 1 <= report["codebook"]["used"] <= 16
    assert 1 <= report["codebook"]["perplexity"] <= report["codebook"]["used"] + 1e-6
    assert not (run / "pictures" / "samples.png").exists() and "no prior" in report["notes"][0]
    frame = np.asarray(Image.open(run / "frames" / "epoch_0002.png"))
    assert frame.shape[1] > 2 * frame.shape[0] - 10          # two panels: the scatter and code use
