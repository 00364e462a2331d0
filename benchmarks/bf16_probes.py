"""What bfloat16 buys on XLA:CPU: dots, convolutions, and the U-Net's 3x3 convolution as dots.

On CPUs with AMX or AVX-512-BF16 a bfloat16 matmul can run several times faster than float32.
Each line is one jitted function (``cpu_op_probes.milliseconds``: best of 5 rounds), timed with
the engine's compiler options: matmuls in float32, in bfloat16 with float32 accumulation
(``preferred_element_type``) and in bfloat16 throughout; the U-Net's 3x3 convolutions at its
widths through ``lax.conv`` in both dtypes, and written as bfloat16 dots: the output width's
three shifts stacked into the channels ("row patches", ``kw * C`` wide), one dot with the three
kernel rows side by side, and the three row-shifted products summed. Their kernel gradient is
timed the same way (row patches of the input against the row-shifted output gradient) and
their forward + both gradients through autodiff; the forward's largest error against float32
``lax.conv``, relative to the output's largest value, is printed beside it. The CPU's bfloat16
flags are printed first.

  python -m benchmarks.bf16_probes
"""

import argparse

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks.common import header
from benchmarks.cpu_op_probes import NHWC, milliseconds
from jaxdiff import environment, parallel
from jaxdiff.policy import ExecutionPolicy


def row_patches(x: jax.Array, kernel_width: int) -> jax.Array:
  """(N, H, W + kw - 1, C) -> (N, H, W, kw * C): each column with its kw - 1 right neighbours."""
  width = x.shape[2] - kernel_width + 1
  shifted = [x[:, :, dx : dx + width] for dx in range(kernel_width)]
  return jnp.stack(shifted, axis=3).reshape(*x.shape[:2], width, kernel_width * x.shape[3])


def conv_as_dots(x: jax.Array, w: jax.Array) -> jax.Array:
  """A 3x3 "SAME" convolution as one bfloat16 dot over row patches (float32 accumulation)."""
  batch, height, width, channels = x.shape
  kh, kw, _, out = w.shape
  padded = jnp.pad(x.astype(jnp.bfloat16), ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
  rows = row_patches(padded, kw)  # (N, H + kh - 1, W, kw * C)
  kernel = w.astype(jnp.bfloat16).reshape(kh, kw * channels, out).transpose(1, 0, 2)
  y = jnp.matmul(rows, kernel.reshape(kw * channels, kh * out), preferred_element_type=jnp.float32)
  y = y.reshape(batch, height + kh - 1, width, kh, out)
  return sum(y[:, dy : dy + height, :, dy] for dy in range(kh)).astype(x.dtype)


def kernel_gradient_as_dot(x: jax.Array, g: jax.Array) -> jax.Array:
  """``conv_as_dots``' kernel gradient as one bfloat16 dot: row patches against shifted g."""
  batch, height, width, channels = x.shape
  out = g.shape[-1]
  rows = row_patches(jnp.pad(x.astype(jnp.bfloat16), ((0, 0), (1, 1), (1, 1), (0, 0))), 3)
  g_padded = jnp.pad(g.astype(jnp.bfloat16), ((0, 0), (2, 2), (0, 0), (0, 0)))
  shifted = jnp.stack([g_padded[:, 2 - dy : 4 - dy + height] for dy in range(3)], axis=3)
  shifted = shifted.reshape(batch, height + 2, width, 3 * out)
  grad = jnp.einsum("nhwk,nhwo->ko", rows, shifted, preferred_element_type=jnp.float32)
  return grad.reshape(3, channels, 3, out).transpose(2, 0, 1, 3)


def with_gradients(conv):
  """``conv``'s forward and both gradients, for cotangent ``g``."""
  return lambda x, w, g: jax.vjp(conv, x, w)[1](g)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--calls", type=int, default=20, help="calls per timed round")
  flags = parser.parse_args()
  if flags.calls <= 0:
    parser.error("--calls must be positive")
  print(header(), flush=True)
  cpu_flags = (environment.cpu_info("flags") or "").split()
  print("bfloat16 flags:", " ".join(f for f in cpu_flags if "bf16" in f or "amx" in f) or "none")
  options = dict(ExecutionPolicy.for_mesh(parallel.make_mesh()).compiler_options)
  key = jax.random.key(0)

  def show(label, fn, *args, flops=None):
    ms = milliseconds(fn, *args, calls=flags.calls, compiler_options=options)
    rate = f" ({flops / ms / 1e6:.0f} GFLOP/s)" if flops else ""
    print(f"{label:62s} {ms:8.3f} ms{rate}", flush=True)

  a = jax.random.normal(key, (1024, 1024))
  b16 = a.astype(jnp.bfloat16)
  flops = 2 * 1024**3
  show("matmul 1024^3 float32", jnp.matmul, a, a, flops=flops)
  show("matmul 1024^3 bfloat16, float32 accumulation", lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32), b16, b16, flops=flops)  # fmt: skip
  show("matmul 1024^3 bfloat16", jnp.matmul, b16, b16, flops=flops)

  conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
  for size, features_in, features_out in ((28, 64, 64), (28, 32, 32), (14, 128, 64), (28, 16, 16)):
    x = jax.random.normal(key, (32, size, size, features_in))
    w = jax.random.normal(key, (3, 3, features_in, features_out)) * 0.1
    g = jax.random.normal(key, (32, size, size, features_out))
    shape = f"32x{size}x{size}x{features_in}->{features_out}"
    for dtype in (jnp.float32, jnp.bfloat16):
      xd, wd, gd = x.astype(dtype), w.astype(dtype), g.astype(dtype)
      name = jnp.dtype(dtype).name
      show(f"conv 3x3 {shape} forward, lax.conv {name}", conv, xd, wd)
      kernel_grad = lambda x, g, w=wd: jax.vjp(lambda w: conv(x, w), w)[1](g)
      show(f"conv 3x3 {shape} kernel gradient, lax.conv {name}", kernel_grad, xd, gd)
      show(
        f"conv 3x3 {shape} forward + gradients, lax.conv {name}", with_gradients(conv), xd, wd, gd
      )
    exact = conv(x, w)
    error = float(jnp.abs(conv_as_dots(x, w) - exact).max() / jnp.abs(exact).max())
    show(f"conv 3x3 {shape} forward, bfloat16 dots (error {error:.0e})", conv_as_dots, x, w)
    show(f"conv 3x3 {shape} kernel gradient, bfloat16 dot", kernel_gradient_as_dot, x, g)
    show(
      f"conv 3x3 {shape} forward + gradients, bfloat16 dots", with_gradients(conv_as_dots), x, w, g
    )


if __name__ == "__main__":
  main()
