"""Dense (fully connected) autoencoders: the linear colour AE, the MLP AE, the Gaussian VAE and
its conditional form (CVAE: class labels into encoder and decoder)."""
import math

import torch
from torch import nn

from aexp.errors import ConfigError
from aexp.models.base import BOUNDS, Autoencoder, Output
from aexp.models.base import activation as make_act


def _stack(sizes, act, bias: bool = True) -> list:
    """Linear layers between consecutive sizes, each followed by its activation: `act` is one
    name for every layer or a list with one name per layer."""
    acts = [act] * (len(sizes) - 1) if isinstance(act, str) else list(act)
    if len(acts) != len(sizes) - 1:
        raise ConfigError(f"model.activation lists {len(acts)} activations for "
                          f"{len(sizes) - 1} hidden layers; give one per layer or a single name")
    layers = []
    for a, b, name in zip(sizes[:-1], sizes[1:], acts):
        layers += [nn.Linear(a, b, bias=bias), make_act(name)]
    return layers


class MLP(Autoencoder):
    """Dense autoencoder: flatten -> hidden layers -> latent -> mirrored hidden -> output.

    `hidden: []` gives a linear autoencoder (e.g. the RGB -> 2-D -> RGB colour model, or the
    overcomplete 784 -> 784 -> 784 one). `activation` is one name or one per hidden layer (the
    decoder mirrors the list).
    `in_features`, when set, states the input size the model is meant for, so a mismatch with
    the dataset fails before training instead of silently training something else.
    """
    decoder_parts = ("decoder",)

    def __init__(self, in_shape, out_shape, hidden=(), latent_dim=2, activation="relu",
                 latent_activation="none", output_activation="sigmoid", bias=True,
                 in_features=None):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        if in_features is not None and in_features != n_in:
            raise ConfigError(
                f"model expects {in_features} input features but the dataset gives "
                f"{n_in} (shape {self.in_shape}); pick a model that fits the dataset"
            )
        hidden = list(hidden)
        self.latent_dim = latent_dim
        self.latent_range = BOUNDS.get(latent_activation)
        enc = _stack([n_in] + hidden, activation, bias)
        self.encoder = nn.Sequential(
            nn.Flatten(), *enc, nn.Linear(([n_in] + hidden)[-1], latent_dim, bias=bias),
            make_act(latent_activation),
        )
        mirrored = activation if isinstance(activation, str) else list(activation)[::-1]
        dec = _stack([latent_dim] + hidden[::-1], mirrored, bias)
        self.decoder = nn.Sequential(
            *dec, nn.Linear(([latent_dim] + hidden[::-1])[-1], n_out, bias=bias),
            make_act(output_activation),
        )

    def weight_product(self) -> torch.Tensor:
        """W_last @ ... @ W_1, the product of the weight matrices: the end-to-end linear map when
        every activation is the identity (the overcomplete model: it approaches I as the model
        learns to copy its input); for other models just the product of the weights."""
        linears = [m for m in [*self.encoder, *self.decoder] if isinstance(m, nn.Linear)]
        product = linears[0].weight
        for layer in linears[1:]:
            product = layer.weight @ product
        return product.detach()

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z).view(-1, *self.out_shape)


class VAE(Autoencoder):
    """Dense Gaussian VAE: encoder -> (mu, log-variance) heads; z = mu + sigma * eps while
    training, z = mu at evaluation; decoder mirrors the encoder. `label_width`: extra inputs
    the encoder and the decoder take beside the image and the code (a CVAE's one-hot labels)."""
    decoder_parts = ("decoder",)

    def __init__(self, in_shape, out_shape, hidden=(512,), latent_dim=2, activation="relu",
                 output_activation="sigmoid", label_width: int = 0):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        n_in, n_out = math.prod(self.in_shape) + label_width, math.prod(self.out_shape)
        hidden = list(hidden)
        self.latent_dim = latent_dim
        self.body = nn.Sequential(nn.Flatten(), *_stack([n_in] + hidden, activation))
        width = ([n_in] + hidden)[-1]
        self.mu = nn.Linear(width, latent_dim)
        self.logvar = nn.Linear(width, latent_dim)
        code = latent_dim + label_width
        self.decoder = nn.Sequential(
            *_stack([code] + hidden[::-1], activation),
            nn.Linear(([code] + hidden[::-1])[-1], n_out), make_act(output_activation),
        )

    def posterior(self, x):
        h = self.body(x)
        return self.mu(h), self.logvar(h)

    def draw(self, mu, logvar):
        """The code: a reparameterised sample while training, the mean at evaluation."""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu

    def encode(self, x):
        return self.posterior(x)[0]

    def decode(self, z):
        return self.decoder(z).view(-1, *self.out_shape)

    def forward(self, x):
        mu, logvar = self.posterior(x)
        z = self.draw(mu, logvar)
        return Output(self.decode(z), z, {"mu": mu, "logvar": logvar})


class CVAE(VAE):
    """Conditional VAE (Sohn et al., 2015): the class label, one-hot, is joined to the flattened
    input of the encoder and to the code the decoder reads, so the code need not carry the
    class. Built with the data's `num_classes` (a dataset without labels is refused before
    training). Without labels (a decoded plane) it reads them as class 0."""
    conditional = True

    def __init__(self, in_shape, out_shape, num_classes=None, hidden=(512,), latent_dim=2,
                 activation="relu", output_activation="sigmoid"):
        if not num_classes:
            raise ConfigError("a conditional model needs class labels: pick a labelled dataset "
                              "(e.g. dataset=digits or dataset=mnist)")
        super().__init__(in_shape, out_shape, hidden, latent_dim, activation, output_activation,
                         label_width=num_classes)
        self.num_classes = int(num_classes)

    def one_hot(self, labels, like: torch.Tensor) -> torch.Tensor:
        """[N, num_classes] one-hot rows for `labels` (None: class 0 for every row of `like`)."""
        if labels is None:   # (built from `like`, not len(like): an exported graph keeps its batch axis)
            return nn.functional.pad(torch.ones_like(like[:, :1]), (0, self.num_classes - 1))
        classes = torch.arange(self.num_classes, device=like.device)
        return (labels.long().unsqueeze(1) == classes).to(like.dtype)   # (one_hot, export-friendly)

    def posterior(self, x, labels=None):
        flat = x.flatten(1)
        return super().posterior(torch.cat([flat, self.one_hot(labels, flat)], 1))

    def encode(self, x, labels=None):
        return self.posterior(x, labels)[0]

    def decode(self, z, labels=None):
        return super().decode(torch.cat([z, self.one_hot(labels, z)], 1))

    def forward(self, x, labels=None):
        mu, logvar = self.posterior(x, labels)
        z = self.draw(mu, logvar)
        return Output(self.decode(z, labels), z, {"mu": mu, "logvar": logvar})
