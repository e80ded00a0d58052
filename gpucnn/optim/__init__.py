"""Optimizers (SGD, Adam), the plateau and one-cycle schedulers; state is keyed by parameter."""

from gpucnn.optim.adam import Adam
from gpucnn.optim.improvement import Improvement
from gpucnn.optim.onecycle import OneCycleLR
from gpucnn.optim.optimizer import Optimizer
from gpucnn.optim.scheduler import ReduceLROnPlateau
from gpucnn.optim.sgd import SGD

__all__ = ["SGD", "Adam", "Improvement", "OneCycleLR", "Optimizer", "ReduceLROnPlateau"]
