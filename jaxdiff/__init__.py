"""jaxdiff: Langevin-noise optimization and DDPM in JAX/Flax."""

from jaxdiff.data import DataError, Dataset, load_dataset
from jaxdiff.langevin import (
  LangevinNoiseState,
  PSGLDState,
  add_langevin_noise,
  langevin_adam,
  langevin_sgd,
  psgld,
  sghmc,
)

__all__ = [
  "DataError",
  "Dataset",
  "LangevinNoiseState",
  "PSGLDState",
  "add_langevin_noise",
  "langevin_adam",
  "langevin_sgd",
  "load_dataset",
  "psgld",
  "sghmc",
]
