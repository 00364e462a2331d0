"""The DDPM as a training-engine task: a model's parameters and its diffusion loss.

It needs only :class:`jaxdiff.tasks.Task`, nothing of the engine in :mod:`jaxdiff.engine`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
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
  num_classes: int | None = None,
  label_dropout: float = 0.1,
) -> Task:
  """A :class:`jaxdiff.tasks.Task` that trains ``model`` to predict ``prediction``.

  The loss is :func:`~jaxdiff.ddpm.losses.diffusion_loss` on the batch's images; by default
  Ho et al.'s ``L_simple``. It is the training loss, so the model runs with dropout on (Ho et
  al. train their CIFAR-10 U-Net at rate 0.1); sampling and the bound apply it deterministically,
  ``model.apply({"params": p}, x_t, t)``.

  Args:
    model: a Linen module called as
      ``model.apply({"params": p}, x_t, t, deterministic=False, rngs={"dropout": key})`` with
      ``x_t`` float32 ``(batch,) + image_shape`` and ``t`` int32 ``(batch,)``, returning its
      prediction of ``prediction``, as :class:`~jaxdiff.models.unet.UNet` is; a model without
      dropout takes the ``deterministic`` keyword and ignores it.
    schedule: the noise schedule.
    image_shape: one image's shape, ``(height, width, channels)``.
    prediction: the target, one of :data:`~jaxdiff.ddpm.losses.PREDICTIONS`; sample from the
      trained model through :func:`~jaxdiff.ddpm.losses.denoiser` with the same value.
    weighting: the loss weighting, one of :data:`~jaxdiff.ddpm.losses.LOSS_WEIGHTINGS`.
    min_snr_gamma: ``γ`` of the ``"min_snr"`` weighting.
    num_classes: train a class-conditional model for classifier-free guidance (Ho & Salimans
      2022): the model also takes ``labels`` (``model.apply(..., x_t, t, labels, ...)``, as a
      :class:`~jaxdiff.models.unet.UNet` built with the same ``num_classes`` does), the batch's
      ``"label"``, each replaced by the null label ``num_classes`` with probability
      ``label_dropout`` so that one network learns ``ε(x, t, y)`` and ``ε(x, t, ∅)``. None
      (the default): unconditional, and no label is read.
    label_dropout: that probability, in ``[0, 1]``.

  Returns:
    The task, whose ``init(key)`` is ``model.init(key, zeros, zeros_t)["params"]``, and ``loss`` takes
    ``{"image": uint8 NHWC}`` batches, maps them to ``[-1, 1]``
    (:func:`~jaxdiff.ddpm.images.to_unit_range`) and returns ``(loss, {})``. Its ``key``
    draws the timesteps and noise as in :func:`~jaxdiff.ddpm.losses.diffusion_loss` and, apart
    from them, the dropout masks and the dropped labels.

  Raises:
    ValueError: ``label_dropout`` outside ``[0, 1]``, or ``num_classes`` not positive.

  Example:
    >>> from jaxdiff.ddpm import make_schedule
    >>> from jaxdiff.models import make_unet
    >>> model = make_unet("tiny", channel_multipliers=(1,))  # "tiny" at one resolution
    >>> task = ddpm_task(model, make_schedule("linear", 10), image_shape=(8, 8, 1))
    >>> params = task.init(jax.random.key(0))
    >>> batch = {"image": np.zeros((4, 8, 8, 1), np.uint8)}
    >>> loss, metrics = jax.jit(task.loss)(params, batch, jax.random.key(1))
    >>> abs(float(loss) - 1) < 0.3, metrics  # a fresh U-Net predicts ε̂ = 0: L = mean ε² ≈ 1
    (True, {})
  """

  if num_classes is not None and not num_classes > 0:
    raise ValueError(f"num_classes must be positive, got {num_classes!r}")
  if not 0.0 <= label_dropout <= 1.0:
    raise ValueError(f"label_dropout must lie in [0, 1], got {label_dropout!r}")
  conditional = () if num_classes is None else (jnp.zeros((1,), jnp.int32),)

  def init(key):
    images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    return model.init(key, images, jnp.zeros((1,), jnp.int32), *conditional)["params"]

  def loss(params, batch, key):
    # diffusion_loss draws t and the noise from split(key); the dropout and label keys, the
    # third of split(key, 3) and the fourth of split(key, 4), are independent of both, so the
    # draws, and an unconditional, dropout-free model's training, stay those of the plain loss.
    dropout_key = jax.random.split(key, 3)[2]
    labels = ()
    if num_classes is not None:
      dropped = jax.random.bernoulli(jax.random.split(key, 4)[3], label_dropout,
                                     batch["label"].shape)  # fmt: skip
      labels = (jnp.where(dropped, num_classes, batch["label"]).astype(jnp.int32),)

    def model_fn(x_t, t):
      return model.apply(
        {"params": params}, x_t, t, *labels, deterministic=False, rngs={"dropout": dropout_key}
      )

    x0 = to_unit_range(batch["image"])
    return diffusion_loss(model_fn, schedule, x0, key, prediction, weighting, min_snr_gamma), {}

  return Task(init, loss)
