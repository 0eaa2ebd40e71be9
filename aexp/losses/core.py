"""The loss mechanism: a `Loss` is a weighted sum of named `Term`s. Each term returns one value
per sample; `Loss` averages over the batch, weights and sums them, and returns every term so each
is logged.

Reduction (documented, explicit):
- `sum`  (default): per sample, sum over all pixels / latent dimensions, then mean over the batch.
  This is the scale of the VAE objective (nats per image) and of the classic Keras/PyTorch examples.
- `mean`: per sample, mean over pixels / latent dimensions, then mean over the batch
  (`nn.MSELoss()`'s scale for reconstruction terms).

A term may also own trained state (a FactorVAE discriminator with its own optimiser, a counter
of steps): it overrides `update`, which the training loop calls once per batch after the model's
optimiser step (`Loss.auxiliary_step`), and `state_dict`/`load_state_dict`, which go into the
checkpoint (`Loss.state_dict`), so a resumed run continues exactly. See `aexp.losses.adversarial`.
"""
import torch

from aexp.errors import ConfigError

REDUCTIONS = ("sum", "mean")


def per_sample(t: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce all but the batch dimension, in fp32 (under bf16 autocast too: a sum over
    thousands of pixels in bf16 would lose most of its digits)."""
    t = t.float().flatten(1)
    return t.sum(1) if reduction == "sum" else t.mean(1)


def decoder_with(model, labels: torch.Tensor | None = None):
    """`model.decode` as a function of the codes, for terms that decode again (IWAE, RAE-GP)
    and the NLL; a conditional model's (aexp.models.base) decodes with `labels`, repeated when
    the codes come as k groups of len(labels) (importance samples, sample-major)."""
    if not getattr(model, "conditional", False) or labels is None:
        return model.decode
    return lambda z: model.decode(z, labels.repeat(len(z) // len(labels)))


class Term:
    """A loss term: `weight * value`, where value is per sample, shape [B]. A term that needs the
    batch's class labels sets `uses_labels = True` and receives them as `labels=`."""
    uses_labels = False

    def __init__(self, weight: float = 1.0):
        self.weight = float(weight)

    def weight_at(self, epoch: int | None) -> float:
        """The weight in a given epoch (1-based; None = after training). Constant by default."""
        return self.weight

    def part_weight(self, part: str, epoch: int | None) -> float:
        """A term that returns several named parts ({part: per-sample values}) weights each;
        the term's weight by default."""
        return self.weight_at(epoch)

    def __call__(self, out, x, y, model, reduction: str) -> torch.Tensor:
        raise NotImplementedError

    def update(self, out, x, y, model) -> dict:
        """Called once per training batch, after the model's step, with that batch's output
        (computed before the step); returns {name: value} to log as `<term>_<name>`. Nothing
        by default: only terms with trained state of their own override it."""
        return {}

    def state_dict(self) -> dict:
        """The term's trained state, for the checkpoint (none by default)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s contents (nothing to restore by default)."""

    def to(self, device) -> "Term":
        """Move what the term owns to the run's device (nothing by default)."""
        return self


class Loss:
    """Weighted sum of named terms. `terms` maps a name to a `Term` (built from config)."""

    def __init__(self, terms: dict, reduction: str = "sum"):
        if reduction not in REDUCTIONS:
            raise ConfigError(f"loss.reduction must be one of {REDUCTIONS}, got '{reduction}'")
        if not terms:
            raise ConfigError("loss.terms is empty; give at least one term")
        self.terms = dict(terms)
        self.reduction = reduction
        self.epoch = None       # set by the training loop: weights may warm up over epochs
        # terms with a step of their own (Term.update): the loop calls nothing for the others
        self.stepped = {n: t for n, t in self.terms.items() if type(t).update is not Term.update}

    def set_epoch(self, epoch: int | None) -> None:
        self.epoch = epoch

    def __call__(self, out, x, y, model, labels=None) -> dict:
        """Return {'loss': weighted total, name: unweighted batch-mean value of each term}; a term
        of several parts gives one `name_part` value each. `x` is the model input, `y` the
        target, `labels` the class labels (when the data has them)."""
        values, weights = {}, {}
        for name, term in self.terms.items():
            extra = {"labels": labels} if term.uses_labels else {}
            value = term(out, x, y, model, self.reduction, **extra)
            parts = value.items() if isinstance(value, dict) else [(None, value)]
            for part, v in parts:
                key = name if part is None else f"{name}_{part}"
                values[key] = v.mean()
                weights[key] = term.weight_at(self.epoch) if part is None else term.part_weight(part, self.epoch)
        values["loss"] = sum(weights[n] * v for n, v in values.items())
        return values

    def auxiliary_step(self, out, x, y, model) -> dict:
        """Step every term that trains something of its own (a discriminator, a critic) on this
        batch's output, after the model's step; return their logged values as
        {`<term>_<name>`: batch value} (empty for a loss without such terms)."""
        logged = {}
        for name, term in self.stepped.items():
            logged.update({f"{name}_{k}": v for k, v in term.update(out, x, y, model).items()})
        return logged

    def state_dict(self) -> dict:
        """{term name: its trained state} for the terms that have any (the checkpoint's `loss`)."""
        return {n: s for n, s in ((n, t.state_dict()) for n, t in self.terms.items()) if s}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; a term with trained state refuses to be left without it."""
        unknown = set(state) - set(self.terms)
        if unknown:
            raise KeyError(f"loss state for unknown term(s) {sorted(unknown)}")
        for name, term in self.terms.items():
            if term.state_dict():
                if name not in state:
                    raise KeyError(f"no saved state for loss term '{name}'")
                term.load_state_dict(state[name])

    def to(self, device) -> "Loss":
        for term in self.terms.values():
            term.to(device)
        return self
