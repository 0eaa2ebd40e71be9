"""Learning-rate schedules that need the run's length. Epoch schedules (StepLR, plateau...) are
torch classes named directly in `conf/schedule/`; the ones here are stepped after every batch
(they derive from `PerBatch`) and receive `total_steps` (the run's optimiser steps) when built
(`aexp.assemble.build_schedule`), because that number depends on the dataset size, batch size,
epochs or `train.max_steps`."""
from torch.optim import lr_scheduler


class PerBatch:
    """Marks a schedule stepped after every batch (torch's own are stepped once per epoch)."""


class Cosine(PerBatch, lr_scheduler.CosineAnnealingLR):
    """Cosine decay from the optimiser's lr to `eta_min` over the whole run, per batch."""

    def __init__(self, optimizer, total_steps: int, eta_min: float = 0.0):
        super().__init__(optimizer, T_max=max(1, total_steps), eta_min=eta_min)


class OneCycle(PerBatch, lr_scheduler.OneCycleLR):
    """One-cycle policy (Smith 2018): warm up to `max_lr` over `pct_start` of the run, then anneal
    (cosine) to max_lr / (div_factor * final_div_factor); momentum cycles inversely. Per batch."""

    def __init__(self, optimizer, total_steps: int, max_lr: float = 1e-2, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4):
        super().__init__(optimizer, max_lr=max_lr, total_steps=max(2, total_steps),
                         pct_start=pct_start, div_factor=div_factor,
                         final_div_factor=final_div_factor)


def per_batch(scheduler) -> bool:
    return isinstance(scheduler, PerBatch)
