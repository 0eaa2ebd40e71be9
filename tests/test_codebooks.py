"""Codebook tricks for the discrete and the regularised autoencoders: FSQ (models/fsq.py,
model=fsqvae, loss=fsq), the VQ codebook's k-means start (models/kmeans.py,
model.codebook.init=kmeans) and RAE-L2's decoder penalty (losses.DecoderL2, loss=rae_l2).
FSQ rounds each channel to exactly its levels with a straight-through gradient and numbers its
codes in mixed radix; an FSQ run trains, gets a PixelCNN prior and refuses a commitment term;
k-means gives every cluster of encodings a code at the first step, reproducibly; both resume
exactly; the decoder penalty is the hand sum of the decoder's squares and leaves the encoder
alone; every model option names exactly the parameters its `decode` uses."""
import json
import math

import pytest
import torch

from aexp import checkpoint
from aexp.assemble import build
from aexp.errors import ConfigError
from aexp.losses import DecoderL2, Loss, MSE, VectorQuantization
from aexp.models.conv import ConvAE
from aexp.models.fsq import FSQ
from aexp.models.kmeans import kmeans
from aexp.models.quantize import VectorQuantizer
from conftest import options, run_cli, two_gloo_processes
from test_disentangling_models import assert_same_end, stop_then_resume
from test_zoo import MODELS as ZOO_MODELS

TINY = ["dataset=digits", "model.channels=[8]", "train.batch_size=64", "train.threads=1",
        "frames.enabled=false", "eval.enabled=false", "device=cpu"]


# --- FSQ -------------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [8, 8, 8], [7, 5, 5, 5, 5], [2, 3]])
def test_fsq_each_channel_takes_exactly_its_levels_and_indices_round_trip(levels):
    fsq = FSQ(levels)
    assert fsq.size == math.prod(levels) and fsq.dim == len(levels)
    q = fsq.quantise(torch.randn(20000, len(levels)) * 4)     # wide spread: every level reached
    for i, n in enumerate(levels):
        values = torch.unique(q[:, i])
        assert len(values) == n, (levels, i, values)
        assert values.min() >= -1 and values.max() <= 1
    book = fsq.codebook
    assert book.shape == (fsq.size, len(levels)) and len(torch.unique(book, dim=0)) == fsq.size
    assert torch.equal(fsq.indices(book), torch.arange(fsq.size))       # index -> levels -> index
    assert torch.equal(fsq.grid(fsq.indices(q)), q)                     # levels -> index -> levels
    digits = torch.round(book * (fsq.levels // 2) + fsq.levels // 2)    # mixed radix, channel 0 lowest
    assert torch.equal((digits * torch.tensor([math.prod(levels[:i]) for i in range(len(levels))])).sum(1),
                       torch.arange(fsq.size).float())


def test_fsq_gradient_passes_straight_through_and_snap_keeps_grid_points():
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 5, 5])
    h = (torch.randn(2, 4, 3, 3) * 0.5).requires_grad_(True)
    q, extras = fsq(h)
    q.sum().backward()
    assert h.grad is not None and (h.grad.abs() > 0).all()           # tanh's slope, never 0
    assert extras["codes"].shape == (2, 3, 3) and extras["vq_fsq"]
    assert torch.equal(fsq.snap(q.detach()), q.detach())
    # moved by under half the finest spacing (8 levels: 0.25 apart), every value snaps back
    nudged = q.detach() + 0.1 * (2 * torch.rand_like(q) - 1)
    assert torch.equal(fsq.snap(nudged), q.detach())
    with pytest.raises(ConfigError):
        FSQ([8, 1])


def _fsq_model():
    torch.manual_seed(0)
    return ConvAE((1, 16, 16), (1, 16, 16), channels=[4, 8], quantizer=FSQ([5, 3]))


def test_fsq_model_codes_decode_and_refuses_commitment():
    net = _fsq_model().eval()
    x = torch.rand(3, 1, 16, 16)
    out = net(x)
    assert net.codebook_size == 15 and torch.equal(net.code_indices(x), out.extras["codes"])
    torch.testing.assert_close(net.decode(out.z), out.x_hat)        # codes are grid points
    assert net.state_dict().keys() == {k for k in net.state_dict() if not k.startswith("quantizer.")}
    fsq_loss = Loss({"recon": MSE(), "vq": VectorQuantization(commitment=0.0)})
    values = fsq_loss(out, x, x, net)
    assert set(values) == {"recon", "vq_perplexity", "vq_used", "loss"}
    assert values["loss"] == values["recon"]                        # usage logged at weight 0
    with pytest.raises(ConfigError, match="no commitment term"):
        Loss({"recon": MSE(), "vq": VectorQuantization(commitment=0.25)})(out, x, x, net)
    with pytest.raises(ConfigError, match="not both"):
        ConvAE((1, 16, 16), (1, 16, 16), channels=[4], codebook={"size": 4, "dim": 2}, quantizer=FSQ([2, 2]))


def test_fsq_run_trains_gets_a_prior_and_samples(tmp_path, capsys):
    run = tmp_path / "fsq"
    code, err = run_cli(["train", "model=fsqvae", *TINY, "model.quantizer.levels=[4,4]", "train.epochs=2",
                         "eval.enabled=true", "eval.quality=false", "eval.classifier.enabled=false", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err[-1500:]
    saved = checkpoint.load(run / "checkpoints" / "last.pt")
    assert saved["config"]["loss"]["terms"]["vq"]["commitment"] == 0.0     # loss=fsq came with it
    assert json.loads((run / "eval.json").read_text())["codebook"]["size"] == 16
    code, err = run_cli(["prior", run, "epochs=2", "model.channels=8", "model.layers=1", "batch_size=32"], capsys)
    assert code == 0, err[-1500:]
    nll = json.loads((run / "prior" / "nll.json").read_text())
    assert nll["codebook_size"] == 16 and nll["uniform_nll"] == pytest.approx(16 * math.log(16))
    code, err = run_cli(["sample", run, "--sampler", "prior", "-n", "8"], capsys)
    assert code == 0, err[-1500:]
    code, err = run_cli(["train", "model=fsqvae", "loss=vqvae", *TINY, f"hydra.run.dir={tmp_path / 'bad'}"], capsys)
    assert code == 2 and "no commitment term" in err.strip().splitlines()[-1]


# --- k-means init ----------------------------------------------------------------------------

def _blobs(k=8, per=40, seed=0):
    """k well separated 2-D blobs, one of them 4x as dense: [1, 2, 1, k*per + 3*per] map."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, 2, generator=g) * 20
    counts = [per * 4] + [per] * (k - 1)
    pts = torch.cat([c + 0.1 * torch.randn(n, 2, generator=g) for c, n in zip(centres, counts)])
    return pts.T.reshape(1, 2, 1, -1), centres


def test_kmeans_gives_every_blob_a_code_at_step_one_where_restarts_do_not():
    h, centres = _blobs()
    torch.manual_seed(1)
    km = VectorQuantizer(size=8, dim=2, init="kmeans", kmeans_iters=5).train()
    _, extras = km(h)
    assert int(extras["vq_used"]) == 8                                 # every code used at step 1
    assert torch.cdist(centres, km.codebook).min(1).values.max() < 0.5  # a code at every blob
    assert km.kmeans_done == 1 and 0 < km.kmeans_inertia < 0.1
    torch.manual_seed(1)
    rnd = VectorQuantizer(size=8, dim=2).train()
    _, extras = rnd(h)
    assert int(extras["vq_used"]) < 8                                  # single encodings: collapse


def test_kmeans_is_reproducible_with_the_seed_and_runs_once():
    h, _ = _blobs(seed=3)
    books = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        vq = VectorQuantizer(size=8, dim=2, init="kmeans").train()
        vq(h)
        books.append(vq.codebook.clone())
        inertia = vq.kmeans_inertia.clone()
        vq(h + 100.0)                         # a later batch: no second k-means
        assert torch.equal(vq.kmeans_inertia, inertia)
    assert torch.equal(books[0], books[1]) and not torch.equal(books[0], books[2])
    centres, inertia = kmeans(h[0, :, 0].T, 8, 0)
    assert centres.shape == (8, 2) and inertia >= 0
    with torch.no_grad():                     # the preflight check (no gradients) leaves it alone
        fresh = VectorQuantizer(size=8, dim=2, init="kmeans").train()
        fresh(h)
    assert fresh.kmeans_done == 0
    with pytest.raises(ConfigError, match="model.codebook.init"):
        VectorQuantizer(size=8, dim=2, init="kmedoids")


KMEANS_DDP = """
import sys, torch
from aexp.models.quantize import VectorQuantizer
rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
torch.manual_seed(rank)                        # each process its own draws and its own shard
vq = VectorQuantizer(size=4, dim=2, init="kmeans").train()
h = torch.randn(1, 2, 1, 64) + 10.0 * rank     # the shards lie far apart
vq(h)
torch.save({k: v.clone() for k, v in vq.state_dict().items()}, f"{out}.{rank}")
torch.distributed.destroy_process_group()
"""


def test_under_torchrun_the_kmeans_start_is_rank_0s_on_every_process(tmp_path):
    two_gloo_processes(KMEANS_DDP, tmp_path / "store", tmp_path / "vq")
    a, b = (torch.load(tmp_path / f"vq.{rank}") for rank in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)               # one codebook, one state
    assert a["kmeans_done"] == 1 and a["codebook"].abs().max() < 5   # centres from rank 0's shard
    assert torch.isclose(a["count"].sum(), torch.tensor(128.0))  # counts summed over both shards


# --- resume ----------------------------------------------------------------------------------

@pytest.mark.parametrize("which,how", [("kmeans", "sigterm"), ("fsq", "kill")])
def test_kmeans_and_fsq_runs_resume_exactly(compose_cfg, tmp_path, which, how):
    model = (["model=vqvae", "model.codebook.size=16", "model.codebook.dim=4", "model.codebook.init=kmeans"]
             if which == "kmeans" else ["model=fsqvae", "model.quantizer.levels=[4,4]"])
    cfg = compose_cfg([*model, *TINY, "train.epochs=3"])
    end = assert_same_end(*stop_then_resume(cfg, tmp_path, how=how))
    if which == "kmeans":
        assert end["model"]["quantizer.kmeans_done"] == 1


# --- RAE-L2 ----------------------------------------------------------------------------------

def test_decoder_l2_is_the_hand_sum_and_leaves_the_encoder_alone():
    torch.manual_seed(0)
    net = ConvAE((1, 8, 8), (1, 8, 8), channels=[4, 8], latent_dim=3).train()
    out = net(torch.rand(5, 1, 8, 8))
    value = DecoderL2()(out, None, None, net, "sum")
    hand = sum((p ** 2).sum() for m in (net.unbottleneck, *net.decoder) for p in m.parameters())
    assert value.shape == (5,) and torch.allclose(value, hand.expand(5))
    value.mean().backward()
    assert all(p.grad is None for p in [*net.encoder.parameters(), *net.bottleneck.parameters()])
    assert all(torch.allclose(p.grad, 2 * p) for p in net.unbottleneck.parameters())


@pytest.mark.parametrize("model", sorted(ZOO_MODELS))
def test_every_model_names_the_parameters_its_decode_uses(compose_cfg, model):
    if model == "resnet":
        pytest.skip("an 11M-parameter ResNet: covered by the conv decoder it borrows")
    overrides, shapes = ZOO_MODELS[model]
    cfg = compose_cfg([f"model={model}", *overrides])
    torch.manual_seed(0)
    net = build(cfg.model, in_shape=shapes[0][0], out_shape=shapes[0][1],
                **({"num_classes": 2} if model == "cvae" else {})).eval()
    z = net(torch.rand(2, *shapes[0][0])).z.detach()
    net.zero_grad()
    net.decode(z).float().sum().backward()
    used = {id(p) for p in net.parameters() if p.grad is not None}
    named = {id(p) for p in net.decoder_parameters()}
    assert named == used, model


def test_rae_l2_trains_and_refuses_a_model_without_named_decoder(tmp_path, capsys):
    run = tmp_path / "rae"
    code, err = run_cli(["train", "model=conv", "model.latent_dim=4", "loss=rae_l2", *TINY,
                         "train.epochs=1", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err[-1500:]
    assert "train_decoder_l2" in (run / "metrics.csv").read_text().splitlines()[0]
    with pytest.raises(ConfigError, match="names its decoder"):
        DecoderL2()(type("Out", (), {"z": torch.zeros(2, 1)})(), None, None, torch.nn.Linear(1, 1), "sum")
    assert "rae_l2" in options("loss")
