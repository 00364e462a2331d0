"""What the training engine trains: a :class:`Task` is parameters and a loss.

Tasks are plain functions over pytrees, so the modules that define them (the
classifier's in :mod:`jaxdiff.classification`, the DDPM's in :mod:`jaxdiff.ddpm`)
need nothing of the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

Params = Any
Batch = Mapping[str, jax.Array]


class Task(NamedTuple):
  """What the engine trains: parameters and a loss.

  Attributes:
    init: ``init(key) -> params``.
    loss: ``loss(params, batch, key) -> (scalar loss, {name: scalar})``, the
      mean over the batch shard it is given; ``batch`` holds the rows of each
      data array picked for this step, ``key`` is distinct per step and device.
  """

  init: Callable[[jax.Array], Params]
  loss: Callable[[Params, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
