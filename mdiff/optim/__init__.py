"""AdamW, CompleteP-style width/depth multipliers and the SDE batch reparameterisation."""

from mdiff.optim.adamw import make_optimizer
from mdiff.optim.sde import OptimPlan, kappa, plan, scaled_hyperparameters

__all__ = ["OptimPlan", "kappa", "make_optimizer", "plan", "scaled_hyperparameters"]
