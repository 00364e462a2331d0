"""What the training engine trains: a :class:`Task` is parameters and a loss.

Tasks are plain functions over pytrees, so the modules that define them (the
classifier's in :mod:`jaxdiff.classification`, the DDPM's in :mod:`jaxdiff.ddpm`)
need nothing of the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

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


def with_gaussian_prior(task: Task, num_examples: int, prior_variance: float = 1.0) -> Task:
  """``task`` with an isotropic Gaussian prior ``N(0, σ²·I)`` on every parameter.

  The loss becomes ``L(θ) + ½‖θ‖² / (σ²·N)``: the negative log posterior divided by the
  ``N`` training examples. It stays a mean over the data, so a Langevin sampler at
  ``D = T/N`` targets the posterior at temperature ``T``, and a noiseless optimizer finds the
  MAP estimate (weight decay ``1/(σ²·N)``). Each device's shard adds the same penalty, so the
  data-parallel mean of the losses has it once.

  Args:
    task: the likelihood's task; its loss is the mean negative log-likelihood over the batch.
    num_examples: ``N``, the training examples the loss is a mean over.
    prior_variance: ``σ²``.

  Returns:
    The task with the same ``init``; its loss's metrics add ``"data_loss"``, the loss
    without the prior term.

  Raises:
    ValueError: ``num_examples`` is not a positive integer, or ``prior_variance`` is not
      positive.

  Example:
    >>> from jaxdiff.classification import classifier_task
    >>> from jaxdiff.models import MLP
    >>> likelihood = classifier_task(MLP(hidden=(), num_classes=2), (4, 4, 1))
    >>> task = with_gaussian_prior(likelihood, num_examples=16)
    >>> params = jax.jit(task.init)(jax.random.key(0))
    >>> batch = {"image": np.zeros((2, 4, 4, 1), np.uint8), "label": np.array([0, 1])}
    >>> loss, metrics = jax.jit(task.loss)(params, batch, jax.random.key(1))
    >>> sorted(metrics), bool(loss > metrics["data_loss"])  # the prior's term is added
    (['accuracy', 'data_loss'], True)
  """
  if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
    raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
  if not prior_variance > 0:
    raise ValueError(f"prior_variance must be positive, got {prior_variance!r}")
  scale = 0.5 / (prior_variance * num_examples)

  def loss(params, batch, key):
    data_loss, metrics = task.loss(params, batch, key)
    squared_norm = sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(params))
    return data_loss + scale * squared_norm, {**metrics, "data_loss": data_loss}

  return Task(task.init, loss)
