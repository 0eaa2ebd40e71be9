"""Tasks (reconstruct, colorize), normalisation, flips, input corruption and the colours
options, through `Data.batch` as training uses it."""
import pytest
import torch

from aexp.data.corruption import Dropout, Gaussian, Mask, NoCorruption
from aexp.data import Data, Split, colors
from aexp.errors import ConfigError
from aexp.data.tasks import Colorize, Reconstruct
from conftest import options


def images(n=64, c=3, h=8, w=8, seed=0) -> Data:
    g = torch.Generator().manual_seed(seed)
    split = lambda k: Split(torch.randint(0, 256, (k, c, h, w), generator=g, dtype=torch.uint8),
                            torch.arange(k) % 3)
    return Data("tiny", "image", split(n), split(16), split(16), num_classes=3)


def test_colorize_pairs_l_with_ab_and_converts_back():
    data = images().prepare(Colorize())
    assert data.task.name == "colorize" and data.in_shape == (1, 8, 8) and data.out_shape == (2, 8, 8)
    x, y = data.batch(data.val)
    assert x.shape == (16, 1, 8, 8) and y.shape == (16, 2, 8, 8)
    assert x.min() >= 0 and x.max() <= 1 and y.min() >= 0 and y.max() <= 1
    original = data.val.x.float() / 255
    assert (data.to_rgb(x, y) - original).abs().max() < 1 / 255     # L + true a,b = the picture
    grey = data.to_rgb(x, torch.full_like(y, 128 / 255))           # a = b = 0: a grey picture
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=2e-3) and torch.allclose(grey[:, 1], grey[:, 2], atol=2e-3)


def test_colorize_refuses_grey_images_and_encoded_colors():
    with pytest.raises(ConfigError, match="3-channel"):
        images(c=1).prepare(Colorize())
    with pytest.raises(ConfigError, match="dataset.encoding=rgb"):
        colors(50, 10, 10, encoding="hsv").prepare(Colorize())


def test_reconstruct_to_rgb_repeats_grey():
    data = images(c=1).prepare(Reconstruct())
    x, y = data.batch(data.val)
    assert torch.equal(x, y) and data.to_rgb(x, y).shape == (16, 3, 8, 8)


def test_normalisations():
    standard = images(n=256).prepare(Reconstruct(normalize="standard"))
    x, y = standard.batch(standard.train)
    per_channel = x.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-2)
    assert y.min() >= 0 and y.max() <= 1                             # the target stays in [0, 1]
    assert (standard.to_rgb(x, y) - y).abs().max() < 1e-5
    raw = images().prepare(Reconstruct(normalize="none"))
    x, _ = raw.batch(raw.val)
    assert torch.allclose(x, raw.val.x.float(), atol=1e-3) and x.max() > 1   # the stored 0..255
    with pytest.raises(ConfigError, match="task.normalize"):
        Reconstruct(normalize="zscore")


def test_flips_keep_input_and_target_together():
    torch.manual_seed(0)
    data = images(n=200).prepare(Colorize(hflip=True, vflip=True))
    x, y = data.batch(data.train, torch.arange(200), train=True)
    rgb = data.to_rgb(x, y)
    orig = data.train.x.float() / 255
    variants = [orig, orig.flip(-1), orig.flip(-2), orig.flip(-1).flip(-2)]
    errors = torch.stack([(rgb - v).abs().amax((1, 2, 3)) for v in variants])
    assert (errors.min(0).values < 1 / 255).all()                   # every sample matches one flip
    assert set(errors.argmin(0).tolist()) == {0, 1, 2, 3}          # and all four occur
    x_eval, _ = data.batch(data.train, torch.arange(200))
    assert (data.to_rgb(x_eval, data.batch(data.train, torch.arange(200))[1]) - orig).abs().max() < 1 / 255


CORRUPTIONS = [Dropout(0.5), Dropout(0.3, rescale=True), Gaussian(0.2), Mask(size=3, count=2)]


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: type(c).__name__)
def test_corruption_touches_the_training_input_only(corruption):
    data = images(n=128).prepare(Reconstruct(), corruption)
    idx = torch.arange(128)
    clean_x, clean_y = data.batch(data.train, idx)
    x1, y1 = data.batch(data.train, idx, train=True)
    x2, _ = data.batch(data.train, idx, train=True)
    assert torch.equal(y1, clean_y)                       # the target is clean
    assert not torch.equal(x1, clean_x)                   # the input is not
    assert not torch.equal(x1, x2)                        # and is drawn fresh each batch
    assert torch.equal(data.batch(data.val)[0], data.batch(data.val)[1])  # evaluation: clean


def test_corruption_amounts():
    torch.manual_seed(0)
    x = torch.rand(512, 3, 16, 16) * 0.5 + 0.25
    dropped = Dropout(0.3)(x)
    zero_pixels = (dropped == 0).all(1)
    assert abs(zero_pixels.float().mean() - 0.3) < 0.01
    assert ((dropped == 0) == zero_pixels.unsqueeze(1)).all()      # whole pixels go, all channels
    rescaled = Dropout(0.3, rescale=True)(x)
    kept = rescaled != 0
    assert torch.allclose(rescaled[kept], (x / 0.7)[kept]) and abs(rescaled.mean() / x.mean() - 1) < 0.02
    noise = Gaussian(0.05, clip=False)(x) - x
    assert abs(noise.std() - 0.05) < 0.002 and abs(noise.mean()) < 0.002
    masked = Mask(size=4, count=1, value=-1.0)(x)
    assert ((masked == -1).all(1).sum((1, 2)) == 16).all()         # one 4x4 square per image
    assert torch.equal(NoCorruption()(x), x)


def test_bad_corruption_settings():
    with pytest.raises(ConfigError, match="corruption.p"):
        Dropout(1.0)
    with pytest.raises(ConfigError, match="needs image inputs"):
        colors(20, 5, 5).prepare(Reconstruct(), Mask())
    with pytest.raises(ConfigError, match="larger than the images"):
        images().prepare(Reconstruct(), Mask(size=9))


@pytest.mark.parametrize("option", options("corruption"))
def test_every_corruption_option_builds_and_applies(compose_cfg, option):
    from aexp.assemble import build_parts
    cfg = compose_cfg([f"corruption={option}", "dataset=digits", "model=mlp"])
    data, _, _ = build_parts(cfg, torch.device("cpu"))
    x, y = data.batch(data.train, torch.arange(32), train=True)
    assert torch.equal(y, data.batch(data.train, torch.arange(32))[1])
    assert torch.equal(x, y) == (option == "none")


def test_colors_fresh_every_epoch_from_the_data_generator():
    data = colors(100, 10, 10, fresh=True).prepare()
    first = data.train.x.clone()
    gen = torch.Generator().manual_seed(5)
    data.new_epoch(gen)
    assert not torch.equal(data.train.x, first) and data.train.x.shape == (100, 3)
    state = gen.get_state()
    data.new_epoch(gen)
    second = data.train.x.clone()
    gen.set_state(state)                                  # a resumed run replays the draw
    data.new_epoch(gen)
    assert torch.equal(data.train.x, second)
    fixed = colors(100, 10, 10).prepare()
    before = fixed.train.x.clone()
    fixed.new_epoch(gen)
    assert torch.equal(fixed.train.x, before)


@pytest.mark.parametrize("encoding", ["rgb", "hsv", "lab"])
def test_color_encodings(encoding):
    data = colors(50, 20, 10, encoding=encoding).prepare()
    x, y = data.batch(data.val)
    assert torch.equal(x, y) and x.min() >= 0 and x.max() <= 1
    assert (data.to_rgb(x, y) - data.val.x).abs().max() < 1 / 255
    assert torch.equal(x, data.val.x) == (encoding == "rgb")
    with pytest.raises(ConfigError, match="dataset.encoding"):
        colors(5, 5, 5, encoding="cmyk").prepare()


def test_binarize_redraws_training_pixels_and_leaves_evaluation_alone():
    torch.manual_seed(0)
    data = images(n=256, c=1).prepare(Reconstruct(binarize=True))
    idx = torch.arange(256)
    grey = data.train.x.float() / 255
    x1, y1 = data.batch(data.train, idx, train=True)
    x2, _ = data.batch(data.train, idx, train=True)
    assert torch.equal(x1, y1)                                  # input and target agree
    assert set(x1.unique().tolist()) == {0.0, 1.0}              # every pixel is 0 or 1
    assert not torch.equal(x1, x2)                              # drawn anew each time
    # each pixel is 1 with probability its intensity: the mean of many draws approaches it
    mean = torch.stack([data.batch(data.train, idx, train=True)[0] for _ in range(200)]).mean(0)
    assert (mean - grey).abs().max() < 0.2 and (mean - grey).abs().mean() < 0.03
    x_eval, y_eval = data.batch(data.train, idx)                # evaluation: the stored intensities
    assert torch.allclose(x_eval, grey) and torch.allclose(y_eval, grey)


def test_binarize_refuses_vectors():
    with pytest.raises(ConfigError, match="task.binarize needs image data"):
        colors(50, 10, 10).prepare(Reconstruct(binarize=True))


def test_a_run_saved_before_binarize_existed_resumes_unless_binarize_is_on():
    from aexp.run.resume import check_same_config
    old = {"task": {"_target_": "aexp.data.tasks.Reconstruct", "normalize": "unit"}}
    check_same_config(old, {"task": {**old["task"], "binarize": False}}, "old")
    with pytest.raises(ConfigError, match="differs at task.binarize"):
        check_same_config(old, {"task": {**old["task"], "binarize": True}}, "old")
