"""jaxdiff: Langevin-noise optimization and DDPM in JAX/Flax."""

from jaxdiff.data import DataError, Dataset, load_dataset

__all__ = ["DataError", "Dataset", "load_dataset"]
