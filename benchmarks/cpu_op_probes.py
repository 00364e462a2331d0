"""Per-op timings behind jaxdiff's XLA:CPU formulations (``jaxdiff/models/cpu_ops.py``, and the
U-Net's ``GroupNorm`` and ``dot_product_attention`` in ``jaxdiff/models/unet.py``).

Each line is one jitted function on random float32 data, timed as the best of 5 rounds of
``--calls`` calls (3 for the small U-Net) after a warm-up. Shapes are the seed CNN's at batch
100 and the DDPM U-Nets' at batch 32; the U-Net's 3x3 convolutions are timed with XLA:CPU's
default kernels (YNNPACK) and with the engine's compiler options
(``ExecutionPolicy.for_mesh(mesh).compiler_options``: XLA's own). Whole-model variants swap
layers through Flax's ``nn.intercept_methods``, with the same parameters.

  python -m benchmarks.cpu_op_probes
  python -m benchmarks.cpu_op_probes --only "small U-Net"
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from benchmarks.common import header
from jaxdiff import ddpm, parallel
from jaxdiff.models import SimpleCNN, cpu_ops, make_unet
from jaxdiff.models import unet as unet_layers
from jaxdiff.policy import CONVOLUTIONS, ExecutionPolicy

NHWC = ("NHWC", "HWIO", "NHWC")


def milliseconds(fn, *args, calls, compiler_options=None):
  fn = jax.jit(fn, compiler_options=compiler_options)
  jax.block_until_ready(fn(*args))
  rounds = []
  for _ in range(5):
    started = time.perf_counter()
    for _ in range(calls):
      result = fn(*args)
    jax.block_until_ready(result)
    rounds.append((time.perf_counter() - started) / calls * 1000)
  return min(rounds)


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC)


def computed_by(needs_replacing, replacement):
  """A Flax interceptor (``nn.intercept_methods``) that computes each call of a module for which
  ``needs_replacing(module)`` holds as ``replacement(module)``, with the module's parameters.

  Parameters are created by the module itself: initialise outside the interceptor.
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or module.is_initializing() or not needs_replacing(module):
      return next_fun(*args, **kwargs)
    return replacement(module).apply({"params": module.variables["params"]}, *args, **kwargs)

  return interceptor


# Every nn.Conv computed with cpu_ops.conv_toeplitz (the clone computes so, and is left alone).
toeplitz_convolutions = computed_by(
  lambda module: (
    isinstance(module, nn.Conv) and module.conv_general_dilated is not cpu_ops.conv_toeplitz
  ),
  lambda conv: conv.clone(parent=None, conv_general_dilated=cpu_ops.conv_toeplitz),
)
# The U-Net's GroupNorms computed by Flax's, as before jaxdiff had its own.
flax_group_norms = computed_by(
  lambda module: isinstance(module, unet_layers.GroupNorm),
  lambda norm: nn.GroupNorm(norm.num_groups, epsilon=norm.epsilon, dtype=norm.dtype),
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--calls", type=int, default=20, help="calls per timed round")
  parser.add_argument("--only", default="", help="time only the lines whose label contains this")
  flags = parser.parse_args()
  if flags.calls <= 0:
    parser.error("--calls must be positive")
  print(header(), flush=True)
  key = jax.random.key(0)

  def show(label, fn, *args, calls=flags.calls, compiler_options=None):
    if flags.only not in label:
      return
    ms = milliseconds(fn, *args, calls=calls, compiler_options=compiler_options)
    print(f"{label:58s} {ms:8.3f} ms", flush=True)

  a = jax.random.normal(key, (1024, 1024))
  ms = milliseconds(jnp.matmul, a, a, calls=flags.calls)
  print(f"{'matmul 1024x1024x1024':58s} {ms:8.3f} ms ({2 * 1024**3 / ms / 1e6:.0f} GFLOP/s)")

  x1 = jax.random.normal(key, (100, 32, 32, 3))
  for features in (6, 8, 16, 32):
    w = jax.random.normal(key, (5, 5, 3, features))
    g = jax.random.normal(key, (100, 28, 28, features))
    show(f"conv1 3->{features} forward", conv, x1, w)
    show(f"conv1 3->{features} kernel gradient", lambda x, g, w=w: jax.vjp(lambda w: conv(x, w), w)[1](g), x1, g)  # fmt: skip
  w1 = jax.random.normal(key, (5, 5, 3, 6))
  g1 = jax.random.normal(key, (100, 28, 28, 6))
  for name in ("conv_padded_features", "conv_toeplitz"):
    fast = lambda x, w, name=name: getattr(cpu_ops, name)(x, w, (1, 1), "VALID", dimension_numbers=NHWC)  # fmt: skip
    show(f"conv1 3->6 forward, cpu_ops.{name}", fast, x1, w1)
    show(f"conv1 3->6 kernel gradient, cpu_ops.{name}", lambda x, g, fast=fast: jax.vjp(lambda w: fast(x, w), w1)[1](g), x1, g1)  # fmt: skip
  patches = lambda x: jnp.concatenate(
    [x[:, i : i + 28, j : j + 28] for i in range(5) for j in range(5)], axis=-1
  )
  show("conv1 im2col patches alone (100x28x28x75)", patches, x1)
  show("conv1 as im2col patches @ (75x6) kernel", lambda x, w: patches(x) @ w.reshape(75, 6), x1, w1)  # fmt: skip

  x2 = jax.random.normal(key, (100, 14, 14, 6))
  w2 = jax.random.normal(key, (5, 5, 6, 16))
  g2 = jax.random.normal(key, (100, 10, 10, 16))
  show("conv2 6->16 forward", conv, x2, w2)
  show("conv2 6->16 kernel gradient", lambda x, g: jax.vjp(lambda w: conv(x, w), w2)[1](g), x2, g2)
  show("conv2 6->16 input gradient", lambda w, g: jax.vjp(lambda x: conv(x, w), x2)[1](g), w2, g2)
  toeplitz = lambda x, w: cpu_ops.conv_toeplitz(x, w, (1, 1), "VALID", dimension_numbers=NHWC)
  show("conv2 6->16 forward, cpu_ops.conv_toeplitz", toeplitz, x2, w2)
  show("conv2 6->16 kernel gradient, cpu_ops.conv_toeplitz", lambda x, g: jax.vjp(lambda w: toeplitz(x, w), w2)[1](g), x2, g2)  # fmt: skip
  show("conv2 6->16 input gradient, cpu_ops.conv_toeplitz", lambda w, g: jax.vjp(lambda x: toeplitz(x, w), x2)[1](g), w2, g2)  # fmt: skip

  pool_input = jax.random.normal(key, (100, 28, 28, 6))
  pools = {
    "lax.reduce_window (flax max_pool)": lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)),
    "cpu_ops.max_pool_2x2": cpu_ops.max_pool_2x2,
  }
  for name, pool in pools.items():
    show(f"pool1 after ReLU, forward + gradient, {name}", lambda x, pool=pool: jax.grad(lambda x: pool(jax.nn.relu(x)).sum())(x), pool_input)  # fmt: skip

  images = jax.random.normal(key, (100, 32, 32, 3))
  labels = jnp.arange(100) % 10
  params = SimpleCNN().init(key, images)["params"]
  for convolution in CONVOLUTIONS:
    model = SimpleCNN(convolution=convolution)
    # The images are an argument, not a constant XLA could fold the input's rearranging into.
    loss = lambda p, images, model=model: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, images), labels
    ).mean()
    show(f"SimpleCNN loss gradient, batch 100, convolution={convolution}", jax.grad(loss), params, images)  # fmt: skip

  noisy = jax.random.normal(key, (32, 28, 28, 1))
  steps = jax.random.randint(key, (32,), 0, 1000)
  for attention, label in ((None, "as built"), ((0,), "mid-block attention only")):
    unet = make_unet("tiny", attention_resolutions=attention)
    unet_params = unet.init(key, noisy, steps)["params"]
    loss = lambda p, x, unet=unet: jnp.mean(unet.apply({"params": p}, x, steps) ** 2)
    show(f"tiny U-Net loss gradient, batch 32, {label}", jax.grad(loss), unet_params, noisy)
  unet = make_unet("tiny")
  loss = lambda p, x: jnp.mean(unet.apply({"params": p}, x, steps) ** 2)
  unet_params = unet.init(key, noisy, steps)["params"]
  with nn.intercept_methods(toeplitz_convolutions):
    show("tiny U-Net loss gradient, batch 32, convs as cpu_ops.conv_toeplitz", jax.grad(loss), unet_params, noisy)  # fmt: skip
  # (The U-Net's attention function cannot be swapped without patching the library: the
  # attention lines below time it alone.)
  with nn.intercept_methods(flax_group_norms):
    show("tiny U-Net loss gradient, batch 32, Flax GroupNorm", jax.grad(loss), unet_params, noisy)  # fmt: skip
  show("tiny U-Net loss gradient, batch 32, as built (again)", jax.grad(loss), unet_params, noisy)

  # The U-Net's 3x3 convolutions with XLA:CPU's default kernels (YNNPACK in jaxlib 0.10) and
  # with XLA's own, which the engine's compiler options ask for.
  policy = ExecutionPolicy.for_mesh(parallel.make_mesh())
  kernels = (("YNNPACK", None), ("XLA", dict(policy.compiler_options)))
  conv3 = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
  for batch, size, features_in, features_out in ((32, 28, 64, 64), (32, 28, 32, 32), (32, 14, 128, 64), (32, 28, 16, 8)):  # fmt: skip
    x = jax.random.normal(key, (batch, size, size, features_in))
    w = jax.random.normal(key, (3, 3, features_in, features_out))
    g = jax.random.normal(key, (batch, size, size, features_out))
    shape = f"{batch}x{size}x{size}x{features_in}->{features_out}"
    for name, options in kernels:
      show(f"conv 3x3 {shape} forward, {name}", conv3, x, w, compiler_options=options)
      show(f"conv 3x3 {shape} kernel gradient, {name}", lambda x, g, w=w: jax.vjp(lambda w: conv3(x, w), w)[1](g), x, g, compiler_options=options)  # fmt: skip
      show(f"conv 3x3 {shape} input gradient, {name}", lambda w, g, x=x: jax.vjp(lambda x: conv3(x, w), x)[1](g), w, g, compiler_options=options)  # fmt: skip
  small = make_unet("small")
  small_params = small.init(key, noisy, steps)["params"]
  small_loss = lambda p, x: jnp.mean(small.apply({"params": p}, x, steps) ** 2)
  one_run = jax.tree.map(lambda leaf: leaf[None], small_params)
  for name, options in kernels:
    show(f"small U-Net loss gradient, batch 32, {name} convolutions", jax.grad(small_loss), small_params, noisy, calls=3, compiler_options=options)  # fmt: skip
    show(f"small U-Net loss gradient, batch 32, {name}, vmapped over 1 run", jax.vmap(jax.grad(small_loss), in_axes=(0, None)), one_run, noisy, calls=3, compiler_options=options)  # fmt: skip
  # The DDPM experiment's sampler: a lax.scan of the U-Net's forward pass.
  schedule = ddpm.make_schedule("linear", 1000)
  denoise = lambda x, t: small.apply({"params": small_params}, x, t)
  ddim = lambda key: ddpm.sample_ddim(denoise, schedule, key, (64, 28, 28, 1), num_steps=10)
  for name, options in kernels:
    show(f"small U-Net DDIM sampling, 10 steps, batch 64, {name}", ddim, key, calls=1, compiler_options=options)  # fmt: skip

  q, k, v = jax.random.normal(key, (3, 32, 196, 1, 16))
  for name, attend in (("jax.nn", jax.nn.dot_product_attention), ("unet", unet_layers.dot_product_attention)):  # fmt: skip
    show(f"one attention (32 x 196 tokens x 16), forward + gradient, {name}", lambda q, k, v, attend=attend: jax.vjp(attend, q, k, v)[1](q), q, k, v)  # fmt: skip
  norm_input = jax.random.normal(key, (32, 28, 28, 8))
  for name, norm in (
    ("flax", nn.GroupNorm(4)),
    ("unet", unet_layers.GroupNorm(4, dtype=jnp.float32)),
  ):
    norm_params = norm.init(key, norm_input)
    show(f"GroupNorm 32x28x28x8, 4 groups, forward, {name}", norm.apply, norm_params, norm_input)
    show(f"GroupNorm 32x28x28x8, 4 groups, forward + gradient, {name}", lambda p, x, norm=norm: jax.vjp(norm.apply, p, x)[1](x), norm_params, norm_input)  # fmt: skip


if __name__ == "__main__":
  main()
