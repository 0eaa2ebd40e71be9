"""Hand-written training loops that `make bench` runs beside aexp on the same model and data: the
peers of the same-model parity rows. Plain PyTorch, as a careful user would write them: data
resident as tensors, a random permutation per epoch, batches sliced from it, no DataLoader and
no per-step `.item()`. They import nothing from aexp.

- `published_baseline32`: the published 32x32 baseline (conv 3->12, adaptive max-pool to 16,
  conv 12->24, pool to 8, linear 1,536 -> 1,000, mirrored with two upsample + conv blocks, the
  last one giving the image), with BatchNorm after each hidden conv as aexp's stages have, MSE,
  Adam; MNIST as 3x32x32.
- `examples_vae`: pytorch/examples' VAE (784-400-20, BCE summed + KL, Adam 1e-3, batch 128),
  its model and loss as written there, the data resident instead of its ToTensor DataLoader.

Each returns the median samples/s of its timed epochs (`steps` optimiser steps each)."""
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


class PublishedBaseline32(nn.Module):
    def __init__(self, channels=3, code=1000):
        super().__init__()
        block = lambda a, b: [nn.Conv2d(a, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        self.encoder = nn.Sequential(*block(channels, 12), nn.AdaptiveMaxPool2d(16),
                                     *block(12, 24), nn.AdaptiveMaxPool2d(8), nn.Flatten(),
                                     nn.Linear(24 * 8 * 8, code))
        self.decoder = nn.Sequential(nn.Linear(code, 24 * 8 * 8), nn.ReLU(), nn.Unflatten(1, (24, 8, 8)),
                                     nn.Upsample(scale_factor=2), *block(24, 12),
                                     nn.Upsample(scale_factor=2), nn.Conv2d(12, channels, 3, 1, 1))

    def forward(self, x):
        return self.decoder(self.encoder(x)).clamp(0, 1)


class ExamplesVAE(nn.Module):
    """pytorch/examples vae/main.py's model, unchanged."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, x):
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def examples_vae_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    return bce + -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def examples_vae_step(model, x):
    """The batch loss of pytorch/examples' VAE."""
    recon, mu, logvar = model(x)
    return examples_vae_loss(recon, x, mu, logvar)


def _run(model, step, images: torch.Tensor, batch: int, epochs: int, steps: int, device) -> float:
    """Median samples/s over epochs 2.. of `steps` steps each (the first is warm-up)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = images.to(device)
    rates = []
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), device=device)
        t0 = time.perf_counter()
        for i in range(steps):
            x = x_all[perm[i * batch:(i + 1) * batch]].float() / 255
            opt.zero_grad(set_to_none=True)
            step(model, x).backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * batch / (time.perf_counter() - t0))
    return statistics.median(rates[1:] or rates)


def published_baseline32(images: torch.Tensor, batch=128, epochs=3, steps=40, device=torch.device("cpu")) -> float:
    """`images`: uint8 [N, 3, 32, 32]."""
    torch.manual_seed(0)
    model = PublishedBaseline32(images.shape[1]).to(device)
    return _run(model, lambda m, x: F.mse_loss(m(x), x), images, batch, epochs, steps, device)


def examples_vae(images: torch.Tensor, batch=128, epochs=3, steps=200, device=torch.device("cpu")) -> float:
    """`images`: uint8 [N, 1, 28, 28]."""
    torch.manual_seed(0)
    model = ExamplesVAE().to(device)
    return _run(model, examples_vae_step, images, batch, epochs, steps, device)


def dataloader_loop(model, loss_of, root, epochs: int, batch: int, device, lr: float = 1e-3) -> float:
    """The tutorials' loop (pytorch/examples' shape): torchvision MNIST with ToTensor, a shuffled
    DataLoader, plain Adam, a per-batch `.item()`. `loss_of(model, x)` gives the batch loss.
    Median samples/s of epochs 2.. (the first is warm-up)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    ds = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(ds, batch_size=batch, shuffle=True, **kwargs)
    rates = []
    for _ in range(epochs):
        model.train()
        t0, train_loss = time.perf_counter(), 0.0
        for x, _ in loader:
            x = x.to(device)
            optimizer.zero_grad()
            loss = loss_of(model, x)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        rates.append(len(ds) / (time.perf_counter() - t0))
    return statistics.median(rates[1:] or rates)
