"""Convolution and max-pooling formulated for XLA:CPU; the same functions as the plain ops.

XLA:CPU runs a convolution with few output features far below its speed with 16: its kernels
vectorize along the output-feature axis, 16 float32 lanes wide with AVX-512, so the seed
CNN's 6 features leave most lanes idle. ``lax.reduce_window`` max-pooling and its gradient
(``select_and_scatter``) are generic windowed loops, while a 2x2 pool is a reshape and a max.
Measured on a 2-core AMD EPYC with ``benchmarks/cpu_op_probes.py`` (jax 0.10.2; figures in
``benchmarks/RESULTS.md``): the seed CNN's conv1 at batch 100, forward 4.2 → 2.2 ms and kernel
gradient 6.3 → 2.9 ms with its 6 features padded to 16; its whole loss gradient 18.3 → 8.9 ms
with both formulations.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

FEATURE_MULTIPLE = 16
"""Output features are padded to a multiple of this: one AVX-512 register of float32."""


def enabled(choice: bool | None) -> bool:
  """``choice``, or where it is ``None``, whether JAX's default backend is the CPU."""
  return jax.default_backend() == "cpu" if choice is None else choice


def conv_padded_features(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Sequence[int],
  padding,
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  precision=None,
  **kwargs,
) -> jax.Array:
  """``lax.conv_general_dilated`` with the kernel's output features zero-padded.

  Takes the arguments of ``lax.conv_general_dilated`` (so it can be passed as
  ``flax.linen.Conv(conv_general_dilated=...)``) and returns the same array: the
  convolution runs with the output features padded to a multiple of
  :data:`FEATURE_MULTIPLE` and the padding is sliced off. The extra features only
  ever see zero weights and zero gradients. Grouped convolutions, whose groups padding
  would change, and feature counts already at a multiple run unchanged.

  Returns:
    The convolution, shaped as ``lax.conv_general_dilated`` would return it.
  """
  conv = lambda kernel: lax.conv_general_dilated(
    lhs,
    kernel,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    precision=precision,
    **kwargs,
  )
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  kernel_out_axis, output_feature_axis = numbers.rhs_spec[0], numbers.out_spec[1]
  features = rhs.shape[kernel_out_axis]
  missing = -features % FEATURE_MULTIPLE
  if feature_group_count != 1 or kwargs.get("batch_group_count", 1) != 1 or missing == 0:
    return conv(rhs)
  widths = [(0, 0)] * rhs.ndim
  widths[kernel_out_axis] = (0, missing)
  out = conv(jnp.pad(rhs, widths))
  return lax.slice_in_dim(out, 0, features, axis=output_feature_axis)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 over NHWC, as ``flax.linen.max_pool(x, (2, 2), (2, 2))``.

  A trailing odd row or column is dropped, as with ``"VALID"`` padding. The gradient goes to
  the first maximum of each window in row-major order, as ``lax.reduce_window``'s does, so
  ties (the zeros after a ReLU) give the same gradient as the plain op.
  """
  return _pool_windows(x).max(axis=(2, 4))


def _pool_windows(x):
  batch, height, width, channels = x.shape
  x = x[:, : height // 2 * 2, : width // 2 * 2]
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels)


def _max_pool_forward(x):
  pooled = max_pool_2x2(x)
  return pooled, (x, pooled)


def _max_pool_backward(residuals, cotangent):
  x, pooled = residuals
  windows = _pool_windows(x)
  # Window elements in row-major order; each takes the cotangent only if no earlier one did.
  candidates = [windows[:, :, row, :, col] for row in (0, 1) for col in (0, 1)]
  taken = jnp.zeros(pooled.shape, bool)
  grads = []
  for candidate in candidates:
    chosen = (candidate == pooled) & ~taken
    grads.append(jnp.where(chosen, cotangent, 0).astype(x.dtype))
    taken = taken | chosen
  windows_grad = jnp.stack(grads, axis=-1).reshape(*pooled.shape, 2, 2)
  # (batch, h/2, w/2, channels, row, col) → (batch, h/2, row, w/2, col, channels).
  windows_grad = windows_grad.transpose(0, 1, 4, 2, 5, 3).reshape(windows.shape)
  batch, height, width, channels = x.shape
  grad = windows_grad.reshape(batch, height // 2 * 2, width // 2 * 2, channels)
  return (jnp.pad(grad, ((0, 0), (0, height % 2), (0, width % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)
