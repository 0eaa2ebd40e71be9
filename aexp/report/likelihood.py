"""The VAE section of `aexp eval` (report/evaluate.py): ELBO and importance-sampled NLL of the
test set under the decoder's likelihood, on a binarised test set that is the same whatever the
number of samples, the batch, the device or the repeat, beside the trivial model's NLL of the
same images. `eval.nll_repeats` > 1 estimates the NLL that many times with independent
importance samples (pythae reports the mean of 5) and reports their mean, std and values."""
import numpy as np
import torch

from aexp.losses.core import decoder_with
from aexp.losses.variational import decoder_log_prob, log_weights
from aexp.models import call
from aexp.report import measures


def sampling_seed(seed: int, repeat: int) -> int:
    """The importance-sampling seed of a repeat: `eval.seed` itself for the first (so one
    repeat gives the numbers aexp always gave), a SeedSequence draw keyed by (seed, repeat)
    for the others. The binarisation is keyed by (seed, image index) alone: every repeat sees
    the same binarised test set."""
    if repeat == 0:
        return int(seed)
    return int(np.random.SeedSequence([seed & (2**64 - 1), repeat]).generate_state(1, np.uint64)[0] >> 1)


@torch.no_grad()
def vae_likelihood(model, data, ev, device, mean_image=None) -> tuple[dict, float | None]:
    """ELBO and importance-sampled NLL (nats per test sample) under the decoder's likelihood.
    Bernoulli on image data uses the standard binarised form: each test image stochastically
    binarised once (pixel ~ Bernoulli(intensity)), as in Burda et al. (2015), drawn on the CPU
    from (eval.seed, the image's index): the same binarised test set whatever K, the batch
    or the device, so NLLs measured with different settings are on the same images.
    With `mean_image` (the mean training image), also the trivial baseline's NLL of the same
    test images: every pixel independent, with the mean image as its Bernoulli probability
    (Laplace-smoothed over the training images, so no pixel has probability 0) or as the
    Gaussian's mean."""
    k, n, repeats = int(ev.nll_samples), len(data.test), int(ev.get("nll_repeats", 1))
    if ev.nll_max_images:
        n = min(n, int(ev.nll_max_images))
    gens = [torch.Generator(device=device).manual_seed(sampling_seed(int(ev.seed), r)) for r in range(repeats)]
    binarize = ev.likelihood == "bernoulli" and ev.binarize and data.kind == "image"
    # the decoder's likelihood (bernoulli or gaussian, checked by build) as the IWAE loss has it
    likelihood = decoder_log_prob(str(ev.likelihood), float(ev.gaussian_sigma))
    # a model whose prior is not N(0, I) (a VampPrior VAE: aexp.losses.vamp binds it) gives its own
    log_prior = getattr(model, "log_prior", None)
    if mean_image is not None and ev.likelihood == "bernoulli":
        mean_image = (mean_image * len(data.train) + 1) / (len(data.train) + 2)
    if mean_image is not None:
        mean_image = mean_image.to(device)
    nll, elbo, base = [[] for _ in gens], [[] for _ in gens], []
    for i in range(0, n, int(ev.nll_batch)):
        idx = torch.arange(i, min(i + int(ev.nll_batch), n), device=device)
        _, y = data.batch(data.test, idx)
        labels = data.test.y[idx] if model.conditional else None   # a CVAE: p(x | z, label)
        if binarize:
            y = binarized(y, i, int(ev.seed))
        if mean_image is not None:
            constant = lambda z: mean_image.expand(len(y), *mean_image.shape)
            base.append(-likelihood(y, None, constant).cpu())
        extras = call(model, y, labels).extras
        log_px = lambda x, z: likelihood(x, z, decoder_with(model, labels))
        for r, gen in enumerate(gens):   # a model with a hierarchy gives its own joint weights
            lw = log_weights(model, extras, y, log_px, k, generator=gen, log_prior=log_prior)
            a, b = measures.nll_and_elbo(lw)
            nll[r].append(a.cpu())
            elbo[r].append(b.cpu())
    form = ("stochastically binarised test images (pixel ~ Bernoulli(intensity), seed "
            f"{ev.seed} and the image's index)" if binarize else "test data as stored")
    values = [torch.cat(v).mean().item() for v in nll]
    prior = getattr(model, "prior_name", None) or (
        "N(0, I)" if log_prior is None else getattr(log_prior, "name", "the model's own"))
    out = {"nll": float(np.mean(values)), "elbo": float(np.mean([torch.cat(v).mean().item() for v in elbo])),
           "samples": k, "images": n, "likelihood": str(ev.likelihood), "data": form, "prior": prior}
    if repeats > 1:   # the same images each time, independent importance samples
        out.update({"nll_repeats": values, "nll_std": float(np.std(values)), "repeats": repeats})
    if model.conditional:   # a CVAE's numbers are -log p(x | label): not comparable with a VAE's
        out["given"] = "the test image's class label"
    return out, (torch.cat(base).mean().item() if base else None)


def binarized(y: torch.Tensor, first: int, seed: int) -> torch.Tensor:
    """Test images `first`, `first` + 1, ... stochastically binarised: pixel = 1 where a uniform
    draw falls below its intensity, the draws of each image from its own numpy generator keyed
    by (seed, index) (SeedSequence: distinct keys never share a stream)."""
    p = y.cpu().clamp(0, 1)
    u = np.stack([np.random.default_rng([seed & (2**64 - 1), first + j]).random(p.shape[1:], np.float32)
                  for j in range(len(p))])
    return (torch.from_numpy(u) < p).float().to(y.device)
