"""Colour conversions: round trips, and agreement with reference values on known colours."""
import colorsys

import pytest
import torch

from aexp.data.color import (ENCODINGS, hsv_to_rgb, lab_to_rgb, lab_unit_to_rgb, rgb_to_hsv, rgb_to_lab,
                        rgb_to_lab_unit)

# sRGB -> CIE Lab (D65, 2 degrees) as computed by scikit-image 0.26.0, `skimage.color.rgb2lab`
# (the same values as Bruce Lindbloom's calculator, e.g. red = 53.24, 80.09, 67.20).
REFERENCE_LAB = {
    (1.0, 0.0, 0.0): (53.2406, 80.0923, 67.2028),
    (0.0, 1.0, 0.0): (87.7351, -86.1830, 83.1797),
    (0.0, 0.0, 1.0): (32.2957, 79.1856, -107.8573),
    (1.0, 1.0, 1.0): (100.0, -0.0025, 0.0047),
    (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
    (1.0, 1.0, 0.0): (97.1395, -21.5547, 94.4781),
    (0.0, 1.0, 1.0): (91.1133, -48.0906, -14.1263),
    (1.0, 0.0, 1.0): (60.3235, 98.2331, -60.8210),
    (0.5, 0.5, 0.5): (53.3890, -0.0015, 0.0028),
}


def test_lab_matches_reference_on_known_colors():
    rgb = torch.tensor(list(REFERENCE_LAB), dtype=torch.float64)
    want = torch.tensor(list(REFERENCE_LAB.values()), dtype=torch.float64)
    got = rgb_to_lab(rgb)
    assert torch.allclose(got, want, atol=0.01), (got - want).abs().max()
    assert torch.allclose(lab_to_rgb(want), rgb, atol=1e-3)


def test_lab_round_trip_within_one_level_on_random_colors():
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand(200_000, 3, generator=g)
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1 / 255
    img = torch.rand(8, 3, 16, 16, generator=g)    # images: colour along dim 1 as well
    assert (lab_unit_to_rgb(rgb_to_lab_unit(img)) - img).abs().max() < 1 / 255


def test_scaled_lab_lies_in_unit_interval():
    grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 33)] * 3, indexing="ij"), -1).view(-1, 3)
    lab = rgb_to_lab_unit(grid)
    assert lab.min() >= 0 and lab.max() <= 1


def test_hsv_matches_colorsys_and_round_trips():
    rgb = torch.rand(500, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = torch.tensor([colorsys.rgb_to_hsv(*c) for c in rgb.tolist()], dtype=torch.float64)
    assert torch.allclose(rgb_to_hsv(rgb), want, atol=1e-9)
    assert torch.allclose(hsv_to_rgb(want), rgb, atol=1e-9)
    grey = torch.tensor([[0.3, 0.3, 0.3]])
    assert rgb_to_hsv(grey)[0].tolist() == pytest.approx([0.0, 0.0, 0.3])


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_every_encoding_round_trips(name):
    encode, decode = ENCODINGS[name]
    rgb = torch.rand(1000, 3, generator=torch.Generator().manual_seed(3))
    assert (decode(encode(rgb)) - rgb).abs().max() < 1 / 255
