"""How much of the DDPM U-Net's training step is convolution: each one timed alone, jaxdiff
against PyTorch.

For each U-Net size, times each of the U-Net's convolutions alone, as its training step
computes it (the forward pass and the kernel's and input's gradients; no input gradient for
the first, whose input is the noisy image): jaxdiff's way, compiled with the engine's compiler
options (``ExecutionPolicy.for_mesh(mesh).compiler_options``), against PyTorch's ``conv2d``
and its backward (``twins.convolution_call``), the two in turns, float32; then sums them
over one step, to compare with the two steps of ``ddpm_throughput.py``.

  python -m benchmarks.ddpm_convolutions --sizes tiny,small --repeats 3
"""

import argparse
import collections
import dataclasses
import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import common
from jaxdiff import parallel
from jaxdiff.models import make_unet
from jaxdiff.policy import ExecutionPolicy

NHWC = ("NHWC", "HWIO", "NHWC")  # the U-Net's convolution layout


@dataclasses.dataclass(frozen=True)
class Convolution:
  """One convolution of the U-Net: NHWC input and HWIO kernel shapes, strides, padding."""

  input_shape: tuple[int, ...]
  kernel_shape: tuple[int, ...]
  strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  input_gradient: bool  # False for the first convolution: the noisy image takes no gradient

  def apply(self, x, w):
    return lax.conv_general_dilated(x, w, self.strides, self.padding, dimension_numbers=NHWC)

  @property
  def output_shape(self):
    """NHWC."""
    shapes = (jax.ShapeDtypeStruct(shape, jnp.float32) for shape in (self.input_shape, self.kernel_shape))  # fmt: skip
    return jax.eval_shape(self.apply, *shapes).shape

  def __str__(self):
    kh, kw, cin, cout = self.kernel_shape
    batch, height, width, _ = self.input_shape
    stride = f" stride {self.strides[0]}" if max(self.strides) > 1 else ""
    return f"{kh}x{kw} {batch}x{height}x{width}x{cin}->{cout}{stride}"


def unet_convolutions(size, image_shape, batch_size):
  """``{Convolution: how many times one forward pass of the U-Net computes it}``."""
  model = make_unet(size)
  images = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
  timesteps = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images, timesteps)
  closed = jax.make_jaxpr(model.apply)(variables, images, timesteps)
  network_input = closed.jaxpr.invars[-2]
  counts = collections.Counter()

  def visit(jaxpr):
    for equation in jaxpr.eqns:
      if equation.primitive.name == "conv_general_dilated":
        lhs, rhs = equation.invars[:2]
        if equation.params["dimension_numbers"] != lax.conv_dimension_numbers(
          lhs.aval.shape, rhs.aval.shape, NHWC
        ):
          raise ValueError(f"expected NHWC convolutions, got {equation.params}")
        padding = tuple(tuple(pair) for pair in equation.params["padding"])
        counts[Convolution(lhs.aval.shape, rhs.aval.shape, tuple(equation.params["window_strides"]),
                           padding, lhs is not network_input)] += 1  # fmt: skip
      for value in equation.params.values():
        inner = getattr(value, "jaxpr", value)  # a ClosedJaxpr's, or a Jaxpr
        if hasattr(inner, "eqns"):
          visit(inner)

  visit(closed.jaxpr)
  return counts


def jax_convolution_call(conv, compiler_options):
  """A function making one forward-and-gradient call of ``conv``, compiled with
  ``compiler_options``, and waiting for it."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(conv.input_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(conv.kernel_shape), jnp.float32)
  output_grad = jnp.ones(conv.output_shape, jnp.float32)

  def forward_and_gradients(x, w):
    if conv.input_gradient:
      y, vjp = jax.vjp(conv.apply, x, w)
    else:
      y, vjp = jax.vjp(functools.partial(conv.apply, x), w)
    return y, vjp(output_grad)

  compiled = jax.jit(forward_and_gradients, compiler_options=compiler_options)
  return lambda: jax.block_until_ready(compiled(x, w))


def print_convolutions(twins, size, flags, compiler_options, device):
  """Times each convolution of the U-Net in both frameworks (module docstring); prints each
  and their sums over one training step."""
  calls, repeats = flags.calls, flags.repeats
  print(f"convolutions of the {size} U-Net, forward + gradients, ms per call (median of {repeats} rounds of {calls} calls, in turns):")  # fmt: skip
  totals = collections.Counter()
  for conv, count in sorted(
    unet_convolutions(size, flags.image_shape, flags.batch_size).items(),
    key=lambda item: (item[0].input_shape, item[0].kernel_shape, item[0].strides),
  ):
    convolution_calls = {"jaxdiff": jax_convolution_call(conv, compiler_options),
                         "pytorch": twins.convolution_call(conv, device)}  # fmt: skip
    timed = common.alternate(
      {name: common.repeat_seconds(call, calls) for name, call in convolution_calls.items()},
      repeats,
    )
    ms = {name: 1000 * statistics.median(timings) for name, (_, timings) in timed.items()}
    totals.update({name: count * value for name, value in ms.items()})
    print(f"  {count:2d} x {str(conv) + ('' if conv.input_gradient else ', no input gradient'):38s} jaxdiff {ms['jaxdiff']:7.3f}  pytorch {ms['pytorch']:7.3f}", flush=True)  # fmt: skip
  print(f"convolutions per step ({size}): jaxdiff {totals['jaxdiff']:.1f} ms, pytorch {totals['pytorch']:.1f} ms", flush=True)  # fmt: skip


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_unet_flags(parser)
  parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each convolution")
  parser.add_argument("--calls", type=int, default=10, help="calls per timed round")
  flags = common.parse_unet_flags(parser)
  common.positive(parser, flags, "repeats", "calls")
  twins, device = common.start_twins(parser)
  compiler_options = dict(ExecutionPolicy.for_mesh(parallel.make_mesh()).compiler_options)
  for size in flags.sizes:
    print_convolutions(twins, size, flags, compiler_options, device)


if __name__ == "__main__":
  main()
