"""The comparison's configuration: every field is a flag of ``experiments/cifar.py``."""

from __future__ import annotations

import dataclasses

from jaxdiff.config import ConfigError, option, validate
from jaxdiff.experiments.cifar.registry import ARTICLE_OPTIMIZERS, OPTIMIZERS, is_langevin
from jaxdiff.policy import LOOPS

SWEEP_LR_FACTORS = (0.1, 1.0, 10.0)
SWEEP_DIFFUSIONS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclasses.dataclass(frozen=True)
class ComparisonConfig:
  """What to run; every field has the article's default (its help says what it is)."""

  optimizers: tuple[str, ...] = option(
    ARTICLE_OPTIMIZERS, "comma-separated optimizers", choices=OPTIMIZERS, noun="optimizer"
  )
  epochs: int = option(10, "training epochs", greater_than=0)
  batch_size: int = option(100, "global batch size, a multiple of the devices", greater_than=0)
  learning_rate: float = option(1e-3, "learning rate of every optimizer", flag="lr",
                                greater_than=0)  # fmt: skip
  diffusion: float = option(
    1e-2, "Langevin D; the temperature is T = N·D for N training images", at_least=0
  )
  seeds: int = option(3, "seeds per optimizer", greater_than=0)
  train_size: int | None = option(
    None, "use the first N training images after a fixed shuffle (default: all)", greater_than=0
  )
  sweep: bool = option(False, "train the lr × D sensitivity grid")
  sweep_lrs: tuple[float, ...] | None = option(
    None, "the grid's learning rates (default: ×0.1, ×1, ×10 of --lr)", greater_than=0
  )
  sweep_diffusions: tuple[float, ...] = option(
    SWEEP_DIFFUSIONS, "the grid's diffusions D of the Langevin optimizers", at_least=0
  )
  temperatures: tuple[float, ...] = option(
    (), "train the Langevin optimizers at these posterior temperatures T (D = T/N) instead of "
    "--diffusion, for the cold-posterior curve", greater_than=0,
  )  # fmt: skip
  loop: str = option(
    "auto", "epoch loop: jitted step called from Python, or one lax.scan", choices=LOOPS
  )
  cycles: int = option(
    5, "cycles of the cyclical samplers (csgld, csghmc); they snapshot each cycle's last epoch",
    greater_than=0,
  )  # fmt: skip
  seed: int = option(0, "the root of every key")
  notes: tuple[str, ...] = option(
    (), "a line added to report.md's setup (repeatable)", flag="note", repeatable=True
  )

  def __post_init__(self):
    validate(self)
    if not self.optimizers:
      raise ConfigError("optimizers", "give at least one optimizer")
    if self.sweep and self.temperatures:
      raise ConfigError("temperatures", "sweep the grid or the temperatures, not both")
    cyclical = [name for name in self.optimizers if OPTIMIZERS[name].cyclical]
    if cyclical and self.epochs % self.cycles:
      raise ConfigError(
        "cycles", f"{', '.join(cyclical)} need epochs ({self.epochs}) divisible by the cycles"
      )

  def grid(self, name: str, num_examples: int) -> list[tuple[float, float | None]]:
    """The (learning rate, diffusion) settings to train for optimizer ``name``.

    ``num_examples`` is N, the training images, which turns temperatures into diffusions.
    """
    langevin = is_langevin(name)
    if not langevin:
      diffusions = (None,)
    elif self.temperatures:
      diffusions = tuple(t / num_examples for t in self.temperatures)
    else:
      diffusions = self.sweep_diffusions if self.sweep else (self.diffusion,)
    if not self.sweep:
      return [(self.learning_rate, d) for d in diffusions]
    lrs = self.sweep_lrs or tuple(self.learning_rate * f for f in SWEEP_LR_FACTORS)
    return [(lr, d) for lr in lrs for d in diffusions]

  def main_diffusion(self, num_examples: int) -> float:
    """The Langevin D of the main results: ``diffusion``, or with temperatures T = 1 if it is
    among them, else the first."""
    if not self.temperatures:
      return self.diffusion
    return (1.0 if 1.0 in self.temperatures else self.temperatures[0]) / num_examples
