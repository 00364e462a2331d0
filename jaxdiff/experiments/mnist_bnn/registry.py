"""The benchmark's methods and the learning-rate schedule each one trains with."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import optax

from jaxdiff import langevin


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How the learning rate (and, for cyclical methods, the diffusion) moves over one run.

  Attributes:
    total_steps: the run's steps.
    halving_steps: steps between halvings of the learning rate (non-cyclical methods).
    cycles: cycles of the cyclical methods.
    exploration: the noiseless fraction of each cycle (cyclical methods).
    burn_in_steps: steps before the first snapshot.
  """

  total_steps: int
  halving_steps: int
  cycles: int
  exploration: float
  burn_in_steps: int

  def step_decay(self, learning_rate: optax.ScalarOrSchedule) -> optax.Schedule:
    """``learning_rate`` halved every ``halving_steps`` steps."""
    return optax.exponential_decay(learning_rate, self.halving_steps, 0.5, staircase=True)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One method of the benchmark.

  Attributes:
    optimizer: the optax factory: ``(learning_rate)`` for a noiseless one, else
      ``(learning_rate, diffusion, key)``.
    langevin: whether it adds Langevin noise (and so takes a diffusion ``D`` and a key).
    cyclical: whether it follows Zhang et al.'s cyclical learning rate and diffusion instead
      of the halving learning rate.
    preconditioned: whether it adapts a preconditioner (its ``adapt_steps``) during the
      burn-in and freezes it for the snapshots, as :func:`jaxdiff.psgld` advises.
  """

  optimizer: Callable[..., optax.GradientTransformation]
  langevin: bool = True
  cyclical: bool = False
  preconditioned: bool = False

  def factory(self, schedule: Schedule) -> Callable[..., optax.GradientTransformation]:
    """The factory the engine is given: the run's base learning rate becomes its schedule."""
    if self.cyclical:

      def cyclical_factory(learning_rate, diffusion, key):
        steps, cycles = schedule.total_steps, schedule.cycles
        return self.optimizer(
          langevin.cyclical_learning_rate(learning_rate, steps, cycles),
          langevin.cyclical_diffusion(diffusion, steps, cycles, schedule.exploration),
          key,
        )

      return cyclical_factory
    if self.langevin:

      def sampler_factory(learning_rate, diffusion, key):
        # Frozen before the loss settles, a preconditioner can be too large for what follows
        # (psgld's default freeze was, on this benchmark: RESULTS.md, "SG-MCMC: pSGLD's freeze
        # on the MNIST MLP"), so it adapts through the burn-in.
        adapt = {"adapt_steps": max(1, schedule.burn_in_steps)} if self.preconditioned else {}
        return self.optimizer(schedule.step_decay(learning_rate), diffusion, key, **adapt)

      return sampler_factory

    def optimizer_factory(learning_rate):
      return self.optimizer(schedule.step_decay(learning_rate))

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
