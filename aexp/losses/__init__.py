"""Losses as a weighted sum of named terms (see `core`); the terms live by what they look at:
`recon` (output vs target), `latent` (the code), `regularised` (RAE's code and decoder terms),
`perceptual` (feature maps), `variational`, `vamp` and `disentangling` (objectives on a Gaussian
posterior), `adversarial` and `patchgan` (terms with a trained critic of their own). Config targets name them
here, e.g. `aexp.losses.MSE`."""
from aexp.losses.adversarial import Critic, FactorTC, permute_dims
from aexp.losses.core import REDUCTIONS, Loss, Term, per_sample
from aexp.losses.disentangling import DIP, CapacityKL, dip_covariance, dip_penalty
from aexp.losses.patchgan import PatchGAN
from aexp.losses.vamp import VampKL
from aexp.losses.latent import (ColorTriplet, Contractive, GaussianKL, LabelTriplet, Sparsity,
                                VectorQuantization, gaussian_kl, triplet_margin)
from aexp.losses.perceptual import Perceptual
from aexp.losses.recon import BCE, L1, MSE, ContinuousBernoulli, cb_log_norm
from aexp.losses.regularised import DecoderGradientPenalty, DecoderL2, LatentL2
from aexp.losses.variational import IWAE, MMD, TCDecomposition

__all__ = ["REDUCTIONS", "Loss", "Term", "per_sample", "MSE", "L1", "BCE", "ContinuousBernoulli",
           "cb_log_norm", "GaussianKL", "gaussian_kl", "Sparsity", "Contractive", "ColorTriplet",
           "LabelTriplet", "triplet_margin", "Perceptual", "IWAE", "TCDecomposition", "MMD",
           "VectorQuantization", "Critic", "FactorTC", "PatchGAN", "VampKL", "permute_dims", "DIP", "CapacityKL",
           "dip_covariance", "dip_penalty", "LatentL2", "DecoderGradientPenalty", "DecoderL2"]
