"""The seed article's CIFAR-10 CNN."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models import cpu_ops


class SimpleCNN(nn.Module):
  """The seed article's LeNet-style CIFAR-10 network (62 006 parameters).

  conv 5x5 (3→6), ReLU, max-pool 2; conv 5x5 (6→16), ReLU, max-pool 2; dense
  400→120→84→num_classes. Takes NHWC float images, already normalized.

  Attributes:
    num_classes: size of the output layer.
    convolution: how the convolutions and pools are computed, one of
      ``cpu_ops.FORMULATIONS``: the plain ops (``"lax"``) or the banded-matmul formulations
      of :mod:`jaxdiff.models.cpu_ops` (same function, same parameters);
      ``ExecutionPolicy.for_mesh(mesh, convolution="auto").convolution`` is the one measured
      faster on the mesh's platform.
  """

  num_classes: int = 10
  convolution: str = "lax"

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if self.convolution not in cpu_ops.FORMULATIONS:
      raise ValueError(
        f"convolution must be one of {cpu_ops.FORMULATIONS}, got {self.convolution!r}"
      )
    if self.convolution != "lax":
      whole_rows = self.convolution == "banded_rows"
      conv = functools.partial(cpu_ops.conv_toeplitz, whole_rows=whole_rows)
      # ReLU after the pool touches a quarter of the values. Max and ReLU commute, and both
      # orders send the gradient to the window's first maximum if it is positive, else nowhere.
      relu_pool = lambda x: nn.relu(cpu_ops.max_pool_2x2(x))
    else:
      conv, relu_pool = None, lambda x: nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = images
    for features in (6, 16):
      x = relu_pool(nn.Conv(features, (5, 5), padding="VALID", conv_general_dilated=conv)(x))
    x = x.reshape(x.shape[0], -1)
    for features in (120, 84):
      x = nn.relu(nn.Dense(features)(x))
    return nn.Dense(self.num_classes)(x)


def normalize_images(images: jax.Array, mean: float = 0.5, std: float = 0.5) -> jax.Array:
  """uint8 pixels to floats: ``(x / 255 - mean) / std``; the defaults map to [-1, 1]."""
  return (images.astype(jnp.float32) / 255.0 - mean) / std
