"""The regularised autoencoder's terms (RAE, Ghosh et al. 2020, "From variational to deterministic
autoencoders"): a deterministic autoencoder whose code is kept small (`LatentL2`, ½‖z‖²) and
whose decoder is kept smooth, by a gradient penalty (`DecoderGradientPenalty`, RAE-GP,
loss=rae) or by an L2 penalty on its weights (`DecoderL2`, RAE-L2, loss=rae_l2), so that a
density fitted to the codes after training (the `gmm` sampler of `aexp sample`) generates as
well as a VAE's prior.

RAE-L2 is a loss term rather than optimizer weight decay on a parameter group: the optimizer
config knows nothing of which parameters decode; each model names them (`decoder_parts`,
aexp.models.base), and the term reads them at every step."""
import torch

from aexp.errors import ConfigError
from aexp.losses.core import Term, decoder_with, per_sample


class LatentL2(Term):
    """½‖z‖² per sample: RAE's code penalty (its β), in place of a VAE's KL."""

    def __call__(self, out, x, y, model, reduction):
        return 0.5 * per_sample(out.z.pow(2), reduction)


class DecoderGradientPenalty(Term):
    """‖∇_z Σ D(z)‖² per sample: the gradient of the decoder's summed output with respect to the
    code, at the batch's codes (the estimate RAE's and pythae's RAE-GP use; a cheap stand-in for
    the decoder Jacobian's norm). The codes are detached: it regularises the decoder only. The
    decoder runs a second time on them (under validation too, where gradients are off), and
    the penalty has a gradient of its own (`create_graph`). A decoder that snaps its input to a
    codebook (VQ) has no gradient in z: the penalty is 0 there."""

    uses_labels = True   # a conditional model's decoder needs them (losses.core.decoder_with)

    def __call__(self, out, x, y, model, reduction, labels=None):
        training = torch.is_grad_enabled()   # validation: the value only, no graph kept
        with torch.enable_grad():
            z = out.z.detach().requires_grad_(True)
            x_hat = decoder_with(model, labels)(z)
            (g,) = torch.autograd.grad(x_hat.float().sum(), z, create_graph=training, allow_unused=True)
        if g is None:
            return torch.zeros(len(z), device=z.device)
        sq = g.flatten(1).pow(2).sum(1)
        return sq / z[0].numel() if reduction == "mean" else sq


class DecoderL2(Term):
    """‖θ_D‖², the sum of the squares of every parameter of the decoder (the submodules the model
    names in `decoder_parts`; weights and biases, as pythae's RAE_L2 decays its decoder's
    parameter group): RAE-L2's λ-weighted term. It is a property of the model, not of a
    sample: every sample of the batch carries the same value, under either reduction, so the
    total adds λ‖θ_D‖² once per step. It has no path to the encoder (no gradient there)."""

    def __call__(self, out, x, y, model, reduction):
        params = model.decoder_parameters() if hasattr(model, "decoder_parameters") else None
        if not params:
            raise ConfigError(f"loss term 'decoder_l2' needs a model that names its decoder's "
                              f"parameters (decoder_parts); {type(model).__name__} does not")
        total = sum(p.float().pow(2).sum() for p in params)
        return total.expand(len(out.z))
