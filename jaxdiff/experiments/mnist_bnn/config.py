"""The benchmark's configuration: every field is a flag of ``experiments/mnist_bnn.py``."""

from __future__ import annotations

import dataclasses

from jaxdiff.config import ConfigError, option, validate
from jaxdiff.experiments.mnist_bnn.registry import METHODS

# The published protocol's length: 100 epochs, the learning rate halved every 20.
PUBLISHED_EPOCHS = 100
PUBLISHED_HALVING_EPOCHS = 20


@dataclasses.dataclass(frozen=True)
class BnnConfig:
  """What to run; every field has the published protocol's default (its help says what it is)."""

  methods: tuple[str, ...] = option(
    tuple(METHODS), "comma-separated methods", choices=METHODS, noun="method"
  )
  epochs: int = option(PUBLISHED_EPOCHS, "training epochs of the seeds' runs", greater_than=0)
  lr_halving_epochs: int = option(
    PUBLISHED_HALVING_EPOCHS,
    "the learning rate halves every this many epochs (tuning runs: scaled to their length)",
    greater_than=0,
  )
  batch_size: int = option(100, "global batch size, a multiple of the devices", greater_than=0)
  seeds: int = option(3, "seeds per method at its picked learning rate", greater_than=0)
  learning_rates: tuple[float, ...] = option(
    (1e-4, 1e-3, 1e-2, 1e-1), "the one learning-rate grid every method is tuned on",
    flag="lr-grid", greater_than=0,
  )  # fmt: skip
  tuning_epochs: int | None = option(
    None, "epochs of each tuning run (default: --epochs)", greater_than=0
  )
  validation_size: int = option(
    10_000, "the last N training images, held out to pick the learning rate", greater_than=0
  )
  burn_in: float = option(
    0.5, "fraction of a run's epochs before its first snapshot", at_least=0, below=1
  )
  temperature: float = option(1.0, "posterior temperature T; D = T/N", at_least=0)
  prior_variance: float = option(1.0, "variance σ² of the N(0, σ²) prior on every weight",
                                 greater_than=0)  # fmt: skip
  cycles: int = option(4, "cycles of csgld; it snapshots each cycle's sampling phase",
                       greater_than=0)  # fmt: skip
  exploration: float = option(
    0.8, "noiseless fraction of each csgld cycle (the rest samples)", at_least=0, below=1
  )
  seed: int = option(0, "the root of every key")
  notes: tuple[str, ...] = option(
    (), "a line added to report.md's setup (repeatable)", flag="note", repeatable=True
  )

  def __post_init__(self):
    validate(self)
    if not self.methods:
      raise ConfigError("methods", "give at least one method")
    if not self.learning_rates:
      raise ConfigError("learning_rates", "give at least one learning rate")
    if any(METHODS[name].cyclical for name in self.methods):
      for field, epochs in (("epochs", self.epochs), ("tuning_epochs", self.run_tuning_epochs)):
        if epochs % self.cycles:
          raise ConfigError(field, f"csgld needs {epochs} epochs divisible by --cycles")

  @property
  def run_tuning_epochs(self) -> int:
    """The tuning runs' epochs."""
    return self.tuning_epochs or self.epochs

  def halving_epochs(self, epochs: int) -> float:
    """Epochs between halvings in a run of ``epochs``: the seeds' cadence scaled to it."""
    return self.lr_halving_epochs * epochs / self.epochs

  def burn_in_epochs(self, epochs: int) -> int:
    """Epochs before the first snapshot in a run of ``epochs`` (at least one is left)."""
    return min(int(self.burn_in * epochs), epochs - 1)

  def is_published_protocol(self) -> bool:
    """Whether the seeds' runs have the published length and learning-rate cadence.

    The published protocol does not fix how long tuning runs train; the report says it.
    """
    return self.epochs == PUBLISHED_EPOCHS and self.lr_halving_epochs == PUBLISHED_HALVING_EPOCHS
