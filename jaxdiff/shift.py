"""Predictive uncertainty under dataset shift: rotated test images, scored angle by angle.

Ovadia et al.'s protocol for MNIST: the test images rotated by 0°, 15°, …, 180°, and a model's
accuracy, NLL, expected calibration error and Brier score at each angle. A model whose
probabilities are honest grows less confident as the images leave the training distribution;
one that is overconfident keeps its confidence while its accuracy falls. The rotations are
computed here (bilinear interpolation about the image centre, zeros outside), so no other data
set is needed; :func:`stack_rotations` puts every angle's copy in one array, so that a
posterior average (:func:`jaxdiff.posterior.averaging_hook`) collects all of them at once, and
:func:`scores_by_angle` splits the predictions back.

Example:
  >>> images, labels = np.zeros((2, 3, 3, 1), np.uint8), np.array([0, 1])
  >>> images[:, 0, 2] = 255  # a white top-right pixel
  >>> stacked, stacked_labels = stack_rotations(images, labels, angles=(0, 90))
  >>> stacked[2, :, :, 0]  # the first image turned by 90°, counter-clockwise
  array([[255,   0,   0],
         [  0,   0,   0],
         [  0,   0,   0]], dtype=uint8)
  >>> # A model's probabilities for the stack, e.g. make_predictor(...)(params, stacked)[0]:
  >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4]])
  >>> [(row["angle"], row["accuracy"]) for row in scores_by_angle(probs, stacked_labels, (0, 90))]
  [(0, 1.0), (90, 0.5)]

References:
  Ovadia et al., `Can You Trust Your Model's Uncertainty? Evaluating Predictive Uncertainty
  Under Dataset Shift <https://arxiv.org/abs/1906.02530>`_, NeurIPS 2019.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

from jaxdiff import metrics

ROTATION_ANGLES = tuple(range(0, 181, 15))
"""Ovadia et al.'s rotations of MNIST, in degrees."""


def rotate_images(images: np.ndarray, degrees: float) -> np.ndarray:
  """Each NHWC image rotated counter-clockwise (as displayed) by ``degrees`` about its centre.

  Bilinear interpolation; pixels whose source lies outside the image are 0. A multiple of 90°
  on a square image moves pixels exactly (``np.rot90``), so its pixels are unchanged.

  Args:
    images: ``(n, height, width, channels)``, uint8 or float.
    degrees: the angle.

  Returns:
    The rotated images, in the input's dtype (uint8 rounded to the nearest value).
  """
  images = np.asarray(images)
  rotated = np.asarray(_rotate(jnp.asarray(images, jnp.float32), float(degrees)))
  if np.issubdtype(images.dtype, np.integer):
    info = np.iinfo(images.dtype)
    rotated = np.clip(np.rint(rotated), info.min, info.max)
  return rotated.astype(images.dtype)


@functools.partial(jax.jit, static_argnums=1)
def _rotate(images: jax.Array, degrees: float) -> jax.Array:
  _, height, width, _ = images.shape
  angle = math.radians(degrees)
  rows, columns = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  centre_row, centre_column = (height - 1) / 2, (width - 1) / 2
  # A counter-clockwise turn on screen takes (dy, dx) from the centre to
  # (cos·dy − sin·dx, sin·dy + cos·dx), rows growing downwards; each output pixel takes the
  # input at its position turned back.
  dy, dx = rows - centre_row, columns - centre_column
  source_rows = centre_row + math.cos(angle) * dy + math.sin(angle) * dx
  source_columns = centre_column - math.sin(angle) * dy + math.cos(angle) * dx

  def one_channel(channel):
    return ndimage.map_coordinates(channel, [source_rows, source_columns], order=1, cval=0.0)

  per_image = jax.vmap(one_channel, in_axes=2, out_axes=2)  # (h, w, c) → (h, w, c)
  return jax.vmap(per_image)(images)


def stack_rotations(
  images: np.ndarray, labels: np.ndarray, angles: Sequence[float] = ROTATION_ANGLES
) -> tuple[np.ndarray, np.ndarray]:
  """Every image at every angle, angle by angle: ``(len(angles) · n, ...)`` and their labels."""
  rotated = np.concatenate([rotate_images(images, angle) for angle in angles])
  return rotated, np.tile(np.asarray(labels), len(angles))


def scores_by_angle(
  probs: np.ndarray, labels: np.ndarray, angles: Sequence[float] = ROTATION_ANGLES
) -> list[dict[str, float]]:
  """:func:`jaxdiff.metrics.classification_scores` of each angle's slice of :func:`stack_rotations`.

  Args:
    probs: ``(len(angles) · n, classes)`` predictive probabilities, in :func:`stack_rotations`'
      order.
    labels: the stacked labels.
    angles: the angles the stack was made with.

  Returns:
    A dict per angle, with ``angle`` and the scores (accuracy, error, nll, ece, brier).

  Raises:
    ValueError: the predictions do not split into ``len(angles)`` equal parts.
  """
  probs, labels = np.asarray(probs), np.asarray(labels)
  if len(probs) != len(labels) or len(probs) % len(angles):
    raise ValueError(
      f"{len(probs)} predictions and {len(labels)} labels do not split into {len(angles)} angles"
    )
  size = len(probs) // len(angles)
  return [
    {"angle": angle, **metrics.classification_scores(probs[i * size : (i + 1) * size],
                                                      labels[i * size : (i + 1) * size])}
    for i, angle in enumerate(angles)
  ]  # fmt: skip
