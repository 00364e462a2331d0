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
    cyclical: the learning rate and diffusion follow Zhang et al.'s cyclical schedules over
      the run (:meth:`for_budget`).
  """

  factory: Callable[..., optax.GradientTransformation]
  langevin: bool = False
  baseline: str | None = None
  cyclical: bool = False

  def for_budget(
    self, total_steps: int, num_cycles: int
  ) -> Callable[..., optax.GradientTransformation]:
    """The factory the engine is given for a run of ``total_steps`` in ``num_cycles`` cycles:
    a cyclical one wrapped in :func:`jaxdiff.langevin.cyclical` (noiseless for the first 80 %
    of each cycle, its default), any other as it is."""
    if not self.cyclical:
      return self.factory
    return langevin.cyclical(self.factory, total_steps, num_cycles)


OPTIMIZERS: dict[str, OptimizerSpec] = {
  "sgd": OptimizerSpec(optax.sgd),
  "momentum": OptimizerSpec(functools.partial(optax.sgd, momentum=0.9)),
  "adam": OptimizerSpec(optax.adam),
  "langevin": OptimizerSpec(langevin.langevin_sgd, langevin=True, baseline="sgd"),
  "langevin_adam": OptimizerSpec(langevin.langevin_adam, langevin=True, baseline="adam"),
  "psgld": OptimizerSpec(langevin.psgld, langevin=True),
  "sghmc": OptimizerSpec(langevin.sghmc, langevin=True, baseline="momentum"),
  "csgld": OptimizerSpec(langevin.langevin_sgd, langevin=True, cyclical=True),
  "csghmc": OptimizerSpec(langevin.sghmc, langevin=True, cyclical=True),
}
# The seed article's six, the default of --optimizers.
ARTICLE_OPTIMIZERS = ("sgd", "momentum", "adam", "langevin", "langevin_adam", "psgld")


def is_langevin(name: str) -> bool:
  """Whether the optimizer ``name`` adds Langevin noise (False for a name not registered)."""
  spec = OPTIMIZERS.get(name)
  return spec is not None and spec.langevin
