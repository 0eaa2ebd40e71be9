"""Perceptual (feature) loss: MSE between feature maps of the reconstruction and of the target
at chosen layers, with per-layer weights, plus an optional Gram-matrix (style) term.

The feature network is frozen and comes from a local file, never a download:
- `weights: PATH` - torchvision VGG16-bn with that state dict (full model or `features.*` only);
  layers are named `relu{block}_{conv}`, e.g. relu1_2, relu2_2, relu3_3, relu4_3.
- `features_run: RUN_DIR` - the encoder of a model aexp trained itself (its best checkpoint,
  loaded by `aexp.assemble`),
  when no VGG weights are at hand; layers are `stage1`, `stage2`, ... (the encoder's top-level
  blocks). Its features were learned for reconstructing that run's data, so it is a weaker
  stand-in for an ImageNet network, but an honest, trained one.
"""
from pathlib import Path

import torch
from torch import nn

from aexp.errors import ConfigError
from aexp.losses.core import Term, per_sample

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vgg_stages(path: str) -> tuple[list, list]:
    """VGG16-bn feature layers and their names (relu1_1 ... relu5_3, pool1 ... pool5)."""
    # Imported on use: torchvision.models pulls in torch._dynamo, 1.6 s of `aexp eval` and
    # `aexp explore` start-up (3.2 s -> 1.6 s measured) for a loss few runs use.
    from torchvision.models import vgg

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"perceptual loss: no such weights file {p} (a local VGG16-bn state dict)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"perceptual loss: cannot read {p}: {str(e).splitlines()[0][:200]}") from None
    # Only the convolutional part (vgg16_bn's "D" layout): the classifier is never used.
    features = vgg.make_layers(vgg.cfgs["D"], batch_norm=True)
    state = {k.removeprefix("features."): v for k, v in state.items()
             if k.startswith("features.") or k[0].isdigit()}
    try:
        features.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"perceptual loss: {p} is not a VGG16-bn state dict "
                          f"({str(e).splitlines()[0][:120]})") from None
    names, block, conv = [], 1, 0
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            conv += 1
        names.append(f"relu{block}_{conv}" if isinstance(layer, nn.ReLU) else
                     f"pool{block}" if isinstance(layer, nn.MaxPool2d) else f"layer{len(names)}")
        if isinstance(layer, nn.MaxPool2d):
            block, conv = block + 1, 0
    return list(features), names


def encoder_stages(model, run_dir) -> tuple[list, list]:
    """The top-level encoder blocks of a model aexp trained (`build` loads the run named by
    `features_run` and hands its model here)."""
    encoder = getattr(model, "encoder", None)   # not part of the model contract: dense VAEs lack it
    if not isinstance(encoder, nn.Sequential):
        raise ConfigError(f"perceptual loss: the model of {run_dir} has no sequential encoder "
                          f"to take features from (use a conv or resnet run)")
    stages = [m for m in encoder if not isinstance(m, nn.Flatten)]
    return stages, [f"stage{i + 1}" for i in range(len(stages))]


def gram(f: torch.Tensor) -> torch.Tensor:
    """Channel Gram matrix per sample, normalised by the number of entries."""
    b, c, h, w = f.shape
    f = f.flatten(2)
    return f @ f.transpose(1, 2) / (c * h * w)


class Perceptual(Term):
    def __init__(self, weight: float = 1.0, layers: dict | None = None, style_weight: float = 0.0,
                 weights: str | None = None, features_run: str | None = None, imagenet_norm=None,
                 run_model=None):
        super().__init__(weight)
        if (weights is None) == (features_run is None):
            raise ConfigError("perceptual loss needs exactly one feature network: "
                              "loss.terms.perceptual.weights=<VGG16-bn state dict file> or "
                              "features_run=<an aexp run folder>")
        # `run_model`: the model of `features_run`, loaded by `build` (config -> objects)
        stages, names = vgg_stages(weights) if weights else encoder_stages(run_model, features_run)
        layers = dict(layers or {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 1.0})
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ConfigError(f"perceptual loss: unknown layer(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(n for n in names if not n.startswith('layer'))}")
        last = max(names.index(n) for n in layers)
        self.net = nn.Sequential(*stages[:last + 1]).eval().requires_grad_(False)
        self.taps = {names.index(n): float(w) for n, w in layers.items()}
        self.style_weight = float(style_weight)
        # VGG expects ImageNet-normalised RGB; a run's encoder expects what it was trained on.
        self.imagenet = bool(weights) if imagenet_norm is None else bool(imagenet_norm)

    def _prepare(self, img):
        if img.dim() != 4:
            raise ConfigError("perceptual loss needs image data (N, C, H, W)")
        if self.imagenet:
            if img.shape[1] == 1:
                img = img.expand(-1, 3, -1, -1)
            if img.shape[1] != 3:
                raise ConfigError(f"perceptual loss (VGG) takes 1- or 3-channel images, "
                                  f"got {img.shape[1]} channels")
            mean = img.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = img.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
            img = (img - mean) / std
        return img

    def _features(self, img):
        feats, h = [], self._prepare(img)
        for i, layer in enumerate(self.net):
            h = layer(h)
            if i in self.taps:
                feats.append((self.taps[i], h))
        return feats

    def __call__(self, out, x, y, model, reduction):
        self.net.to(out.x_hat.device)
        total = 0.0
        with torch.no_grad():
            target = self._features(y)
        for (w, f), (_, t) in zip(self._features(out.x_hat), target):
            total = total + w * per_sample((f - t) ** 2, reduction)
            if self.style_weight:
                total = total + self.style_weight * w * per_sample((gram(f) - gram(t)) ** 2, reduction)
        return total
