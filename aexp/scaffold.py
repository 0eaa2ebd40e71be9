"""`aexp init DIR`: write a small user project (aexp.project) that trains as it is: aexp.yaml,
one YAML option per group (conf/model/my_ae.yaml, conf/dataset/my_data.yaml,
conf/loss/my_loss.yaml) and a package src/my_project/ holding the classes they name: a tiny dense
autoencoder (an aexp Autoencoder), a synthetic dataset of bar images (aexp's Data) and a loss
term (an aexp Term). The templates are the strings below, written verbatim."""
from argparse import ArgumentParser
from pathlib import Path

from aexp.errors import AexpError

AEXP_YAML = """\
# An aexp project: `aexp train model=my_ae dataset=my_data loss=my_loss` run in this folder (or
# with --project DIR / AEXP_PROJECT=DIR) composes conf/ beside aexp's own groups.
name: my_project
trust: [my_project]   # packages whose classes this project's run folders may name (no --trust)
conf: conf            # config groups: conf/model/, conf/dataset/, conf/loss/, ...
python: [src]         # folders put on sys.path: src/my_project imports as my_project
"""

MODEL_YAML = """\
# A tiny dense autoencoder (src/my_project/models.py). in_shape / out_shape come from the data.
_target_: my_project.models.TinyAE
hidden: 128                # width of the one hidden layer, each way
latent_dim: 2              # the code: 2 draws the latent plane directly
"""

DATASET_YAML = """\
# Synthetic bar images (src/my_project/data.py): a horizontal or a vertical bright bar, labelled.
_target_: my_project.data.bars
size: 12                   # pixels, square
n_train: 1024
n_val: 256
n_test: 256
seed: 0
"""

LOSS_YAML = """\
# Squared error plus the project's own term: L1 between image edges (src/my_project/losses.py).
_target_: aexp.losses.Loss
reduction: sum
terms:
  mse:
    _target_: aexp.losses.MSE
    weight: 1.0
  edges:
    _target_: my_project.losses.EdgeL1
    weight: 0.5
"""

INIT_PY = '''\
"""my_project: a model, a dataset and a loss term of one's own, trained by aexp."""
'''

MODELS_PY = '''\
"""Models follow aexp's contract (aexp.models.base): built with the data's shapes, they offer
encode(x) -> z and decode(z) -> x_hat; forward defaults to decode(encode(x)).
Check one before a long run: aexp check-model my_ae dataset=my_data"""
import math

from torch import nn

from aexp.models import Autoencoder


class TinyAE(Autoencoder):
    """Flatten -> hidden -> code -> hidden -> sigmoid image."""

    def __init__(self, in_shape, out_shape, hidden: int = 128, latent_dim: int = 2):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), hidden),
                                     nn.ReLU(), nn.Linear(hidden, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, math.prod(out_shape)), nn.Sigmoid())

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z).view(-1, *self.out_shape)
'''

DATA_PY = '''\
"""Datasets return aexp's Data: three splits of uint8 images [N, C, H, W] (or float vectors
[N, D]) with optional int64 labels; aexp batches, normalises and evaluates them."""
import torch

from aexp.data import Data, Split


def bars(size: int = 12, n_train: int = 1024, n_val: int = 256, n_test: int = 256,
         seed: int = 0) -> Data:
    """One bright bar per image, horizontal (class 0) or vertical (class 1), at a random row or
    column, over faint noise."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        labels = torch.randint(0, 2, (n,), generator=g)
        where = torch.randint(0, size, (n,), generator=g)
        x = torch.randint(0, 40, (n, 1, size, size), generator=g, dtype=torch.uint8)
        for i in range(n):
            if labels[i] == 0:
                x[i, 0, where[i], :] = 255
            else:
                x[i, 0, :, where[i]] = 255
        return Split(x, labels)

    return Data("bars", "image", split(n_train), split(n_val), split(n_test), num_classes=2,
                classes=["horizontal", "vertical"])
'''

LOSSES_PY = '''\
"""Loss terms are aexp Terms: called with the model output, input, target, model and the
reduction, they return one value per sample; aexp weights, sums and logs each term."""
from aexp.losses import Term, per_sample


class EdgeL1(Term):
    """L1 distance between the horizontal and vertical differences of output and target: it
    rewards sharp edges, which squared error alone blurs."""

    def __call__(self, out, x, y, model, reduction):
        dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
        dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
        return (per_sample((dx(out.x_hat) - dx(y)).abs(), reduction)
                + per_sample((dy(out.x_hat) - dy(y)).abs(), reduction))
'''

FILES = {
    "aexp.yaml": AEXP_YAML,
    "conf/model/my_ae.yaml": MODEL_YAML,
    "conf/dataset/my_data.yaml": DATASET_YAML,
    "conf/loss/my_loss.yaml": LOSS_YAML,
    "src/my_project/__init__.py": INIT_PY,
    "src/my_project/models.py": MODELS_PY,
    "src/my_project/data.py": DATA_PY,
    "src/my_project/losses.py": LOSSES_PY,
}


def init(folder: Path) -> list[Path]:
    """Write the project into `folder` (made if missing; refused unless empty)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise AexpError(f"{folder} is not empty: aexp init writes a new project into an empty or "
                        f"new folder")
    written = []
    for name, text in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="aexp init", description="Write a small aexp project (aexp.yaml, "
                        "conf/, src/my_project/) into an empty or new folder.")
    ap.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    written = init(args.folder)
    print(f"wrote {len(written)} files in {args.folder}: aexp.yaml, conf/{{model,dataset,loss}}/, "
          f"src/my_project/\nnext: cd {args.folder} && aexp train model=my_ae dataset=my_data "
          f"loss=my_loss")
    return 0
