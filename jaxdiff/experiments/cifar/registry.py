"""The comparison's optimizers: the one place that says which is Langevin and its baseline."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import optax

from jaxdiff import langevin


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One optimizer of the comparison.

  Attributes:
    factory: the optax factory; its ``learning_rate`` (and for Langevin optimizers
      ``diffusion`` and ``key``) are given per run.
    langevin: whether it adds Langevin noise (and so takes a diffusion ``D``).
    baseline: the noiseless optimizer it is the noisy twin of, if one is in the registry.
  """

  factory: Callable[..., optax.GradientTransformation]
  langevin: bool = False
  baseline: str | None = None


OPTIMIZERS: dict[str, OptimizerSpec] = {
  "sgd": OptimizerSpec(optax.sgd),
  "momentum": OptimizerSpec(functools.partial(optax.sgd, momentum=0.9)),
  "adam": OptimizerSpec(optax.adam),
  "langevin": OptimizerSpec(langevin.langevin_sgd, langevin=True, baseline="sgd"),
  "langevin_adam": OptimizerSpec(langevin.langevin_adam, langevin=True, baseline="adam"),
  "psgld": OptimizerSpec(langevin.psgld, langevin=True),
}


def is_langevin(name: str) -> bool:
  """Whether the optimizer ``name`` adds Langevin noise (False for a name not registered)."""
  spec = OPTIMIZERS.get(name)
  return spec is not None and spec.langevin
