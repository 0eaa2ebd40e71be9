"""ResNet autoencoder: a torchvision resnet18/34 encoder (from scratch, or from a local weights
file; nothing is downloaded), optionally frozen for the first epochs, and a decoder of upsampling
blocks back to the input's own size through the encoder's five stride-2 stages."""
import math
from pathlib import Path

import torch
import torchvision
from torch import nn

from aexp.errors import ConfigError
from aexp.models.base import Autoencoder, Output
from aexp.models.base import activation as make_act
from aexp.models.blocks import UpBlock, check_sizes, halvings
from aexp.models.conv import ConvAE

ARCHS = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34}


def load_weights(net: nn.Module, path: str) -> None:
    """Load a torchvision ResNet state dict from a local file (the classifier head is ignored)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model.weights: no such file {p} (give a local resnet state dict; "
                          f"nothing is downloaded)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"model.weights: cannot read {p}: {str(e).splitlines()[0][:200]}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ConfigError(f"model.weights: {p} does not fit the architecture "
                          f"({len(missing)} missing, {len(unexpected)} unexpected keys)")


class ResNetAE(Autoencoder):
    decoder_parts = ("unbottleneck", "decoder", "out_act")

    def __init__(self, in_shape, out_shape, arch="resnet18", weights=None, freeze_epochs=0,
                 decoder_channels=(256, 128, 64, 32), latent_dim=None, upsample="nearest",
                 activation="relu", output_activation="sigmoid"):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if len(self.in_shape) != 3 or self.in_shape[1:] != self.out_shape[1:]:
            raise ConfigError(f"resnet model needs images (C, H, W) in and out of the same size; "
                              f"the dataset gives {self.in_shape} -> {self.out_shape}")
        if arch not in ARCHS:
            raise ConfigError(f"model.arch must be one of {', '.join(ARCHS)}, got '{arch}'")
        net = ARCHS[arch](weights=None)
        if weights is not None:
            load_weights(net, weights)
        c_in = self.in_shape[0]
        if c_in != 3:
            # Grey (or other) input: a new first conv; pretrained RGB filters are summed over
            # colour so a grey image sees what an RGB network sees of the same grey picture.
            rgb = net.conv1.weight.detach()
            net.conv1 = nn.Conv2d(c_in, 64, 7, 2, 3, bias=False)
            if weights is not None and c_in == 1:
                net.conv1.weight.data.copy_(rgb.sum(1, keepdim=True))
        self.encoder = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                     net.layer1, net.layer2, net.layer3, net.layer4)
        self.freeze_epochs = freeze_epochs
        self.sizes = halvings(self.in_shape[1:], 5, ceil=True)   # conv1, maxpool, layer2-4
        check_sizes(self.sizes, f"{arch} encoder")
        c_feat = net.fc.in_features
        self.feature_shape = (c_feat, *self.sizes[-1])
        flat = math.prod(self.feature_shape)
        self.latent_dim = latent_dim or flat
        self.bottleneck = None if latent_dim is None else nn.Linear(flat, latent_dim)
        self.unbottleneck = None if latent_dim is None else nn.Linear(latent_dim, flat)
        self.quantizer = None   # ConvAE.decode, borrowed below, reads it: a continuous code
        back = [c_feat] + list(decoder_channels) + [self.out_shape[0]]
        if len(back) != 6:
            raise ConfigError(f"model.decoder_channels needs 4 widths (one per upsampling stage "
                              f"before the output), got {len(back) - 2}")
        self.decoder = nn.ModuleList([UpBlock(upsample, a, b, activation, last=(i == 4))
                                      for i, (a, b) in enumerate(zip(back[:-1], back[1:]))])
        self.out_act = make_act(output_activation)

    def start_epoch(self, epoch: int | None) -> None:
        """Freeze the encoder during epochs 1..freeze_epochs, train it afterwards (and outside
        a training run: epoch None)."""
        for p in self.encoder.parameters():
            p.requires_grad_(epoch is None or epoch > self.freeze_epochs)

    def encode(self, x):
        h = self.encoder(x).flatten(1)
        return h if self.bottleneck is None else self.bottleneck(h)

    # The decoder has ConvAE's layout (unbottleneck, blocks back through `sizes`, output act).
    decode = ConvAE.decode

    def forward(self, x):
        z = self.encode(x)
        return Output(self.decode(z, halvings(x.shape[-2:], 5, ceil=True)), z, {})
