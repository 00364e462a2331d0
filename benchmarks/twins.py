"""The PyTorch twins of jaxdiff's models and training loops: the one module that imports torch.

* :class:`TorchSimpleCNN` and :func:`cnn_epochs`: the seed article's LeNet-style CIFAR CNN
  and its loop (zero_grad, loss, backward, step), as ``cnn_throughput.py`` times it;
* :class:`TorchUNet` and :func:`ddpm_epochs`: ``jaxdiff.models.unet.UNet`` mirrored layer by
  layer, NCHW, loaded with the Flax parameters (:func:`load_flax_params`,
  checked by :func:`check_unet_twin`), and the DDPM experiment's training step;
* :func:`print_profile` (``torch.profiler``) and :func:`convolution_call` (one ``conv2d``
  with its gradients), for the DDPM scripts.

Each twin runs where JAX runs (:func:`torch_device`): on CUDA, with the data already on the
GPU, when JAX's device is a GPU, else on the CPU. Its per-step work is the engine's: a random
permutation per epoch, a gather of uint8 rows, and the mapping of the pixels inside the step.
Scripts load this module through ``common.import_twins``, so that they still run their JAX half
where torch is not installed; it imports nothing else of ``benchmarks``.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.profiler import ProfilerActivity, profile

from jaxdiff import ddpm
from jaxdiff.models.unet import GroupNorm, UNet, make_unet

# What the benchmarks' header lists beside the library's versions (``common.header``).
PACKAGES = ("torch",)
GROUP_NORM_EPSILON = GroupNorm.epsilon  # the U-Net's; PyTorch's default is 1e-5
CHECK_TOLERANCE = 1e-4  # of the output scale


def torch_device():
  """Where the twins run, printed with torch's version and threads: CUDA when JAX runs on a
  GPU, else the CPU.

  On CUDA, float32 matrix products are allowed TF32, as JAX's default precision does on
  the GPU (PyTorch's own default already lets cuDNN convolutions use it).
  """
  if jax.default_backend() != "gpu":
    device = torch.device("cpu")
  elif not torch.cuda.is_available():
    raise SystemExit("JAX runs on a GPU but this torch has no CUDA: install a CUDA build of torch")
  else:
    torch.set_float32_matmul_precision("high")
    device = torch.device("cuda")
  print(f"pytorch {torch.__version__} on {device}, threads: {torch.get_num_threads()}", flush=True)
  return device


def synchronize(device) -> None:
  """Waits for the twin's queued GPU work, so that host clocks time it."""
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def device_images(images, device):
  """NHWC uint8 host images as an NCHW uint8 tensor on ``device``: stored as uint8 like the
  engine's device copy, so that both frameworks pay for the gather and the normalization."""
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


# ----------------------------------------------------------------------------- the LeNet twin


class TorchSimpleCNN(nn.Module):
  """jaxdiff.models.SimpleCNN in PyTorch, as the seed article wrote it."""

  def __init__(self):
    super().__init__()
    self.features = nn.Sequential(
      nn.Conv2d(3, 6, 5),
      nn.ReLU(),
      nn.MaxPool2d(2),
      nn.Conv2d(6, 16, 5),
      nn.ReLU(),
      nn.MaxPool2d(2),
    )
    self.classifier = nn.Sequential(
      nn.Linear(400, 120),
      nn.ReLU(),
      nn.Linear(120, 84),
      nn.ReLU(),
      nn.Linear(84, 10),
    )

  def forward(self, x):
    return self.classifier(torch.flatten(self.features(x), 1))


def cnn_epochs(images, labels, batch_size, steps, device):
  """A function training the CNN twin (SGD, momentum 0.9, lr 1e-3) one epoch per call and
  returning its seconds."""
  torch.manual_seed(0)
  x_all = device_images(images, device)
  y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
  net = TorchSimpleCNN().to(device)
  criterion = nn.CrossEntropyLoss()
  optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

  def epoch_seconds():
    started = time.perf_counter()
    order = torch.randperm(len(x_all), device=device)
    for step in range(steps):
      batch = order[step * batch_size : (step + 1) * batch_size]
      x = (x_all[batch].float() / 255 - 0.5) / 0.5
      y = y_all[batch]
      optimizer.zero_grad()
      loss = criterion(net(x), y)
      loss.backward()
      optimizer.step()
    synchronize(device)
    return time.perf_counter() - started

  return epoch_seconds


# ----------------------------------------------------------------------------- the U-Net twin


def timestep_embedding(t, dim, max_period=10_000.0):
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
class TorchResBlock(nn.Module):
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


class TorchAttentionBlock(nn.Module):
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


class TorchUNet(nn.Module):
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
    time = layers["time_in"](timestep_embedding(t, self.base_channels))
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


def check_unet_twin(size, image_shape, batch=4):
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


def ddpm_epochs(images, config, steps, initial_params, device):
  """A function training the U-Net twin one epoch per call and returning its seconds.

  The DDPM experiment's step for ``config`` (a ``DDPMConfig``), from the Flax parameters
  ``initial_params``: t ~ U{0, ..., T - 1} and Gaussian noise, q_sample with the same
  schedule, the noise-prediction MSE, backward, clipping, Adam with the same warm-up, and the
  EMA update; ``compute_dtype="bfloat16"`` runs the U-Net under ``torch.autocast`` (its
  GroupNorms and the loss stay float32 there, as jaxdiff's statistics do).
  """
  torch.manual_seed(config.seed)
  image_shape = images.shape[1:]
  x_all = device_images(images, device)
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
    synchronize(device)
    return time.perf_counter() - started

  return epoch_seconds


def print_profile(label, epoch_seconds, steps, top=12):
  """Trains a twin one more epoch (``epoch_seconds``, of ``steps`` steps) under
  ``torch.profiler``; prints its ``top`` costliest ops per step.

  The ranking is by self CPU time, which on CUDA is the time spent launching kernels.
  """
  with profile(activities=[ProfilerActivity.CPU]) as profiler:
    epoch_seconds()
  events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
  total = sum(event.self_cpu_time_total for event in events)
  print(f"pytorch profile ({label}): {total / steps / 1000:.1f} ms of self CPU time per step; top ops:")  # fmt: skip
  for event in events[:top]:
    print(f"  {event.self_cpu_time_total / steps / 1000:8.2f} ms {event.count / steps:6.1f} calls  {event.key}")  # fmt: skip


def convolution_call(conv, device):
  """A function making one call of PyTorch's ``conv2d`` (NCHW, on ``device``) with its
  gradients, as the twin's step computes ``conv`` (a ``ddpm_convolutions.Convolution``), and
  waiting for it: ``ddpm_convolutions.jax_convolution_call``'s twin."""
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
    synchronize(device)

  return call
