"""Datasets that need no files: synthetic RGB colours, and scikit-learn's 8x8 handwritten
digits (real images shipped inside the package, so image models run on real data anywhere)."""
import numpy as np
import torch

from aexp.data.core import Data, Split, carve
from aexp.errors import DataError


def colors(n_train: int = 10000, n_val: int = 2000, n_test: int = 2000, seed: int = 0,
           fresh: bool = False, encoding: str = "rgb") -> Data:
    """Uniform random RGB colours in [0, 1]^3. With `fresh`, the training colours are drawn
    anew every epoch (from the run's data-order generator); `encoding` is how the model sees
    a colour (rgb, hsv, or Lab scaled to [0, 1]), for input and output alike."""
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 1:
            raise DataError(f"dataset.{name} must be at least 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    draw = lambda n: Split(torch.rand(n, 3, generator=g))
    redraw = (lambda gen: torch.rand(n_train, 3, generator=gen)) if fresh else None
    return Data("colors", "colors", draw(n_train), draw(n_val), draw(n_test),
                encoding=encoding, redraw=redraw)


def digits(val_size: int = 180, test_size: int = 360, seed: int = 0) -> Data:
    """scikit-learn's 1,797 8x8 digit images (values 0..16, stored here as 0..255). They have
    no official test split: `test_size` images are held out as test, then `val_size` of the
    rest as validation, both with the fixed `seed`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.rint(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    whole = Split(x, torch.from_numpy(bunch.target).long())
    rest, test = carve(whole, test_size, seed, "test")
    fit, val = carve(rest, val_size, seed)
    classes = [str(c) for c in bunch.target_names]
    return Data("digits", "image", fit, val, test, num_classes=len(classes), classes=classes)
