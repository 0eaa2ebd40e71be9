"""Data: datasets as resident tensors, or read per batch from host memory or disk when they are
bigger than memory (`Data`/`Split` are the contract, see core.py; `storage`, `decode`), the task
that turns a sample into (input, target) (`tasks`), input corruption (`corruption`) and colour
spaces (`color`). Each option in conf/dataset/ names one of the builders re-exported here;
conf/task/ and conf/corruption/ name classes of `tasks` and `corruption`."""
from aexp.data.builtin import colors, digits
from aexp.data.core import Data, Split, as_float, carve
from aexp.data.files import MNIST_FILES, cifar10, fashion_mnist, mnist, read_idx
from aexp.data.folder import image_folder
from aexp.data.sprites import dsprites
from aexp.data.storage import Stored

__all__ = ["Data", "Split", "as_float", "carve", "colors", "digits", "mnist", "fashion_mnist",
           "cifar10", "dsprites", "image_folder", "read_idx", "MNIST_FILES", "Stored"]
