"""Convolution and max-pooling formulated for XLA:CPU; the same functions as the plain ops.

XLA:CPU runs a convolution with few channels far below its matmul speed: its kernels
vectorize along the output-feature axis, 16 float32 lanes wide with AVX-512, so the seed
CNN's 3 → 6 conv1 leaves most lanes idle. :func:`conv_toeplitz` writes a stride-1
convolution as one dense matmul with a banded (Toeplitz) matrix built from the kernel,
which XLA:CPU runs near its matmul speed despite the zeros it multiplies;
:func:`conv_padded_features`, its fallback for strided, dilated or grouped convolutions,
pads the output features to 16. ``lax.reduce_window`` max-pooling and its gradient
(``select_and_scatter``) are generic windowed loops, while a 2x2 pool is a reshape and a max.
These win for the seed CNN's 5x5 convolutions at 3–16 channels; the DDPM U-Net's 3x3
convolutions at 8 and more channels ran slower as banded matmuls, so it keeps the plain ops.
The seed CNN trains faster with the banded matmuls on XLA:GPU too, there with whole output
rows per matmul row.

This module is the math of each formulation only. Which one a model uses is its explicit
argument (:data:`FORMULATIONS`), chosen per platform by
:class:`jaxdiff.policy.ExecutionPolicy`, with the compiler options that go with it. The
measurements behind every choice (``benchmarks/cpu_op_probes.py`` and the throughput scripts)
are in ``benchmarks/RESULTS.md``.
"""

import inspect
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

FEATURE_MULTIPLE = 16
"""Output features are padded to a multiple of this, one AVX-512 register of float32."""


FORMULATIONS = ("lax", "banded", "banded_rows")
"""How a model computes its convolutions and pools, ``"lax"``, the plain ops; ``"banded"``,
:func:`conv_toeplitz` in narrow column blocks and :func:`max_pool_2x2` (XLA:CPU);
``"banded_rows"``, the same with whole output rows per matmul row (XLA:GPU)."""


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


_CONV_SIGNATURE = inspect.signature(lax.conv_general_dilated)


def conv_toeplitz(
  lhs: jax.Array,
  rhs: jax.Array,
  *args: Any,
  block: int | None = None,
  whole_rows: bool = False,
  **kwargs: Any,
) -> jax.Array:
  """``lax.conv_general_dilated`` as one matmul with a banded (Toeplitz) kernel matrix.

  Takes the arguments of ``lax.conv_general_dilated``, bound by its signature (so it can be
  passed as ``flax.linen.Conv(conv_general_dilated=...)``), and returns the same array. A
  stride-1 NHWC/HWIO convolution is a sum over its window; laid out by rows it is a matmul: the
  output width is cut into blocks of ``block`` columns, each block's ``kh`` input rows of
  ``block + kw - 1`` columns are flattened into one vector, and a banded matrix built from
  the kernel (zero outside the window) maps it to the block's ``block × cout`` outputs.
  The products with those zeros are wasted work, a factor ``(block + kw - 1) / kw``, but a
  dense matmul runs many times faster on XLA:CPU than its convolution kernels do at few
  channels. Other convolutions (strided, dilated, grouped, other layouts) go to
  :func:`conv_padded_features`.

  Args:
    lhs: the input, as for ``lax.conv_general_dilated``.
    rhs: the kernel.
    *args: the rest of ``lax.conv_general_dilated``'s arguments, by position.
    **kwargs: and by name.
    block: output columns per row of the matmul, a divisor of the output width; ``None``
      takes :func:`toeplitz_block`'s choice.
    whole_rows: with ``block=None``, whole output rows per matmul row (see
      :func:`toeplitz_block`).

  Returns:
    The convolution, shaped as ``lax.conv_general_dilated`` would return it.

  Raises:
    ValueError: ``block`` does not divide the output width.
  """
  bound = _CONV_SIGNATURE.bind(lhs, rhs, *args, **kwargs)
  bound.apply_defaults()
  given = bound.arguments
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  covered = (
    lhs.ndim == 4
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, given["dimension_numbers"]) == nhwc
    and tuple(given["window_strides"]) == (1, 1)
    and all(tuple(given[name] or (1, 1)) == (1, 1) for name in ("lhs_dilation", "rhs_dilation"))
    and given["feature_group_count"] == 1
    and given["batch_group_count"] == 1
  )
  if covered:
    pads = given["padding"]
    if isinstance(pads, str):
      pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), pads)
    (top, bottom), (left, right) = pads
    padded = lax.pad(
      lhs, jnp.zeros((), lhs.dtype), [(0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)]
    )
    covered = padded.shape[1] >= rhs.shape[0] and padded.shape[2] >= rhs.shape[1]
  if not covered:
    return conv_padded_features(**given)
  batch, height, width, in_features = padded.shape
  kernel_height, kernel_width, _, out_features = rhs.shape
  out_height, out_width = height - kernel_height + 1, width - kernel_width + 1
  if block is None:
    block = toeplitz_block(out_width, kernel_width, whole_rows)
  elif block <= 0 or out_width % block:
    raise ValueError(f"block must be a positive divisor of the output width {out_width}: {block}")
  window = block + kernel_width - 1
  # (batch, out_height, blocks, kh, window, in), one matmul row per block; built in one
  # expression so that XLA makes it in one pass over the input. The rows are a 2-D matrix,
  # not (batch, out_height, blocks, ...): through the 4-D product XLA:CPU computed the
  # kernel's gradient after a transposing copy of the output's gradient (RESULTS.md).
  rows = jnp.stack(
    [
      jnp.stack(
        [padded[:, dy : dy + out_height, start : start + window] for dy in range(kernel_height)],
        axis=2,
      )
      for start in range(0, out_width, block)
    ],
    axis=2,
  ).reshape(batch * out_height * (out_width // block), kernel_height * window * in_features)
  out = jnp.matmul(
    rows,
    _toeplitz(rhs, block).reshape(-1, block * out_features),
    precision=given["precision"],
    preferred_element_type=given["preferred_element_type"],
  )
  return out.reshape(batch, out_height, out_width, out_features)


def toeplitz_block(out_width: int, kernel_width: int, whole_rows: bool = False) -> int:
  """:func:`conv_toeplitz`'s output columns per matmul row.

  By default (for XLA:CPU) the smallest divisor of the output width not below ``kw - 1``: the
  overlapping column windows then copy the input at most twice, and the matrix stays small
  enough for the cache. With ``whole_rows`` (for XLA:GPU) the whole output row: each matmul row
  is then ``kh`` whole input rows, contiguous in memory, where narrow blocks' many strided
  windows made the copy into the row matrix a visible share of the step.
  """
  if whole_rows:
    return out_width
  divisors = (b for b in range(1, out_width + 1) if out_width % b == 0 and b >= kernel_width - 1)
  return next(divisors, out_width)


def _toeplitz(kernel: jax.Array, block: int) -> jax.Array:
  """(kh, block + kw - 1, in, block, out): output column c sees input columns c … c + kw - 1."""
  kernel_width = kernel.shape[1]
  window = block + kernel_width - 1
  # Zero-padding keeps the matrix exact and its gradient a sum of slices.
  shifted = [
    jnp.pad(kernel, ((0, 0), (column, window - kernel_width - column), (0, 0), (0, 0)))
    for column in range(block)
  ]
  return jnp.stack(shifted, axis=3)


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
