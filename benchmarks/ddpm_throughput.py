"""Training throughput of the DDPM U-Net: jaxdiff's engine vs a PyTorch twin.

Measures images per second of one DDPM training run (batch 32 by default) on
random uint8 MNIST-shaped data (``--image-shape 32,32,3`` for CIFAR's) already
in memory, for each U-Net size asked for, with:

* jaxdiff: ``diffusion_experiment.make_trainer``, the engine that ``train_diffusion``
  trains with: ``ddpm.diffusion_task`` and ``diffusion_optimizer`` (global-norm
  clipping, Adam under a linear warm-up, the parameter EMA), one epoch per
  ``train_epoch`` call;
* pytorch: a ``torch.nn.Module`` that mirrors ``jaxdiff.models.unet.UNet``
  layer by layer, NCHW, where JAX runs (``common.torch_device``: CUDA when
  JAX's device is a GPU), starting from the same initial parameters, with the
  same per-step work: a random permutation per epoch, a
  gather of uint8 rows mapped to [-1, 1], t ~ U{0, ..., T - 1} and Gaussian
  noise, q_sample with the same schedule, the noise-prediction MSE, backward,
  clipping, Adam with the same warm-up, and the EMA update.

``--dtype bfloat16`` computes both U-Nets in bfloat16 with float32 parameters:
jaxdiff's ``DiffusionConfig.compute_dtype``, and ``torch.autocast`` for the twin
(its GroupNorms and loss stay float32 there, as jaxdiff's statistics do).

Before timing, the twin is checked to be the same function: the Flax
parameters (perturbed, so that no zero or unit initialisation hides a
mis-copied leaf) are loaded into it, both predict the noise of the same inputs
at the same timesteps, and the outputs must agree to 1e-4 of their scale, with
equal parameter counts. By default only the tiny size is checked (cheap);
``--check`` checks every size asked for and exits without timing.

Each framework first runs one untimed epoch (for JAX that is compile plus the
first epoch, reported separately), then ``--repeats`` timed epochs of ``--steps``
steps, taken in turns with the other's (``common.alternate``), each with its
framework's default thread count; the reported rate is the median.

  python benchmarks/ddpm_throughput.py --sizes tiny,small --steps 50 --repeats 3
  python benchmarks/ddpm_throughput.py --image-shape 32,32,3 --size base --batch-size 64
  python benchmarks/ddpm_throughput.py --image-shape 32,32,3 --size base --dtype bfloat16
  python benchmarks/ddpm_throughput.py --check --sizes tiny,small,base
  python benchmarks/ddpm_throughput.py --sizes tiny,small --profile-torch
  python benchmarks/ddpm_throughput.py --sizes tiny,small --convolutions

``--convolutions`` then times each of the U-Net's convolutions alone, as its training step
computes it (the forward pass and the kernel's and input's gradients; no input gradient for
the first, whose input is the noisy image), jaxdiff's compiled way against PyTorch's, and
sums them over the step: how much of the gap between the two steps is convolution.
"""

import argparse
import collections
import dataclasses
import functools
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from common import (
  alternate,
  engine_epochs,
  header,
  random_data,
  report_rate,
  torch_device,
  torch_synchronize,
)

from jaxdiff import ddpm
from jaxdiff.diffusion_experiment import (
  COMPUTE_DTYPES,
  DiffusionConfig,
  ImageShapeError,
  check_image_shape,
  make_trainer,
)
from jaxdiff.models import cpu_ops
from jaxdiff.models.unet import UNET_SIZES, GroupNorm, UNet, make_unet

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
  from torch.optim.swa_utils import get_ema_multi_avg_fn
except ImportError:  # the JAX half is still worth running without torch
  torch = None

GROUP_NORM_EPSILON = GroupNorm.epsilon  # the U-Net's; PyTorch's default is 1e-5
NHWC = ("NHWC", "HWIO", "NHWC")  # the U-Net's convolution layout
CHECK_TOLERANCE = 1e-4  # of the output scale


# ----------------------------------------------------------------------------- jaxdiff


def jaxdiff_epochs(images, config):
  """The engine's epoch timer (``common.engine_epochs``) and the run's initial parameters."""
  trainer, state = make_trainer(config, images.shape[1:])
  # Copied out before the engine donates the state, so the twin starts from the same weights.
  initial = jax.device_get(jax.tree.map(lambda leaf: leaf[0], state.params))
  return engine_epochs(trainer, state, {"image": images}), initial


# ----------------------------------------------------------------------------- PyTorch twin


def torch_timestep_embedding(t, dim, max_period=10_000.0):
  """unet.timestep_embedding in PyTorch: ``(B,) -> (B, dim)`` float32."""
  half = dim // 2
  frequencies = torch.exp(
    -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1)
  )
  angles = t.float()[:, None] * frequencies[None, :]
  embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
  return F.pad(embedding, (0, dim % 2))


def group_norm(num_groups, channels):
  return nn.GroupNorm(num_groups, channels, eps=GROUP_NORM_EPSILON)


# Submodules are named as Flax auto-names them, lower-cased, so that copying parameters is a
# renaming (see flax_to_torch_state_dict).
class TorchResBlock(nn.Module if torch is not None else object):
  """unet.ResBlock (dropout 0) in PyTorch, NCHW."""

  def __init__(self, in_channels, features, num_groups, time_channels):
    super().__init__()
    self.groupnorm_0 = group_norm(num_groups, in_channels)
    self.conv_0 = nn.Conv2d(in_channels, features, 3, padding=1)
    self.dense_0 = nn.Linear(time_channels, features)
    self.groupnorm_1 = group_norm(num_groups, features)
    self.conv_1 = nn.Conv2d(features, features, 3, padding=1)
    self.skip = nn.Conv2d(in_channels, features, 1) if in_channels != features else None

  def forward(self, x, time):
    h = self.conv_0(F.silu(self.groupnorm_0(x)))
    h = h + self.dense_0(F.silu(time))[:, :, None, None]
    h = self.conv_1(F.silu(self.groupnorm_1(h)))
    return (x if self.skip is None else self.skip(x)) + h


class TorchAttentionBlock(nn.Module if torch is not None else object):
  """unet.AttentionBlock in PyTorch, NCHW."""

  def __init__(self, channels, num_heads, num_groups):
    super().__init__()
    self.num_heads = num_heads
    self.groupnorm_0 = group_norm(num_groups, channels)
    self.qkv = nn.Linear(channels, 3 * channels)
    self.out = nn.Linear(channels, channels)

  def forward(self, x):
    batch, channels, height, width = x.shape
    pixels = height * width
    h = self.groupnorm_0(x).reshape(batch, channels, pixels).transpose(1, 2)
    # Flax splits the 3C features as (q|k|v, head, head_dim), in that order.
    qkv = self.qkv(h).reshape(batch, pixels, 3, self.num_heads, channels // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, pixels, head_dim)
    h = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as in Flax
    h = self.out(h.transpose(1, 2).reshape(batch, pixels, channels))
    return x + h.transpose(1, 2).reshape(batch, channels, height, width)


class TorchUNet(nn.Module if torch is not None else object):
  """A ``unet.UNet`` in PyTorch, NCHW, for one image shape: ``(x_t, t) -> predicted noise``.

  Layers live in ``self.layers`` under the Flax module names, and ``self.plan`` replays the
  Flax ``__call__`` over them, skip connections included.

  Args:
    model: the Flax module whose fields (sizes, groups, heads, attention) to mirror.
    image_shape: ``(height, width, channels)``; the attention resolutions depend on it.
  """

  def __init__(self, model: UNet, image_shape):
    super().__init__()
    if model.dropout or jnp.dtype(model.dtype) != jnp.float32:
      raise ValueError("the twin mirrors float32 U-Nets without dropout only")
    height, _, in_channels = image_shape
    multipliers = model.channel_multipliers
    levels = len(multipliers)
    lowest = height // 2 ** (levels - 1)
    attention_at = (lowest,) if model.attention_resolutions is None else model.attention_resolutions
    base = model.base_channels
    self.base_channels = base
    self.layers = nn.ModuleDict()
    self.plan = []

    def add(kind, name, layer):
      self.layers[name] = layer
      self.plan.append((kind, name))

    def res_block(name, in_channels, features):
      add("res", name, TorchResBlock(in_channels, features, model.num_groups, 4 * base))

    def attention(name, channels):
      add("attn", name, TorchAttentionBlock(channels, model.num_heads, model.num_groups))

    self.layers["time_in"] = nn.Linear(base, 4 * base)
    self.layers["time_out"] = nn.Linear(4 * base, 4 * base)
    self.layers["conv_in"] = nn.Conv2d(in_channels, base, 3, padding=1)
    channels, skips = base, [base]
    for level, multiplier in enumerate(multipliers):
      for block in range(model.num_res_blocks):
        res_block(f"down{level}_res{block}", channels, base * multiplier)
        channels = base * multiplier
        if height in attention_at:
          attention(f"down{level}_attn{block}", channels)
        self.plan.append(("push", None))
        skips.append(channels)
      if level < levels - 1:
        # No padding here: forward pads like Flax's "SAME" at stride 2 (see there).
        add("down", f"down{level}_downsample", nn.Conv2d(channels, channels, 3, stride=2))
        height //= 2
        self.plan.append(("push", None))
        skips.append(channels)

    res_block("mid_res0", channels, channels)
    attention("mid_attn", channels)
    res_block("mid_res1", channels, channels)

    for level, multiplier in reversed(list(enumerate(multipliers))):
      for block in range(model.num_res_blocks + 1):
        self.plan.append(("pop", None))
        res_block(f"up{level}_res{block}", channels + skips.pop(), base * multiplier)
        channels = base * multiplier
        if height in attention_at:
          attention(f"up{level}_attn{block}", channels)
      if level > 0:
        add("up", f"up{level}_upsample", nn.Conv2d(channels, channels, 3, padding=1))
        height *= 2

    self.layers["norm_out"] = group_norm(model.num_groups, channels)
    self.layers["conv_out"] = nn.Conv2d(channels, model.out_channels or in_channels, 3, padding=1)

  def forward(self, x, t):
    layers = self.layers
    time = layers["time_in"](torch_timestep_embedding(t, self.base_channels))
    time = layers["time_out"](F.silu(time))
    h = layers["conv_in"](x)
    skips = [h]
    for kind, name in self.plan:
      if kind == "res":
        h = layers[name](h, time)
      elif kind == "attn":
        h = layers[name](h)
      elif kind == "push":
        skips.append(h)
      elif kind == "pop":
        h = torch.cat([h, skips.pop()], dim=1)
      elif kind == "down":
        # Flax's "SAME" at stride 2 on an even size pads one row and column after, none before.
        h = layers[name](F.pad(h, (0, 1, 0, 1)))
      else:  # "up": jnp.repeat twice is nearest-neighbour upsampling
        h = layers[name](F.interpolate(h, scale_factor=2, mode="nearest"))
    return layers["conv_out"](F.silu(layers["norm_out"](h)))


def flax_to_torch_state_dict(params):
  """The Flax U-Net's parameters as a state dict of :class:`TorchUNet`.

  Conv kernels go from HWIO to OIHW, dense kernels are transposed, GroupNorm's
  ``scale`` becomes ``weight``.
  """
  state = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [entry.key for entry in path]
    top, inner, leaf_name = names[0], [name.lower() for name in names[1:-1]], names[-1]
    array = np.asarray(leaf, np.float32)
    if leaf_name == "kernel":
      array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
    key = ".".join(["layers", top, *inner, "bias" if leaf_name == "bias" else "weight"])
    state[key] = torch.tensor(array)  # a copy: JAX hands out read-only buffers
  return state


def load_flax_params(net, params):
  """Copies Flax parameters into ``net``; strict, so every tensor on both sides is matched."""
  net.load_state_dict(flax_to_torch_state_dict(params), strict=True)


def check_twin(size, image_shape, batch=4):
  """Asserts the twin computes the Flax U-Net's function; prints and returns the max abs diff."""
  model = make_unet(size)
  init_key, perturb_key, x_key, t_key = jax.random.split(jax.random.key(42), 4)
  params = model.init(
    init_key, jnp.zeros((1, *image_shape), jnp.float32), jnp.zeros((1,), jnp.int32)
  )["params"]
  # A fresh U-Net's zero conv_out predicts zero whatever the rest does, and unit GroupNorm
  # scales and zero biases would pass even if copied to the wrong place: perturb every leaf.
  leaves, treedef = jax.tree.flatten(params)
  noise_keys = jax.random.split(perturb_key, len(leaves))
  params = jax.tree.unflatten(
    treedef,
    [leaf + 0.1 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, noise_keys)],
  )
  x = jax.random.normal(x_key, (batch, *image_shape))
  t = jax.random.randint(t_key, (batch,), 0, 1000, dtype=jnp.int32)
  # Full float32 products: on a GPU JAX's default precision would round through TF32.
  with jax.default_matmul_precision("float32"):
    expected = np.asarray(model.apply({"params": params}, x, t))

  net = TorchUNet(model, image_shape)
  load_flax_params(net, params)
  with torch.no_grad():
    got = net(
      torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()),
      torch.from_numpy(np.asarray(t).astype(np.int64)),
    )
  got = got.permute(0, 2, 3, 1).numpy()

  jax_count = sum(leaf.size for leaf in leaves)
  torch_count = sum(p.numel() for p in net.parameters())
  diff = float(np.max(np.abs(got - expected)))
  scale = float(np.max(np.abs(expected)))
  agree = diff <= CHECK_TOLERANCE * scale and jax_count == torch_count
  print(
    f"check {size} {'x'.join(map(str, image_shape))}: max |jax - torch| {diff:.2e} "
    f"(output max |x| {scale:.3g}, tolerance {CHECK_TOLERANCE:g} of it); parameters "
    f"jax {jax_count}, torch {torch_count}: {'ok' if agree else 'MISMATCH'}",
    flush=True,
  )
  if not agree:
    raise AssertionError(f"the PyTorch twin of the {size!r} U-Net is not the same function")
  return diff


def torch_epochs(images, config, steps, initial_params, device):
  """A function training the PyTorch twin one epoch per call and returning its seconds."""
  torch.manual_seed(config.seed)
  image_shape = images.shape[1:]
  # Stored as uint8 like the engine's device copy, so both pay for gather and normalization.
  x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
  net = TorchUNet(make_unet(config.model_size), image_shape)
  load_flax_params(net, initial_params)
  net.to(device)
  schedule = ddpm.make_schedule(config.schedule, config.num_timesteps)
  sqrt_alpha_bars = torch.tensor(np.asarray(schedule.sqrt_alpha_bars), device=device)
  sqrt_one_minus_alpha_bars = torch.tensor(
    np.asarray(schedule.sqrt_one_minus_alpha_bars), device=device
  )
  autocast = torch.autocast(
    device.type,
    dtype=torch.bfloat16,
    enabled=config.compute_dtype == "bfloat16",
  )

  params = list(net.parameters())
  optimizer = torch.optim.Adam(params, lr=config.learning_rate)
  # optax.linear_schedule(0, lr, warmup) at Adam's count: the first step takes lr 0, as in JAX.
  warmup = torch.optim.lr_scheduler.LambdaLR(
    optimizer, lambda step: min(1.0, step / config.warmup_steps)
  )
  ema = [p.detach().clone() for p in params]
  ema_update = get_ema_multi_avg_fn(config.ema_decay)
  batch_size = config.batch_size

  def epoch_seconds():
    started = time.perf_counter()
    order = torch.randperm(len(x_all), device=device)
    for step in range(steps):
      batch = order[step * batch_size : (step + 1) * batch_size]
      x0 = x_all[batch].float() / 127.5 - 1.0
      t = torch.randint(0, config.num_timesteps, (batch_size,), device=device)
      noise = torch.randn_like(x0)
      x_t = (
        sqrt_alpha_bars[t].view(-1, 1, 1, 1) * x0
        + sqrt_one_minus_alpha_bars[t].view(-1, 1, 1, 1) * noise
      )
      optimizer.zero_grad()
      with autocast:
        loss = F.mse_loss(net(x_t, t), noise)
      loss.backward()
      nn.utils.clip_grad_norm_(params, config.grad_clip)
      optimizer.step()
      warmup.step()
      ema_update(ema, params, None)
    torch_synchronize(torch, device)
    return time.perf_counter() - started

  return epoch_seconds


def print_torch_profile(size, epoch_seconds, steps, top=12):
  """Trains the twin one more epoch under ``torch.profiler``; prints its costliest ops per step.

  The ranking is by self CPU time, which on CUDA is the time spent launching kernels.
  """
  from torch.profiler import ProfilerActivity, profile

  with profile(activities=[ProfilerActivity.CPU]) as profiler:
    epoch_seconds()
  events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
  total = sum(event.self_cpu_time_total for event in events)
  print(f"pytorch profile ({size}): {total / steps / 1000:.1f} ms of self CPU time per step; top ops:")  # fmt: skip
  for event in events[:top]:
    print(f"  {event.self_cpu_time_total / steps / 1000:8.2f} ms {event.count / steps:6.1f} calls  {event.key}")  # fmt: skip


# ----------------------------------------------------------------------------- convolutions


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


def jax_convolution_seconds(conv, calls):
  """A function timing ``calls`` forward-and-gradient calls of ``conv``, compiled as the
  engine compiles (``cpu_ops.compiler_options``), returning seconds per call."""
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

  compiled = jax.jit(forward_and_gradients, compiler_options=cpu_ops.compiler_options())
  return repeat_seconds(lambda: jax.block_until_ready(compiled(x, w)), calls)


def torch_convolution_seconds(conv, calls, device):
  """:func:`jax_convolution_seconds` for PyTorch's ``conv2d``, NCHW, on ``device``."""
  batch, height, width, cin = conv.input_shape
  kh, kw, _, cout = conv.kernel_shape
  (top, bottom), (left, right) = conv.padding
  x = torch.randn(batch, cin, height, width, device=device, requires_grad=conv.input_gradient)
  w = torch.randn(cout, cin, kh, kw, device=device, requires_grad=True)
  out_batch, out_height, out_width, _ = conv.output_shape
  output_grad = torch.ones(out_batch, cout, out_height, out_width, device=device)
  symmetric = top == bottom and left == right

  def call():
    # Fresh gradients, as after the twin's zero_grad, rather than sums into the last ones.
    x.grad = w.grad = None
    # Symmetric padding inside the convolution, as the twin's layers pad; asymmetric (Flax's
    # "SAME" at stride 2) by F.pad first, as the twin's downsampling does.
    if symmetric:
      y = F.conv2d(x, w, stride=conv.strides, padding=(top, left))
    else:
      y = F.conv2d(F.pad(x, (left, right, top, bottom)), w, stride=conv.strides)
    y.backward(output_grad)
    torch_synchronize(torch, device)

  return repeat_seconds(call, calls)


def repeat_seconds(call, calls):
  """A function running ``call`` ``calls`` times and returning the seconds per call."""

  def seconds():
    started = time.perf_counter()
    for _ in range(calls):
      call()
    return (time.perf_counter() - started) / calls

  return seconds


def print_convolutions(size, image_shape, batch_size, repeats, device, calls=10):
  """Times each convolution of the U-Net, forward and gradients, in both frameworks (module
  docstring); prints each and their sums over one training step."""
  print(f"convolutions of the {size} U-Net, forward + gradients, ms per call (median of {repeats} rounds of {calls} calls, in turns):")  # fmt: skip
  totals = collections.Counter()
  for conv, count in sorted(
    unet_convolutions(size, image_shape, batch_size).items(),
    key=lambda item: (item[0].input_shape, item[0].kernel_shape, item[0].strides),
  ):
    timed = alternate({"jaxdiff": jax_convolution_seconds(conv, calls),
                       "pytorch": torch_convolution_seconds(conv, calls, device)}, repeats)  # fmt: skip
    ms = {name: 1000 * statistics.median(timings) for name, (_, timings) in timed.items()}
    totals.update({name: count * value for name, value in ms.items()})
    print(f"  {count:2d} x {str(conv) + ('' if conv.input_gradient else ', no input gradient'):38s} jaxdiff {ms['jaxdiff']:7.3f}  pytorch {ms['pytorch']:7.3f}", flush=True)  # fmt: skip
  print(f"convolutions per step ({size}): jaxdiff {totals['jaxdiff']:.1f} ms, pytorch {totals['pytorch']:.1f} ms", flush=True)  # fmt: skip


# ----------------------------------------------------------------------------- CLI


def parse_flags():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--sizes",
    "--size",
    default="tiny",
    help=f"U-Net sizes, comma-separated, of {', '.join(UNET_SIZES)} (default tiny)",
  )
  parser.add_argument(
    "--image-shape", default="28,28,1", help="height,width,channels (default 28,28,1: MNIST)"
  )
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32",
                      help="computation dtype of both U-Nets (parameters stay float32)")  # fmt: skip
  parser.add_argument("--steps", type=int, default=50, help="steps per epoch")
  parser.add_argument("--repeats", type=int, default=3, help="timed epochs after the first")
  parser.add_argument(
    "--check", action="store_true", help="check the twin at every size, then exit"
  )
  parser.add_argument("--skip-torch", action="store_true", help="time jaxdiff only")
  parser.add_argument(
    "--profile-torch",
    action="store_true",
    help="after the timings, profile one more epoch of the twin (torch.profiler)",
  )
  parser.add_argument(
    "--convolutions",
    action="store_true",
    help="after the timings, time each convolution alone in both frameworks (module docstring)",
  )
  flags = parser.parse_args()
  if flags.batch_size <= 0 or flags.steps <= 0 or flags.repeats <= 0:
    parser.error("--batch-size, --steps and --repeats must be positive")
  flags.sizes = flags.sizes.split(",")
  unknown = [size for size in flags.sizes if size not in UNET_SIZES]
  if unknown:
    parser.error(
      f"unknown size(s) {', '.join(map(repr, unknown))}; choose from {', '.join(UNET_SIZES)}"
    )
  if len(set(flags.sizes)) != len(flags.sizes):
    parser.error("--sizes names a size twice")
  try:
    flags.image_shape = tuple(int(part) for part in flags.image_shape.split(","))
  except ValueError:
    parser.error(f"--image-shape must be three integers, got {flags.image_shape!r}")
  if len(flags.image_shape) != 3 or min(flags.image_shape) <= 0:
    parser.error(f"--image-shape must be three positive integers, got {flags.image_shape}")
  for size in flags.sizes:
    try:
      check_image_shape(flags.image_shape, size)
    except ImageShapeError as error:
      parser.error(str(error))
  if flags.check and torch is None:
    parser.error("--check needs torch (pip install torch)")
  if flags.profile_torch and (torch is None or flags.skip_torch):
    parser.error("--profile-torch needs torch (pip install torch), and not --skip-torch")
  if flags.convolutions and (torch is None or flags.skip_torch or flags.dtype != "float32"):
    parser.error("--convolutions times float32 in both frameworks: it needs torch (pip install "
                 "torch), and neither --skip-torch nor --dtype bfloat16")  # fmt: skip
  return flags


def main():
  flags = parse_flags()
  print(header(), flush=True)
  if flags.check:
    for size in flags.sizes:
      check_twin(size, flags.image_shape)
    return

  run_torch = not flags.skip_torch and torch is not None
  if run_torch:
    # Cheap at the tiny size, and the timings below mean nothing if the twin differs.
    check_twin("tiny", flags.image_shape)
  config = DiffusionConfig(batch_size=flags.batch_size, compute_dtype=flags.dtype)
  images, _ = random_data(flags.steps * flags.batch_size, flags.image_shape)
  print(
    f"DDPM U-Net, {'x'.join(map(str, flags.image_shape))} images, batch {flags.batch_size}, "
    f"clip {config.grad_clip} + Adam lr {config.learning_rate:g} (warm-up "
    f"{config.warmup_steps}) + EMA {config.ema_decay}, T {config.num_timesteps} "
    f"{config.schedule}, {config.compute_dtype}, one run, {flags.steps} steps per epoch",
    flush=True,
  )
  if run_torch:
    device = torch_device(torch)

  first_labels = {"jaxdiff": "compile+first epoch", "pytorch": "warm-up epoch"}
  for size in flags.sizes:
    size_config = dataclasses.replace(config, model_size=size)
    epochs = {}
    epochs["jaxdiff"], initial = jaxdiff_epochs(images, size_config)
    if run_torch:
      epochs["pytorch"] = torch_epochs(images, size_config, flags.steps, initial, device)
    rates = {
      name: report_rate(
        f"{name} ({size})", flags.batch_size, flags.steps, timings, first, first_labels[name], 1
      )
      for name, (first, timings) in alternate(epochs, flags.repeats).items()
    }
    if flags.profile_torch:
      print_torch_profile(size, epochs["pytorch"], flags.steps)
    if flags.convolutions:
      print_convolutions(size, flags.image_shape, flags.batch_size, flags.repeats, device)
    # Kept as the last line of each size either way, so tools reading it always find it.
    if run_torch:
      print(
        f"ratio jaxdiff/pytorch ({size}): {rates['jaxdiff'] / rates['pytorch']:.2f}", flush=True
      )
    else:
      why = "--skip-torch" if flags.skip_torch else "torch is not installed; pip install torch"
      print(f"pytorch ({size}): skipped ({why})")
      print(f"ratio jaxdiff/pytorch ({size}): n/a", flush=True)


if __name__ == "__main__":
  main()
