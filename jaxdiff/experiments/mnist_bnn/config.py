"""The benchmark's configuration: every field is a flag of ``experiments/mnist_bnn.py``.

Two published protocols are presets (``--protocol``, :data:`PRESETS`); every other flag
overrides the chosen preset's value, so one ingredient of a protocol can be changed at a time.

* ``li2016`` (the default): Li et al. 2016's MNIST table (pSGLD's paper): 100 epochs, the
  learning rate halved every 20, each method's rate tuned on held-out images; SGD, SGLD,
  pSGLD, SGHMC and cSGLD.
* ``korattikara2015``: Korattikara et al. 2015's SGLD on the 784-400-400-10 MLP (Bayesian Dark
  Knowledge, Table 3: 1.271 ± 0.013 % over 10 runs). The paper states the update
  ``θ += η/2·(∇log p(θ) + N/M·Σ∇log p(y|x, θ)) + N(0, η)``, the network, 10 runs with their
  standard error, and about 10 000 posterior samples averaged; it does not state the step size,
  schedule, iterations, burn-in, thinning, prior precision or preprocessing. Those are taken
  from the MXNet example of the paper's experiment (apache/mxnet ``example/bayesian-methods``,
  2016): the first 50 000 training images, pixels divided by 126, prior precision 1, a constant
  η = 4e-6 on that scale (in this benchmark's mean-loss units, lr = η·N/2 = 0.1 and D = 1/N),
  batches of 100, 10⁶ iterations, a burn-in of 1 000 and a sample every 100 (10 000 samples).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxdiff.config import ConfigError, option, validate
from jaxdiff.experiments.mnist_bnn.registry import LR_SCHEDULES, METHODS
from jaxdiff.shift import ROTATION_ANGLES

# The default protocol's length: 100 epochs, the learning rate halved every 20.
PUBLISHED_EPOCHS = 100
PUBLISHED_HALVING_EPOCHS = 20
# The temperatures of the cold-posterior curve and the samplers that run it.
COLD_TEMPERATURES = (1.0, 0.3, 0.1, 0.03, 0.01)
COLD_METHODS = ("sgld", "sghmc", "csgld")

PRESETS: dict[str, dict[str, object]] = {
  "li2016": {},  # the fields' own defaults
  "korattikara2015": {
    "methods": ("sgld",),
    "seeds": 10,
    "epochs": 2000,  # 10⁶ steps of 100 over 50 000 images
    "lr_schedule": "constant",
    "learning_rates": (0.1,),
    "burn_in": 0.001,  # 1 000 steps
    "thin_steps": 100,
    "input_scale": 255 / 126,
    "temperatures": (),
    "shift_angles": (),
  },
}


@dataclasses.dataclass(frozen=True)
class BnnConfig:
  """What to run; the defaults are the ``li2016`` protocol's (each help says what it is)."""

  PRESETS: ClassVar[dict[str, dict[str, object]]] = PRESETS

  protocol: str = option("li2016", "the published protocol whose settings are the defaults",
                         choices=tuple(PRESETS), noun="protocol")  # fmt: skip
  methods: tuple[str, ...] = option(
    tuple(METHODS), "comma-separated methods", choices=METHODS, noun="method"
  )
  epochs: int = option(PUBLISHED_EPOCHS, "training epochs of the seeds' runs", greater_than=0)
  lr_schedule: str = option("halving", "the learning rate: halved every --lr-halving-epochs, "
                            "or constant", choices=LR_SCHEDULES, noun="schedule")  # fmt: skip
  lr_halving_epochs: int = option(
    PUBLISHED_HALVING_EPOCHS,
    "the learning rate halves every this many epochs (tuning runs: scaled to their length)",
    greater_than=0,
  )
  batch_size: int = option(100, "global batch size, a multiple of the devices", greater_than=0)
  seeds: int = option(3, "seeds per method at its picked learning rate", greater_than=0)
  first_seed: int = option(
    0, "the seeds trained are this one and the next --seeds − 1 of the root's (a protocol's "
    "seeds split across runs: each run's keys are those of one run of them all)", at_least=0,
  )  # fmt: skip
  learning_rates: tuple[float, ...] = option(
    (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
    "the one learning-rate grid every method is tuned on (one rate: no tuning)",
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
  thin_steps: int | None = option(
    None, "a snapshot every this many steps after the burn-in (default: one per epoch)",
    greater_than=0,
  )  # fmt: skip
  temperature: float = option(1.0, "posterior temperature T; D = T/N", at_least=0)
  temperatures: tuple[float, ...] = option(
    COLD_TEMPERATURES,
    "the cold-posterior curve: the samplers of COLD_METHODS rerun their seeds at each T at "
    "their picked rate (empty: none)", greater_than=0,
  )  # fmt: skip
  prior_variance: float = option(1.0, "variance σ² of the N(0, σ²) prior on every weight",
                                 greater_than=0)  # fmt: skip
  input_scale: float = option(1.0, "the network's input is pixel / 255 times this",
                              greater_than=0)  # fmt: skip
  shift_angles: tuple[float, ...] = option(
    ROTATION_ANGLES, "also score the seeds on the test images rotated by these angles in "
    "degrees, 0 among them (empty: none)", at_least=0,
  )  # fmt: skip
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
    if self.shift_angles and 0 not in self.shift_angles:
      raise ConfigError("shift_angles", "include 0, the test images themselves")
    if any(METHODS[name].cyclical for name in self.methods):
      for field, epochs in (("epochs", self.epochs), ("tuning_epochs", self.run_tuning_epochs)):
        if epochs % self.cycles:
          raise ConfigError(field, f"csgld needs {epochs} epochs divisible by --cycles")
      if self.thin_steps is not None:
        raise ConfigError("thin_steps", "csgld snapshots each cycle's sampling phase by epochs")

  @classmethod
  def preset(cls, protocol: str, **overrides) -> BnnConfig:
    """The configuration of ``protocol``'s preset, with ``overrides`` on top."""
    if protocol not in PRESETS:
      raise ConfigError("protocol", f"unknown protocol {protocol}; choose from "
                        f"{', '.join(PRESETS)}")  # fmt: skip
    return cls(**{**PRESETS[protocol], "protocol": protocol, **overrides})

  @property
  def tuned(self) -> bool:
    """Whether each method's learning rate is picked on held-out images (a grid of two or more)."""
    return len(self.learning_rates) > 1

  @property
  def run_tuning_epochs(self) -> int:
    """The tuning runs' epochs."""
    return self.tuning_epochs or self.epochs

  @property
  def cold_methods(self) -> tuple[str, ...]:
    """The methods that run the cold-posterior curve: the samplers of COLD_METHODS run here."""
    return tuple(name for name in self.methods if name in COLD_METHODS) if self.temperatures else ()

  def halving_epochs(self, epochs: int) -> float:
    """Epochs between halvings in a run of ``epochs``: the seeds' cadence scaled to it."""
    return self.lr_halving_epochs * epochs / self.epochs

  def burn_in_epochs(self, epochs: int) -> int:
    """Epochs before the first snapshot in a run of ``epochs`` (at least one is left)."""
    return min(int(self.burn_in * epochs), epochs - 1)

  def is_published_protocol(self) -> bool:
    """Whether the seeds' runs follow the chosen protocol's length and learning-rate schedule.

    The published protocols do not fix how long tuning runs train; the report says it.
    """
    preset = {**dataclasses.asdict(BnnConfig()), **PRESETS[self.protocol]}
    keys = ("epochs", "lr_schedule", "lr_halving_epochs", "burn_in", "thin_steps", "input_scale")
    return all(getattr(self, key) == preset[key] for key in keys)
