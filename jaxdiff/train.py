"""Training in one namespace: the engine (:mod:`jaxdiff.engine`) and the loop (:mod:`jaxdiff.loop`).

The experiments and users write ``train.Trainer``, ``train.fit``, ``train.Budget``, …; each name
is defined in one of the two modules (``computes_convolution``, once the engine's, in
:mod:`jaxdiff.policy`).

Example:
  >>> from jaxdiff import classification, parallel, train
  >>> from jaxdiff.models import MLP
  >>> task = classification.classifier_task(MLP(hidden=(), num_classes=3), (4, 4, 1))
  >>> trainer = train.Trainer(task, optax.adam, mesh=parallel.make_mesh(), batch_size=8)
  >>> keys = jax.random.split(jax.random.key(0), 2)  # two seeds
  >>> x, y = np.zeros((16, 4, 4, 1), np.uint8), np.arange(16, dtype=np.int32) % 3
  >>> result = train.fit(trainer, trainer.init(keys, learning_rate=1e-3),
  ...                    trainer.put_data({"image": x, "label": y}), train.Budget(epochs=2),
  ...                    reporter=train.Reporter(quiet=True))
  >>> result.state.step.tolist()
  [4, 4]
"""

from jaxdiff.engine import Trainer, TrainState, concatenate_runs, run_slices
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
