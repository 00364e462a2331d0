"""Classifier-free guidance (Ho & Salimans 2022): one network, conditional and unconditional.

A class-conditional network trained with its label dropped to a null label some of the time
(:func:`~jaxdiff.ddpm.task.ddpm_task` with ``num_classes``) predicts both ``ε(x, t, y)`` and
``ε(x, t, ∅)``. Sampling with

.. math::

  \\hat ε(x, t) = (1 + w)\\,ε(x, t, y) − w\\,ε(x, t, ∅)

follows the score of ``p(x | y)·p(y | x)^w`` (the implicit classifier ``p(y | x)`` sharpened by
``w``): ``w = 0`` is the conditional model, larger ``w`` trades diversity for samples that look
more like their class. :func:`guided_denoiser` returns that ``ε̂`` as a ``denoise_fn``, so every
sampler of :mod:`jaxdiff.ddpm.sampling` (and the predictor–corrector's corrector, whose score is
``−ε̂ / √(1 − ᾱ_t)``) samples with guidance unchanged.

References:
  Ho & Salimans, `Classifier-Free Diffusion Guidance <https://arxiv.org/abs/2207.12598>`_,
  NeurIPS 2021 Workshop on Deep Generative Models.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxdiff.ddpm.losses import DenoiseFn, eps_from_prediction
from jaxdiff.ddpm.schedules import NoiseSchedule

ConditionalModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
"""``model_fn(x_t, t, labels)``: a class-conditional network's output for its target."""


def guided_denoiser(
  model_fn: ConditionalModelFn,
  schedule: NoiseSchedule,
  labels: jax.Array,
  null_label: int,
  guidance: float,
  prediction: str = "eps",
) -> DenoiseFn:
  """The ``denoise_fn(x_t, t) -> ε̂`` of classifier-free guidance towards ``labels``.

  ``ε̂ = (1 + w)·ε(x, t, y) − w·ε(x, t, ∅)``, each ``ε`` converted from the network's output for
  ``prediction`` (:func:`~jaxdiff.ddpm.losses.eps_from_prediction`) before they are combined.
  Both predictions come from one call of ``model_fn`` on the batch and its copy; with
  ``guidance = 0`` only the conditional one is computed.

  Args:
    model_fn: ``model_fn(x_t, t, labels)``, e.g.
      ``lambda x, t, y: unet.apply({"params": p}, x, t, y)``.
    schedule: the noise schedule the model was trained with.
    labels: int ``(batch,)``, the class each sample is drawn from; the samplers' batch.
    null_label: the label the model was trained to read as "no label"
      (:attr:`jaxdiff.models.unet.UNet.null_label`).
    guidance: ``w ≥ 0``, a number known before tracing.
    prediction: the network's target, as trained.

  Returns:
    A ``denoise_fn`` for the samplers.

  Raises:
    ValueError: a negative ``guidance``.

  Example:
    >>> from jaxdiff.ddpm import make_schedule, sample_dpm_solver
    >>> schedule = make_schedule("linear", 10)
    >>> model_fn = lambda x, t, y: jnp.zeros_like(x) + y[:, None]  # a toy ε(x, t, y): the label
    >>> labels = jnp.array([1, 2])  # the class of each sample
    >>> denoise_fn = guided_denoiser(model_fn, schedule, labels, null_label=10, guidance=0.5)
    >>> denoise_fn(jnp.zeros((2, 1)), jnp.array([9, 9]))  # 1.5·ε(x, t, y) − 0.5·ε(x, t, ∅)
    Array([[-3.5],
           [-2. ]], dtype=float32)
    >>> sample_dpm_solver(denoise_fn, schedule, jax.random.key(0), (2, 1), num_steps=5).shape
    (2, 1)
  """
  if not guidance >= 0:
    raise ValueError(f"guidance must be >= 0, got {guidance!r}")
  labels = jnp.asarray(labels, jnp.int32)

  def conditional(x_t, t):
    return eps_from_prediction(schedule, x_t, t, model_fn(x_t, t, labels), prediction)

  if guidance == 0:
    return conditional

  def denoise_fn(x_t, t):
    both_x, both_t = jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t])
    both_labels = jnp.concatenate([labels, jnp.full_like(labels, null_label)])
    eps = eps_from_prediction(schedule, both_x, both_t, model_fn(both_x, both_t, both_labels),
                              prediction)  # fmt: skip
    with_label, without = jnp.split(eps, 2)
    return (1.0 + guidance) * with_label - guidance * without

  return denoise_fn
