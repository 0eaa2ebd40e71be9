"""Every model config x every loss config, at every input size the model claims to support:
compatible combinations run forward and backward with the output at the target's shape and a
finite loss; incompatible ones fail in `preflight` with a one-line ConfigError."""
import pytest
import torch
from torchvision.models import vgg

from aexp.data import Data, Split
from aexp.errors import ConfigError
from aexp.assemble import build, build_loss, code_size
from aexp.models import call
from aexp.run.steps import preflight
from conftest import options

# option -> (overrides that keep it tiny, [(in_shape, out_shape), ...] it claims to support)
IMG = lambda c, h, w=None: ((c, h, w or h), (c, h, w or h))
MODELS = {
    "linear": ([], [((3,), (3,))]),
    "mlp": (["model.hidden=[16]"], [((3,), (3,)), IMG(1, 28), IMG(3, 32)]),
    "vae": (["model.hidden=[16]"], [IMG(1, 28), IMG(3, 32)]),
    "cvae": (["model.hidden=[16]"], [IMG(1, 28), IMG(3, 32)]),   # (images only: they carry labels)
    "hvae": (["model.hidden1=[16]", "model.latent1=4", "model.hidden2=[8]"], [IMG(1, 28), IMG(3, 32)]),
    "overcomplete": ([], [IMG(1, 28)]),
    "conv": (["model.channels=[4,8]"],
             [IMG(1, 28), IMG(3, 32), IMG(3, 64), IMG(3, 128), IMG(3, 218, 178)]),
    "conv_vae": (["model.channels=[4,8]", "model.latent_dim=4"],
                 [IMG(1, 28), IMG(3, 32), IMG(3, 64), IMG(3, 128), IMG(3, 218, 178)]),
    "pooling_cnn": (["model.width=4", "model.pooling=3"],
                    [((1, 28, 28), (2, 28, 28)), ((1, 32, 32), (2, 32, 32)), IMG(1, 64),
                     ((1, 128, 128), (2, 128, 128)), ((1, 218, 178), (2, 218, 178))]),
    "baseline32": (["model.channels=[4,8,8]", "model.latent_dim=16"], [IMG(3, 32), IMG(1, 16)]),
    "resnet": (["model.decoder_channels=[8,8,8,8]"], [IMG(3, 32), IMG(1, 64)]),
    "fsqvae": (["model.channels=[4,8]", "model.quantizer.levels=[3,3]"], [IMG(1, 28), IMG(3, 32)]),
    "vqvae": (["model.channels=[4,8]", "model.codebook.size=8", "model.codebook.dim=4"],
              [IMG(1, 28), IMG(3, 32), IMG(3, 64), IMG(3, 218, 178)]),
    "resconv": (["model.channels=[4,8]"], [IMG(1, 28), IMG(3, 32), IMG(3, 218, 178)]),
    "resconv_vae": (["model.channels=[4,8]", "model.latent_channels=2"], [IMG(1, 28), IMG(3, 32)]),
}


def test_every_model_config_is_covered():
    assert set(MODELS) == set(options("model"))


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory):
    """A VGG16-bn feature state dict (random weights) standing in for a pretrained file."""
    path = tmp_path_factory.mktemp("vgg") / "vgg16_bn_features.pt"
    torch.save(vgg.make_layers(vgg.cfgs["D"], batch_norm=True).state_dict(), path)
    return path


LOSS_OVERRIDES = {"perceptual": lambda f: [f"loss.terms.perceptual.weights={f}"]}
SIZED_BY_CODE = ("factorvae",)
SIZED_BY_IMAGE = ("mse_patchgan",)   # its discriminator takes the target images' channels
PER_SHAPE = ("vamp",)                # its pseudo-inputs take the shape of the first input seen
_cache = {}


def _build(compose_cfg, model, loss, shapes, vgg_file):
    key = (model, shapes)
    cfg = compose_cfg([f"model={model}", f"loss={loss}", *MODELS[model][0],
                       *LOSS_OVERRIDES.get(loss, lambda f: [])(vgg_file)])
    if key not in _cache:       # building ResNets is slow: one per shape, shared across losses
        torch.manual_seed(0)
        classes = {"num_classes": 2} if model == "cvae" else {}   # a conditional model: _data's 2 classes
        _cache[key] = build(cfg.model, in_shape=shapes[0], out_shape=shapes[1], **classes)
    # a term sized by the model's code (a FactorVAE discriminator) is built per code size
    code = code_size(_cache[key], torch.rand(1, *shapes[0])) if loss in SIZED_BY_CODE else None
    channels = shapes[1][0] if loss in SIZED_BY_IMAGE else None
    lkey = ("loss", loss, code, channels, shapes if loss in PER_SHAPE else None)
    if lkey not in _cache:
        _cache[lkey] = build_loss(cfg.loss, code_size=code, channels=channels)
    return _cache[key], _cache[lkey]


def _data(shapes, n=4):
    (cin, *rest), (cout, *_) = shapes
    g = torch.Generator().manual_seed(0)
    if not rest:
        return Data("colors", "colors", *[Split(torch.rand(n, cin, generator=g)) for _ in range(3)])
    x = lambda: Split(torch.randint(0, 256, (n, cin, *rest), dtype=torch.uint8, generator=g),
                      torch.tensor([0, 0, 1, 1]))
    data = Data("img", "image", x(), x(), x(), num_classes=2)
    if cout != cin:     # colourisation-like: target has its own channels
        target = torch.rand(n, cout, *rest, generator=g)
        data.batch = lambda split, idx=None, train=False: (
            split.x[idx].float() / 255 if idx is not None else split.x.float() / 255,
            target[idx] if idx is not None else target)
    return data


def compatible(model, net, loss, data, out_shape) -> bool:
    """What each loss needs, stated independently of the code under test."""
    variational = model in ("vae", "cvae", "hvae", "conv_vae", "resconv_vae")
    if loss in ("vae", "vae_cb", "iwae", "btcvae", "factorvae", "dipvae", "beta_vae_capacity",
                "info_vae", "vamp"):
        # a posterior mu, logvar
        return variational
    if loss == "vqvae":                                  # codes from a learned codebook
        return net.codebook_size is not None and model != "fsqvae"
    if loss == "fsq":                                    # usage of a quantiser's codes
        return net.codebook_size is not None
    if loss == "contractive":
        return net.latent_dim <= 32      # the term's stated limit (max_latent)
    if loss == "triplet_colour":
        return data.kind == "colors"
    if loss == "triplet_label":
        return data.train.y is not None
    if loss == "perceptual":
        return data.kind == "image" and out_shape[0] in (1, 3)
    return True


def _case(model, shapes, loss):
    """Every combination; the costly ones (images over 64 px, the 11M-parameter ResNet) run in
    the slow suite except with MSE, so every model and size stays covered by the fast one."""
    big = max(shapes[0][1:], default=0) > 64 or model == "resnet"
    marks = [pytest.mark.slow] if big and loss != "mse" else []
    return pytest.param(model, shapes, loss, marks=marks,
                        id=f"{model}-{'x'.join(map(str, shapes[0]))}-{loss}")


CASES = [_case(m, s, l) for m, (_, shapes) in MODELS.items() for s in shapes for l in options("loss")]


@pytest.mark.parametrize("model,shapes,loss", CASES)
def test_model_loss_size(compose_cfg, vgg_file, model, shapes, loss):
    if loss in SIZED_BY_IMAGE and len(shapes[1]) != 3:     # no images: refused when built
        with pytest.raises(ConfigError) as err:
            build_loss(compose_cfg([f"loss={loss}"]).loss)      # no channels to give
        assert "\n" not in str(err.value)
        return
    net, loss_fn = _build(compose_cfg, model, loss, shapes, vgg_file)
    data = _data(shapes)
    if not compatible(model, net, loss, data, shapes[1]):
        with pytest.raises(ConfigError) as err:
            preflight(net, loss_fn, data)
        assert "\n" not in str(err.value)
        return
    net.train()
    idx = torch.arange(4)
    x, y = data.batch(data.train, idx)
    out = call(net, x, data.train.y)
    assert out.x_hat.shape == y.shape == (4, *shapes[1])
    terms = loss_fn(out, x, y, net, labels=data.train.y)
    assert all(torch.isfinite(v) for v in terms.values()), terms
    net.zero_grad(set_to_none=True)
    terms["loss"].backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize("upsample", ["transpose", "nearest", "shuffle"])
@pytest.mark.parametrize("hw", [(28, 28), (32, 32), (218, 178), (9, 7)])
def test_every_upsampling_comes_back_at_the_input_size(compose_cfg, upsample, hw):
    cfg = compose_cfg(["model=conv", "model.channels=[4,4]", f"model.upsample={upsample}"])
    net = build(cfg.model, in_shape=(3, *hw), out_shape=(3, *hw))
    x = torch.rand(2, 3, *hw)
    out = net(x)
    assert out.x_hat.shape == x.shape
    out.x_hat.sum().backward()
    assert net.encoder[0][0].weight.grad.abs().sum() > 0


def test_shuffle_upsampling_starts_as_nearest_upsampling():
    """ICNR: the four sub-pixel outputs of every input pixel start equal (before the blur)."""
    from aexp.models.blocks import ShuffleUp
    up = ShuffleUp(3, 2)
    y = up.shuffle(up.conv(torch.rand(1, 3, 5, 5)))
    torch.testing.assert_close(y[..., 0::2, 0::2], y[..., 1::2, 1::2])
    torch.testing.assert_close(y[..., 0::2, 0::2], y[..., 0::2, 1::2])


def test_baseline32_output_clamps_and_passes_the_gradient_straight_through():
    from aexp.models.pooling import Baseline32
    outputs = {}
    for kind in ("clamp_st", "clamp"):
        torch.manual_seed(0)
        net = Baseline32((1, 16, 16), (1, 16, 16), channels=[4, 4, 4], latent_dim=8, output=kind)
        with torch.no_grad():
            net.head.bias.fill_(-5.0)                     # every output pixel far below 0
        x = torch.rand(2, 1, 16, 16)
        y = net(x).x_hat
        assert torch.equal(y, torch.zeros_like(y))        # both clamp the forward pass to [0, 1]
        ((y - x) ** 2).mean().backward()
        outputs[kind] = net.head.bias.grad.abs().sum()
    assert outputs["clamp"] == 0                          # a plain clamp leaves it no gradient
    assert outputs["clamp_st"] > 0                        # straight through: pulled back up
    with pytest.raises(ConfigError, match="model.output"):
        Baseline32((1, 16, 16), (1, 16, 16), output="tanh")


def test_baseline32_code_is_linear_or_takes_the_stages_activation():
    from aexp.models.pooling import Baseline32
    torch.manual_seed(0)
    x = torch.rand(8, 1, 16, 16)
    linear = Baseline32((1, 16, 16), (1, 16, 16), channels=[4, 4, 4], latent_dim=32, code_activation="none")
    same = Baseline32((1, 16, 16), (1, 16, 16), channels=[4, 4, 4], latent_dim=32)    # unset: relu
    assert (linear.encode(x) < 0).any()                   # nothing clipped: no unit can die at 0
    assert (same.encode(x) >= 0).all() and (same.encode(x) == 0).any()
    with pytest.raises(ConfigError, match="unknown activation 'swish'"):
        Baseline32((1, 16, 16), (1, 16, 16), code_activation="swish")


def test_baseline32_without_head_is_the_published_model():
    """channels [12, 24], grid [16, 8], head=false: the published 32x32 baseline, layer for layer
    the hand-written peer `make bench` compares against (benchmarks/peer_loops.py)."""
    import importlib.util
    from pathlib import Path
    from aexp.models.pooling import Baseline32
    spec = importlib.util.spec_from_file_location(
        "peer_loops", Path(__file__).resolve().parent.parent / "benchmarks" / "peer_loops.py")
    peer_loops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer_loops)
    ours = Baseline32((3, 32, 32), (3, 32, 32), channels=[12, 24], grid=[16, 8], head=False,
                      code_activation="none")
    peer = peer_loops.PublishedBaseline32(3)
    shapes = lambda m: sorted(tuple(t.shape) for t in m.state_dict().values())
    assert shapes(ours) == shapes(peer)
    n = sum(p.numel() for p in ours.parameters())
    assert 3.0e6 < n < 3.2e6, n                                   # "about 3.1 M parameters"
    with_head = Baseline32((3, 32, 32), (3, 32, 32), channels=[12, 24], grid=[16, 8], code_activation="none")
    assert sum(p.numel() for p in with_head.parameters()) > n      # the extra full-size stage
    assert ours(torch.rand(2, 3, 32, 32)).x_hat.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_grid_max_pool_is_adaptive_max_pooling_ties_included(dtype, channels_last):
    """The baseline's pooling takes plain max-pooling when the grid divides the input: the same
    values and the same gradient routing as nn.AdaptiveMaxPool2d, even where a window holds ties
    (ReLU zeros); a size the grid does not divide (and a progressive stage) stays adaptive."""
    from aexp.models.pooling import GridMaxPool
    torch.manual_seed(0)
    for shape, grid in (((4, 5, 32, 32), 16), ((4, 5, 16, 16), 8), ((2, 3, 30, 30), 8), ((2, 3, 16, 16), 16)):
        x = torch.randn(*shape).relu().round().to(dtype)           # many ties: 0s and 1s
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        want, got = torch.nn.AdaptiveMaxPool2d(grid)(a), GridMaxPool(grid)(b)
        g = torch.randn_like(want)
        want.backward(g)
        got.backward(g)
        assert torch.equal(want, got) and torch.equal(a.grad, b.grad), (shape, grid)


def test_baseline32_skips_a_resize_to_its_own_size():
    """decode() resizes only when the decoder's map differs from the asked size (the same-size
    nearest resize copied the image forward and backward for nothing)."""
    from aexp.models.pooling import Baseline32
    m = Baseline32((3, 32, 32), (3, 32, 32), channels=[4, 8], grid=[16, 8], head=False)
    calls = []
    real = torch.nn.functional.interpolate
    def spy(*a, **k):          # nn.Upsample's own 2x steps pass scale_factor, not size
        if k.get("size") is not None:
            calls.append(tuple(k["size"]))
        return real(*a, **k)
    torch.nn.functional.interpolate = spy
    try:
        z = m.encode(torch.rand(2, 3, 32, 32))
        assert m.decode(z).shape == (2, 3, 32, 32) and calls == []
        assert m.decode(z, (30, 30)).shape == (2, 3, 30, 30) and calls == [(30, 30)]
    finally:
        torch.nn.functional.interpolate = real
