"""The DDPM as a training-engine task: a model's parameters and the ``L_simple`` loss.

It needs only :class:`jaxdiff.tasks.Task`, nothing of the engine in :mod:`jaxdiff.train`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxdiff.ddpm.images import to_unit_range
from jaxdiff.ddpm.losses import noise_prediction_loss
from jaxdiff.ddpm.schedules import NoiseSchedule
from jaxdiff.tasks import Task


def ddpm_task(model: nn.Module, schedule: NoiseSchedule, image_shape: tuple[int, ...]) -> Task:
  """A :class:`jaxdiff.tasks.Task` that trains ``model`` with Ho et al.'s ``L_simple``.

  The loss is :func:`~jaxdiff.ddpm.losses.noise_prediction_loss` on the batch's images.

  Args:
    model: a Linen module called as ``model.apply({"params": p}, x_t, t) -> eps`` with ``x_t``
      float32 ``(batch,) + image_shape`` and ``t`` int32 ``(batch,)``.
    schedule: the noise schedule.
    image_shape: one image's shape, ``(height, width, channels)``.

  Returns:
    The task: ``init(key)`` is ``model.init(key, zeros, zeros_t)["params"]``, and ``loss`` takes
    ``{"image": uint8 NHWC}`` batches, maps them to ``[-1, 1]``
    (:func:`~jaxdiff.ddpm.images.to_unit_range`) and returns ``(L_simple, {})``.
  """

  def init(key):
    images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    return model.init(key, images, jnp.zeros((1,), jnp.int32))["params"]

  def loss(params, batch, key):
    def denoise_fn(x_t, t):
      return model.apply({"params": params}, x_t, t)

    return noise_prediction_loss(denoise_fn, schedule, to_unit_range(batch["image"]), key), {}

  return Task(init, loss)
