"""The benchmark's methods and the learning rate each one trains with."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import optax

from jaxdiff import langevin

# How a non-cyclical method's learning rate moves over a run.
LR_SCHEDULES = ("halving", "constant")


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """One run's length and the steps its learning rate (and, if cyclical, noise) follow.

  Attributes:
    total_steps: the run's steps.
    lr_schedule: one of :data:`LR_SCHEDULES` (non-cyclical methods).
    halving_steps: steps between halvings of the learning rate, for ``"halving"``.
    cycles: cycles of the cyclical methods.
    exploration: the noiseless fraction of each cycle (cyclical methods).
    burn_in_steps: steps before the first snapshot.
  """

  total_steps: int
  lr_schedule: str
  halving_steps: int
  cycles: int
  exploration: float
  burn_in_steps: int

  def learning_rate(self, initial: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
    """``initial`` halved every ``halving_steps`` steps, or ``initial`` throughout."""
    if self.lr_schedule == "constant":
      return initial
    return optax.exponential_decay(initial, self.halving_steps, 0.5, staircase=True)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One method of the benchmark.

  Attributes:
    optimizer: the optax factory: ``(learning_rate)`` for a noiseless one, else
      ``(learning_rate, diffusion, key)``.
    langevin: whether it adds Langevin noise (and so takes a diffusion ``D`` and a key).
    cyclical: whether it follows Zhang et al.'s cyclical learning rate and diffusion instead
      of the plan's learning rate.
    preconditioned: whether it adapts a preconditioner (its ``adapt_steps``) during the
      burn-in and freezes it for the snapshots, as :func:`jaxdiff.psgld` advises.
  """

  optimizer: Callable[..., optax.GradientTransformation]
  langevin: bool = True
  cyclical: bool = False
  preconditioned: bool = False

  def factory(self, plan: RunPlan) -> Callable[..., optax.GradientTransformation]:
    """The factory the engine is given: the run's base learning rate becomes its schedule."""
    if self.cyclical:
      return langevin.cyclical(self.optimizer, plan.total_steps, plan.cycles, plan.exploration)
    if self.langevin:

      def sampler_factory(learning_rate, diffusion, key):
        # The preconditioner adapts while the chain burns in, then stays fixed for sampling.
        adapt = {"adapt_steps": max(1, plan.burn_in_steps)} if self.preconditioned else {}
        return self.optimizer(plan.learning_rate(learning_rate), diffusion, key, **adapt)

      return sampler_factory

    def optimizer_factory(learning_rate):
      return self.optimizer(plan.learning_rate(learning_rate))

    return optimizer_factory


# SGHMC's β (friction 1 − β): the library's default.
SGHMC_MOMENTUM = 0.9

METHODS: dict[str, MethodSpec] = {
  "sgd": MethodSpec(optax.sgd, langevin=False),
  "sgld": MethodSpec(langevin.langevin_sgd),
  "psgld": MethodSpec(langevin.psgld, preconditioned=True),
  "sghmc": MethodSpec(functools.partial(langevin.sghmc, momentum=SGHMC_MOMENTUM)),
  "csgld": MethodSpec(langevin.langevin_sgd, cyclical=True),
}
