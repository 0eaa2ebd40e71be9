"""Samplers over a trained autoencoder's code space, fitted after training on its training codes
(`aexp sample`, report/sample.py): a single Gaussian (`Normal`), a Gaussian mixture (`GMM`,
scikit-learn's EM), and, in report/latent_models.py, a second small VAE on the codes
(`TwoStage`, Dai & Wipf 2019) and a masked autoregressive flow (`MAF`, Papamakarios et al. 2017).

Every sampler follows one contract: `fit(codes [N, D])`, `sample(n, generator) -> [n, D]`,
`log_prob(codes) -> [N]` (nats per code; the two-stage VAE gives its ELBO, a lower bound),
`state()` (tensors and plain numbers only) and `load_state(state)`. Each is named in config
(conf/sampler/<name>.yaml, `_target_` and its settings).

A fitted sampler is stored as RUN_DIR/samplers/<name>.pt: tensors and plain numbers, read back
with `weights_only=True`, so a crafted file cannot run code; the class comes from the file's
sampler name through a fixed table (`SAMPLERS`), never from the file, and a file whose contents
do not fit that sampler is refused in one line (`load`)."""
import math
from pathlib import Path

import numpy as np
import torch

from aexp.errors import CheckpointError
from aexp.io import atomic_write

FORMAT = "aexp-sampler-1"


class Sampler:
    """The contract (see the module's docstring). `settings` are the constructor's arguments,
    plain numbers and strings, stored beside the state."""
    settings: dict

    def fit(self, codes: torch.Tensor) -> "Sampler":
        raise NotImplementedError

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        raise NotImplementedError


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, tril: torch.Tensor | None,
                      std: torch.Tensor | None) -> torch.Tensor:
    """log N(x; mean, L Lᵀ) (full, `tril`) or with a diagonal `std`, per row of x."""
    d = x.shape[-1]
    if tril is not None:
        diff = (x - mean).unsqueeze(-1)
        sol = torch.linalg.solve_triangular(tril, diff, upper=False).squeeze(-1)
        half_logdet = torch.diagonal(tril, dim1=-2, dim2=-1).log().sum(-1)
    else:
        sol = (x - mean) / std
        half_logdet = std.log().sum(-1)
    return -0.5 * sol.pow(2).sum(-1) - half_logdet - 0.5 * d * math.log(2 * math.pi)


class Normal(Sampler):
    """One Gaussian fitted to the codes: full covariance up to `max_full` dimensions (and more
    codes than dimensions), else diagonal. `jitter` keeps the covariance positive definite."""

    def __init__(self, max_full: int = 512, jitter: float = 1e-5):
        self.settings = {"max_full": int(max_full), "jitter": float(jitter)}
        self.mean = self.tril = self.std = None

    def fit(self, codes):
        x = codes.double()
        self.mean = x.mean(0)
        d = x.shape[1]
        if d <= self.settings["max_full"] and len(x) > d:
            cov = torch.cov(x.T).reshape(d, d) + self.settings["jitter"] * torch.eye(d, dtype=x.dtype)
            self.tril, self.std = torch.linalg.cholesky(cov).float(), None
        else:
            self.tril, self.std = None, (x.std(0) + self.settings["jitter"]).float()
        self.mean = self.mean.float()
        return self

    def sample(self, n, gen):
        eps = torch.randn(n, len(self.mean), generator=gen)
        return self.mean + (eps @ self.tril.T if self.tril is not None else eps * self.std)

    def log_prob(self, codes):
        return gaussian_log_prob(codes.float(), self.mean, self.tril, self.std)

    def state(self):
        return {"mean": self.mean, "tril": self.tril, "std": self.std}

    def load_state(self, state):
        self.mean, self.tril, self.std = _tensors(state, ("mean",), ("tril", "std"))
        d = len(self.mean)
        _shape(self.tril, (d, d), "tril")
        _shape(self.std, (d,), "std")
        if (self.tril is None) == (self.std is None):
            raise ValueError("needs exactly one of tril and std")


class GMM(Sampler):
    """A Gaussian mixture of `k` components fitted by EM (scikit-learn's GaussianMixture, seeded
    with `seed`): the ex-post density of RAE (Ghosh et al. 2020). `covariance`: full, diag, or
    auto (full up to `max_full` dimensions, diagonal above: a full covariance per component of
    a wide code costs k·D² numbers and rarely fits well from few codes)."""

    def __init__(self, k: int = 10, covariance: str = "auto", max_full: int = 64,
                 max_iter: int = 200, seed: int = 0, reg_covar: float = 1e-6):
        if int(k) < 1 or covariance not in ("auto", "full", "diag"):
            raise ValueError(f"needs k >= 1 and covariance auto|full|diag, got k={k}, {covariance!r}")
        self.settings = {"k": int(k), "covariance": str(covariance), "max_full": int(max_full),
                         "max_iter": int(max_iter), "seed": int(seed), "reg_covar": float(reg_covar)}
        self.weights = self.means = self.tril = self.std = None

    def fit(self, codes):
        from sklearn.mixture import GaussianMixture   # (imports scipy: only when fitted)
        s, x = self.settings, codes.double().numpy()
        kind = s["covariance"]
        if kind == "auto":
            kind = "full" if x.shape[1] <= s["max_full"] else "diag"
        k = min(s["k"], len(x))
        gm = GaussianMixture(n_components=k, covariance_type=kind, max_iter=s["max_iter"],
                             random_state=s["seed"], reg_covar=s["reg_covar"]).fit(x)
        self.weights = torch.from_numpy(gm.weights_).float()
        self.means = torch.from_numpy(gm.means_).float()
        if kind == "full":
            self.tril, self.std = torch.linalg.cholesky(torch.from_numpy(gm.covariances_)).float(), None
        else:
            self.tril, self.std = None, torch.from_numpy(np.sqrt(gm.covariances_)).float()
        return self

    def sample(self, n, gen):
        comp = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        eps = torch.randn(n, self.means.shape[1], generator=gen)
        if self.tril is not None:
            return self.means[comp] + (self.tril[comp] @ eps.unsqueeze(-1)).squeeze(-1)
        return self.means[comp] + eps * self.std[comp]

    def log_prob(self, codes):
        x = codes.float().unsqueeze(1)                              # [N, 1, D] against [k, D]
        per = gaussian_log_prob(x, self.means, self.tril, self.std)  # [N, k]
        return torch.logsumexp(per + self.weights.log(), dim=1)

    def state(self):
        return {"weights": self.weights, "means": self.means, "tril": self.tril, "std": self.std}

    def load_state(self, state):
        self.weights, self.means, self.tril, self.std = _tensors(state, ("weights", "means"),
                                                                 ("tril", "std"))
        k, d = self.means.shape if self.means.dim() == 2 else (0, 0)
        _shape(self.weights, (k,), "weights")
        _shape(self.tril, (k, d, d), "tril")
        _shape(self.std, (k, d), "std")
        if (self.tril is None) == (self.std is None) or not k or not (self.weights > 0).all():
            raise ValueError("needs positive weights and exactly one of tril and std")


def _tensors(state: dict, required: tuple, optional: tuple) -> list:
    """The named entries of a stored state: tensors (optional ones may be None), finite."""
    out = []
    for name in (*required, *optional):
        value = state.get(name)
        if value is None and name in optional:
            out.append(None)
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ValueError(f"{name} is not a float tensor")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} is not finite")
        out.append(value.float())
    return out


def _shape(t, shape: tuple, name: str) -> None:
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def save(path: Path, name: str, sampler: Sampler, meta: dict) -> None:
    """Store a fitted sampler: its name, settings, state and `meta` (plain numbers and strings:
    the code's shape, the run's epoch, ...)."""
    blob = {"format": FORMAT, "sampler": name, "settings": dict(sampler.settings),
            "state": sampler.state(), "meta": meta}
    atomic_write(path, lambda f: torch.save(blob, f))


def load(path: Path, table: dict) -> tuple[Sampler, dict]:
    """(the sampler stored at `path`, its meta). `table`: sampler name -> class (the file names
    the sampler; it never names a class). Anything else is refused in one line."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # truncated, garbled, or holding objects weights_only refuses
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load sampler file {path}: {first}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an aexp sampler file")
    name, settings = blob.get("sampler"), blob.get("settings")
    if name not in table or not isinstance(settings, dict) or not isinstance(blob.get("state"), dict):
        raise CheckpointError(f"{path}: names no known sampler ({name!r}) or lacks its settings")
    if not all(isinstance(v, (int, float, str, bool)) for v in settings.values()):
        raise CheckpointError(f"{path}: the sampler's settings are not plain numbers and strings")
    try:
        sampler = table[name](**settings)
        sampler.load_state(blob["state"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the stored {name} sampler does not fit: "
                              f"{str(e).splitlines()[0][:160] if str(e) else type(e).__name__}") from None
    meta = blob.get("meta")
    return sampler, meta if isinstance(meta, dict) else {}
