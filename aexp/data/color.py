"""Colour-space conversions in torch (differentiable, any device): sRGB <-> CIE Lab and
sRGB <-> HSV. Colours lie along dimension `dim` (1 for batches of vectors [N, 3] and of images
[N, 3, H, W]); RGB, HSV and the scaled Lab below are in [0, 1].

Lab follows the usual sRGB / D65 / 2-degree definition (the one scikit-image's `rgb2lab` uses),
so values agree with published tables: L in [0, 100], a and b roughly in [-128, 127].
"""
import torch

# sRGB (linear) -> CIE XYZ, D65; the matrix scikit-image and most references use.
XYZ_FROM_RGB = torch.tensor([[0.412453, 0.357580, 0.180423],
                             [0.212671, 0.715160, 0.072169],
                             [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
RGB_FROM_XYZ = torch.linalg.inv(XYZ_FROM_RGB)
WHITE_D65 = (0.95047, 1.0, 1.08883)
EPS = 0.008856              # (6/29)^3: below it Lab's cube root turns into a line
KAPPA = 7.787               # slope of that line


def _mix(m: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """Apply the 3x3 matrix `m` to the colour dimension `dim` of `x`."""
    c = x.unbind(dim)
    m = m.tolist()
    return torch.stack([r[0] * c[0] + r[1] * c[1] + r[2] * c[2] for r in m], dim)


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    # clamp inside the power so out-of-gamut (negative) values give no NaN, even in gradients
    return torch.where(c <= 0.0031308, 12.92 * c,
                       1.055 * c.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """sRGB in [0, 1] -> CIE Lab (L in [0, 100])."""
    xyz = _mix(XYZ_FROM_RGB, srgb_to_linear(rgb), dim)
    x, y, z = (t / w for t, w in zip(xyz.unbind(dim), WHITE_D65))
    f = lambda t: torch.where(t > EPS, t.clamp(min=EPS) ** (1 / 3), KAPPA * t + 16 / 116)
    fx, fy, fz = f(x), f(y), f(z)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim)


def lab_to_rgb(lab: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """CIE Lab -> sRGB, clamped to [0, 1] (Lab holds colours sRGB cannot show)."""
    L, a, b = lab.unbind(dim)
    fy = (L + 16) / 116
    fx, fz = fy + a / 500, (fy - b / 200).clamp(min=0)
    finv = lambda f: torch.where(f ** 3 > EPS, f ** 3, (f - 16 / 116) / KAPPA)
    xyz = torch.stack([finv(f) * w for f, w in zip((fx, fy, fz), WHITE_D65)], dim)
    return linear_to_srgb(_mix(RGB_FROM_XYZ, xyz, dim)).clamp(0, 1)


# Lab scaled to [0, 1] per channel, for models with a sigmoid output: L / 100 and
# (a + 128) / 255, (b + 128) / 255 (the 8-bit Lab offset; sRGB's gamut fits well inside).
def rgb_to_lab_unit(rgb: torch.Tensor, dim: int = 1) -> torch.Tensor:
    L, a, b = rgb_to_lab(rgb, dim).unbind(dim)
    return torch.stack([L / 100, (a + 128) / 255, (b + 128) / 255], dim)


def lab_unit_to_rgb(lab: torch.Tensor, dim: int = 1) -> torch.Tensor:
    L, a, b = lab.unbind(dim)
    return lab_to_rgb(torch.stack([L * 100, a * 255 - 128, b * 255 - 128], dim), dim)


def rgb_to_hsv(rgb: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """sRGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of the circle; 0 for greys)."""
    r, g, b = rgb.unbind(dim)
    v, _ = rgb.max(dim)
    delta = v - rgb.min(dim)[0]
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(v == r, (g - b) / safe,
                    torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack([h, s, v], dim)


def hsv_to_rgb(hsv: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """HSV in [0, 1] -> sRGB in [0, 1] (the closed form f(n) = v - v s max(0, min(k, 4-k, 1)))."""
    h, s, v = hsv.unbind(dim)

    def channel(n):
        k = (n + h * 6) % 6
        return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return torch.stack([channel(5), channel(3), channel(1)], dim).clamp(0, 1)


def identity(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return x


# How a colour can be presented to a model: name -> (encode from RGB, decode to RGB).
ENCODINGS = {
    "rgb": (identity, identity),
    "hsv": (rgb_to_hsv, hsv_to_rgb),
    "lab": (rgb_to_lab_unit, lab_unit_to_rgb),
}
