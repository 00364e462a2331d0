"""Training in one namespace: the engine (:mod:`jaxdiff.engine`) and the loop (:mod:`jaxdiff.loop`).

The experiments and users write ``train.Trainer``, ``train.fit``, ``train.Budget``, …; each name
is defined in one of the two modules (``computes_convolution``, once the engine's, in
:mod:`jaxdiff.policy`).

Example:
  >>> from jaxdiff import train
  >>> trainer = train.Trainer(task, optax.adam, mesh=mesh, batch_size=100)
  >>> result = train.fit(trainer, trainer.init(keys, learning_rate=1e-3), data,
  ...                    train.Budget(epochs=10))
"""

from jaxdiff.engine import TrainState, Trainer, concatenate_runs, run_slices
from jaxdiff.loop import (
  Budget,
  Call,
  Checkpointing,
  EpochEnd,
  FitResult,
  Hook,
  HookCarry,
  PhaseClock,
  Reporter,
  chain_hooks,
  fit,
)
from jaxdiff.policy import computes_convolution

__all__ = [
  "Budget",
  "Call",
  "Checkpointing",
  "EpochEnd",
  "FitResult",
  "Hook",
  "HookCarry",
  "PhaseClock",
  "Reporter",
  "TrainState",
  "Trainer",
  "chain_hooks",
  "computes_convolution",
  "concatenate_runs",
  "fit",
  "run_slices",
]
