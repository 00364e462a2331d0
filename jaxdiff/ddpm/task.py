"""The DDPM as a training-engine task: a model's parameters and its diffusion loss.

It needs only :class:`jaxdiff.tasks.Task`, nothing of the engine in :mod:`jaxdiff.engine`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxdiff.ddpm.images import to_unit_range
from jaxdiff.ddpm.losses import diffusion_loss
from jaxdiff.ddpm.schedules import NoiseSchedule
from jaxdiff.tasks import Task


def ddpm_task(
  model: nn.Module,
  schedule: NoiseSchedule,
  image_shape: tuple[int, ...],
  prediction: str = "eps",
  weighting: str = "uniform",
  min_snr_gamma: float = 5.0,
) -> Task:
  """A :class:`jaxdiff.tasks.Task` that trains ``model`` to predict ``prediction``.

  The loss is :func:`~jaxdiff.ddpm.losses.diffusion_loss` on the batch's images; by default
  Ho et al.'s ``L_simple``.

  Args:
    model: a Linen module called as ``model.apply({"params": p}, x_t, t)`` with ``x_t``
      float32 ``(batch,) + image_shape`` and ``t`` int32 ``(batch,)``, returning its prediction
      of ``prediction``.
    schedule: the noise schedule.
    image_shape: one image's shape, ``(height, width, channels)``.
    prediction: the target, one of :data:`~jaxdiff.ddpm.losses.PREDICTIONS`; sample from the
      trained model through :func:`~jaxdiff.ddpm.losses.denoiser` with the same value.
    weighting: the loss weighting, one of :data:`~jaxdiff.ddpm.losses.LOSS_WEIGHTINGS`.
    min_snr_gamma: ``γ`` of the ``"min_snr"`` weighting.

  Returns:
    The task: ``init(key)`` is ``model.init(key, zeros, zeros_t)["params"]``, and ``loss`` takes
    ``{"image": uint8 NHWC}`` batches, maps them to ``[-1, 1]``
    (:func:`~jaxdiff.ddpm.images.to_unit_range`) and returns ``(loss, {})``.
  """

  def init(key):
    images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    return model.init(key, images, jnp.zeros((1,), jnp.int32))["params"]

  def loss(params, batch, key):
    def model_fn(x_t, t):
      return model.apply({"params": params}, x_t, t)

    x0 = to_unit_range(batch["image"])
    return diffusion_loss(model_fn, schedule, x0, key, prediction, weighting, min_snr_gamma), {}

  return Task(init, loss)
