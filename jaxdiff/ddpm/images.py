"""The data range: uint8 pixels to the ``[-1, 1]`` floats the model sees, and back.

Pixel ``k`` maps to ``x = k / 127.5 − 1`` (see :mod:`jaxdiff.ddpm`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_unit_range(images: jax.Array) -> jax.Array:
  """uint8 pixels to float32 in ``[-1, 1]``: ``pixel / 127.5 − 1``."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x: jax.Array) -> jax.Array:
  """Inverse of :func:`to_unit_range` for samples: rounds and clips to uint8 pixels."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
