"""Training a first DDPM on MNIST with the shared engine, and showing what it learnt.

Training is the engine's (``jaxdiff.train``): data resident on the devices,
jitted and data-parallel steps, orbax checkpoints, resume. This module adds
what is particular to diffusion: the optimizer chain (Adam with warm-up and
gradient clipping, optionally Langevin noise, and an EMA of the parameters),
sampling with the EMA parameters, the variational bound in bits/dim on
held-out images, sample-quality scores and the figures.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxdiff import ddpm, langevin, parallel, report, sample_quality, train
from jaxdiff.data import DataError, Dataset, load_dataset
from jaxdiff.models import cpu_ops
from jaxdiff.models.unet import UNET_SIZES, UNet, make_unet

SAMPLERS = ("ddpm", "ddim")
# bfloat16 halves the activations' bytes and runs on GPU/TPU matrix units; on a CPU it is slower.
COMPUTE_DTYPES = ("float32", "bfloat16")


class ImageShapeError(DataError, ValueError):
  """Images the U-Net cannot take (sizes must halve evenly at every downsampling)."""


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """A DDPM training run.

  Attributes:
    steps: optimizer steps.
    batch_size: global batch size.
    schedule: ``linear`` (Ho et al.) or ``cosine`` (Nichol & Dhariwal).
    num_timesteps: T of the forward process.
    sampler: ``ddpm`` (ancestral) or ``ddim`` (η = 0).
    sample_steps: DDIM steps (DDPM always takes T).
    model_size: a key of ``UNET_SIZES``.
    compute_dtype: the U-Net's computation dtype, one of :data:`COMPUTE_DTYPES`;
      parameters, optimizer state and the loss stay float32 either way.
    learning_rate: Adam's peak learning rate.
    warmup_steps: linear warm-up of the learning rate.
    grad_clip: global-norm gradient clipping.
    ema_decay: decay of the parameter EMA used for sampling and evaluation;
      0.995 (a half-life of about 140 steps) suits CPU-sized runs of a few
      thousand steps, the paper's 0.9999 runs of hundreds of thousands.
    langevin_diffusion: D of Langevin noise added after Adam (0: off).
    num_samples: samples drawn for the figures and the scores.
    eval_images: held-out test images for bits/dim.
    bpd_timesteps: timesteps sampled per image for the bound (None: all T).
    seed: the root of every key.
  """

  steps: int = 2000
  batch_size: int = 128
  schedule: str = "linear"
  num_timesteps: int = 1000
  sampler: str = "ddpm"
  sample_steps: int = 100
  model_size: str = "small"
  compute_dtype: str = "float32"
  learning_rate: float = 2e-4
  warmup_steps: int = 200
  grad_clip: float = 1.0
  ema_decay: float = 0.995
  langevin_diffusion: float = 0.0
  num_samples: int = 256
  eval_images: int = 256
  bpd_timesteps: int | None = 100
  seed: int = 0

  def __post_init__(self):
    for name in ("steps", "batch_size", "num_timesteps", "sample_steps", "num_samples",
                 "eval_images"):  # fmt: skip
      if getattr(self, name) <= 0:
        raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
    if self.sampler not in SAMPLERS:
      raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if self.model_size not in UNET_SIZES:
      raise ValueError(
        f"unknown model size {self.model_size!r}; choose one of {', '.join(UNET_SIZES)}"
      )
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(
        f"unknown compute dtype {self.compute_dtype!r}; choose one of {', '.join(COMPUTE_DTYPES)}"
      )
    ddpm.make_schedule(self.schedule, self.num_timesteps)  # raises on an unknown name
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"lr must be positive, got {self.learning_rate}")
    if not (math.isfinite(self.langevin_diffusion) and self.langevin_diffusion >= 0):
      raise ValueError(f"langevin-diffusion must be >= 0, got {self.langevin_diffusion}")
    if not 0 <= self.ema_decay < 1:
      raise ValueError(f"ema-decay must be in [0, 1), got {self.ema_decay}")

  def make_model(self) -> UNet:
    """The U-Net of ``model_size``, computing in ``compute_dtype``."""
    return make_unet(self.model_size, dtype=jnp.dtype(self.compute_dtype))


def diffusion_optimizer(config: DiffusionConfig):
  """An optax factory for the engine: ``factory(learning_rate, diffusion, key)``.

  Clip, Adam under a warm-up schedule, Langevin noise when ``diffusion > 0``
  (the same schedule as Adam's step), and last the parameter EMA.
  """

  def factory(learning_rate, diffusion, key):
    schedule = optax.linear_schedule(0.0, learning_rate, config.warmup_steps)
    parts = [optax.clip_by_global_norm(config.grad_clip), optax.adam(schedule)]
    if config.langevin_diffusion > 0:
      parts.append(langevin.add_langevin_noise(key, schedule, diffusion))
    parts.append(ddpm.track_params_ema(config.ema_decay))
    return optax.chain(*parts)

  return factory


def check_image_shape(image_shape: tuple[int, ...], model_size: str) -> None:
  """Raises ImageShapeError unless the U-Net's downsamplings divide the image size."""
  factor = 2 ** (len(UNET_SIZES[model_size]["channel_multipliers"]) - 1)
  height, width, channels = image_shape
  if height % factor or width % factor or channels not in (1, 3):
    raise ImageShapeError(
      f"images of shape {image_shape} do not fit the {model_size!r} U-Net: height and width "
      f"must be multiples of {factor} and channels 1 or 3 (MNIST's 28x28x1 and CIFAR's "
      "32x32x3 both fit)"
    )


def make_trainer(
  config: DiffusionConfig, image_shape: tuple[int, ...]
) -> tuple[train.Trainer, train.TrainState]:
  """The engine for one DDPM run over all local devices, and the run's initial state.

  Raises:
    ImageShapeError: the U-Net cannot take images of ``image_shape``.
  """
  check_image_shape(image_shape, config.model_size)
  schedule = ddpm.make_schedule(config.schedule, config.num_timesteps)
  task = ddpm.diffusion_task(config.make_model(), schedule, image_shape)
  trainer = train.Trainer(task, diffusion_optimizer(config), mesh=parallel.make_mesh(),
                          batch_size=config.batch_size)  # fmt: skip
  root = jax.random.key(config.seed)
  state = trainer.init(
    jax.random.fold_in(root, 1)[None],
    learning_rate=jnp.asarray([config.learning_rate], jnp.float32),
    diffusion=jnp.asarray([config.langevin_diffusion], jnp.float32),
    key=jax.random.fold_in(root, 2)[None],
  )
  return trainer, state


def train_diffusion(
  config: DiffusionConfig,
  data: Dataset,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  log=print,
) -> tuple[Any, dict[str, Any]]:
  """Trains the DDPM; returns the EMA parameters and the training history.

  Raises:
    jaxdiff.train.CheckpointsExistError: not ``resume``, and ``out_dir`` holds checkpoints.
  """
  if not resume:
    train.check_no_checkpoints(Path(out_dir) / "checkpoints")
  trainer, state = make_trainer(config, data.image_shape)
  # Per call of the engine: (steps, seconds); the first includes compilation.
  history: dict[str, Any] = {"loss": [], "epochs": []}
  checkpoints = train.Checkpoints(Path(out_dir) / "checkpoints")
  done = 0
  if resume and checkpoints.latest_epoch() is not None:
    state, _, history = checkpoints.restore(checkpoints.latest_epoch(), state, {})
    done = int(state.step[0])
    log(f"resumed after step {done}")
  device_data = trainer.put_data({"image": data.x_train})
  steps_per_epoch = trainer.steps_per_epoch(device_data)
  bar = tqdm(total=config.steps, initial=done, desc="ddpm", disable=quiet, unit="step")
  while done < config.steps:
    epoch, start_step = divmod(done, steps_per_epoch)
    started = time.perf_counter()
    state, metrics = trainer.train_epoch(
      state, device_data, epoch, on_steps=lambda count, _: bar.update(count),
      max_steps=config.steps - done, start_step=start_step,
    )  # fmt: skip
    jax.block_until_ready(state)
    history["epochs"].append((len(metrics["loss"]), time.perf_counter() - started))
    history["loss"] += [float(loss) for loss in metrics["loss"][:, 0]]
    done = int(state.step[0])
    bar.set_postfix(loss=f"{np.mean(history['loss'][-50:]):.4f}")
    if int(state.diverged_at[0]) >= 0:
      log(f"training diverged at step {int(state.diverged_at[0])}: non-finite loss; stopping")
      break
    checkpoints.save(done, state, {}, history)
  bar.close()
  checkpoints.close()
  # On the host: sampling and evaluation run on one device, outside the mesh.
  ema = jax.device_get(jax.tree.map(lambda leaf: leaf[0], ddpm.find_params_ema(state.opt_state)))
  return ema, history


def run_experiment(
  config: DiffusionConfig,
  data_source: str,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
) -> dict[str, Any]:
  """Trains, samples, scores and writes every output to ``out_dir``.

  Writes ``samples.png``, ``loss.png``, ``denoise.png``, ``report.json`` and
  ``report.md`` (atomically) beside the checkpoints.
  """
  started = time.perf_counter()
  data = load_dataset(data_source, name="mnist" if data_source == "tfds" else None)
  check_image_shape(data.image_shape, config.model_size)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  ema, history = train_diffusion(config, data, out, resume=resume, quiet=quiet)
  schedule = ddpm.make_schedule(config.schedule, config.num_timesteps)
  model = config.make_model()

  def denoise(x, t):
    return model.apply({"params": ema}, x, t)

  root = jax.random.key(config.seed)
  shape = (config.num_samples,) + data.image_shape
  sampling_started = time.perf_counter()
  trajectory_steps = _trajectory_timesteps(config.num_timesteps)
  # The samplers' convolutions, like training's, run faster on XLA:CPU's own kernels.
  options = cpu_ops.compiler_options()
  samples, trajectory = jax.jit(
    lambda key: (
      ddpm.sample_ddpm(
        denoise, schedule, key, shape, return_trajectory_at=trajectory_steps
      )  # fmt: skip
      if config.sampler == "ddpm"
      else (ddpm.sample_ddim(denoise, schedule, key, shape, num_steps=config.sample_steps), None)
    ),
    compiler_options=options,
  )(jax.random.fold_in(root, 3))
  samples = np.asarray(jax.block_until_ready(samples))
  sampling_seconds = time.perf_counter() - sampling_started
  if trajectory is None:
    _, trajectory = jax.jit(
      lambda key: ddpm.sample_ddpm(
        denoise, schedule, key, (1,) + data.image_shape, return_trajectory_at=trajectory_steps
      ),  # fmt: skip
      compiler_options=options,
    )(jax.random.fold_in(root, 4))
  samples_uint8 = ddpm.to_uint8(samples)

  held_out = data.x_test[: config.eval_images]
  bpd = ddpm.bits_per_dim(denoise, schedule, ddpm.to_unit_range(held_out), jax.random.fold_in(root, 5),
                          num_timesteps_sampled=config.bpd_timesteps)  # fmt: skip
  bpd = {name: float(np.mean(value)) for name, value in bpd.items()}

  quality = None
  if data.image_shape == (28, 28, 1):
    classifier = sample_quality.train_feature_classifier(data, jax.random.fold_in(root, 6))
    half = len(data.x_test) // 2
    reference = data.x_test[half:]
    quality = {
      "samples": sample_quality.evaluate_samples(classifier, samples_uint8, reference),
      "real_test_floor": sample_quality.evaluate_samples(
        classifier, data.x_test[: min(config.num_samples, half)], reference
      ),
    }

  plot_samples(samples_uint8, out / "samples.png")
  plot_loss(history["loss"], out / "loss.png")
  plot_denoising(np.asarray(trajectory), trajectory_steps, out / "denoise.png")
  timed = history["epochs"][1:] or history["epochs"]  # leave out compilation when possible
  timed_steps, timed_seconds = (sum(column) for column in zip(*timed))
  training_seconds = sum(seconds for _, seconds in history["epochs"])
  result = {
    "config": dataclasses.asdict(config),
    "data": data.source,
    "environment": {
      **parallel.environment(),
      "date": time.strftime("%Y-%m-%d"),
      "wall_time_s": time.perf_counter() - started,
    },  # fmt: skip
    "train": {
      "steps": len(history["loss"]),
      "final_loss": float(np.mean(history["loss"][-100:])) if history["loss"] else None,
      "training_seconds": training_seconds,
      "images_per_second": config.batch_size * timed_steps / timed_seconds,
      "throughput_includes_compilation": len(history["epochs"]) == 1,
    },
    "test_bits_per_dim": bpd,
    "sampling": {
      "sampler": config.sampler,
      "seconds": sampling_seconds,
      "num_samples": config.num_samples,
    },  # fmt: skip
    "sample_quality": quality,
  }
  report.write_json(out / "report.json", result)
  report.write_text(out / "report.md", render_report(result))
  return result


def _trajectory_timesteps(num_timesteps: int) -> tuple[int, ...]:
  fractions = (1.0, 0.8, 0.6, 0.4, 0.25, 0.1, 0.05, 0.0)
  return tuple(sorted({round(f * (num_timesteps - 1)) for f in fractions}, reverse=True))


def plot_samples(samples_uint8: np.ndarray, path: Path, columns: int = 16) -> None:
  count = min(len(samples_uint8), columns * columns)
  rows = math.ceil(count / columns)
  height, width, channels = samples_uint8.shape[1:]
  grid = np.zeros((rows * (height + 2), columns * (width + 2), channels), np.uint8)
  for index in range(count):
    row, column = divmod(index, columns)
    grid[row * (height + 2) + 1 : row * (height + 2) + 1 + height,
         column * (width + 2) + 1 : column * (width + 2) + 1 + width] = samples_uint8[index]  # fmt: skip
  plt = report.pyplot()
  fig, ax = plt.subplots(figsize=(columns * 0.6, rows * 0.6))
  ax.imshow(grid.squeeze(-1) if channels == 1 else grid, cmap="gray", interpolation="nearest")
  ax.set_axis_off()
  ax.set_title("DDPM samples (EMA parameters)")
  report.save_figure(fig, path)


def plot_loss(losses: list[float], path: Path) -> None:
  plt = report.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  steps = np.arange(1, len(losses) + 1)
  ax.plot(steps, losses, alpha=0.3, label="per step")
  window = max(1, len(losses) // 50)
  if len(losses) >= window:
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1 :], smooth, label=f"mean of {window}")
  ax.set_xlabel("step")
  ax.set_ylabel("noise-prediction MSE")
  ax.set_yscale("log")
  ax.set_title("DDPM training loss")
  ax.legend()
  report.save_figure(fig, path)


def plot_denoising(trajectory: np.ndarray, timesteps: tuple[int, ...], path: Path) -> None:
  """One row: the first sample's x_t at each recorded t, from x_T to x_0."""
  plt = report.pyplot()
  images = ddpm.to_uint8(trajectory[:, 0])
  fig, axes = plt.subplots(1, len(timesteps), figsize=(1.6 * len(timesteps), 2))
  for ax, image, t in zip(axes, images, timesteps):
    ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
    ax.set_title(f"t = {t}")
    ax.set_axis_off()
  report.save_figure(fig, path)


def render_report(result: dict[str, Any]) -> str:
  config, env, train_info = result["config"], result["environment"], result["train"]
  compiled_note = " (includes compilation)" if train_info["throughput_includes_compilation"] else ""
  lines = [
    "# A first DDPM on MNIST",
    "",
    "## Setup",
    "",
    f"- Data: {result['data']}",
    f"- Model: U-Net `{config['model_size']}` in {config.get('compute_dtype', 'float32')}; "
    f"schedule {config['schedule']}, "
    f"T = {config['num_timesteps']}; sampler {config['sampler']}"
    + (f" ({config['sample_steps']} steps)" if config["sampler"] == "ddim" else ""),
    f"- Training: {train_info['steps']} steps, batch {config['batch_size']}, Adam lr "
    f"{config['learning_rate']:g} (warm-up {config['warmup_steps']}), clip {config['grad_clip']}, "
    f"EMA {config['ema_decay']}, Langevin D {config['langevin_diffusion']:g}",
    f"- Machine: {env['device_kind']} ×{env['device_count']} ({env['platform']}), CPU "
    f"{env['cpu_model']} ({env['cpu_cores']} cores); "
    + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
    f"- Date {env['date']}; wall time {env['wall_time_s'] / 60:.1f} min",
    "",
    "## Results",
    "",
    f"- Final training loss (mean of the last 100 steps): {train_info['final_loss']:.4f}",
    f"- Throughput: {train_info['images_per_second']:.0f} training images/s{compiled_note} "
    f"({train_info['training_seconds'] / 60:.1f} min of training)",
  ]
  bpd = result["test_bits_per_dim"]
  timesteps = config["bpd_timesteps"]
  lines.append(
    f"- Test bound (negative ELBO) on {config['eval_images']} held-out images: "
    f"**{bpd['total']:.3f} bits/dim** (prior {bpd['prior']:.4f}, decoder {bpd['decoder']:.3f}, "
    f"KL terms {bpd['kl_sum']:.3f}; "
    + (
      "all T timesteps" if timesteps is None else f"estimated from {timesteps} sampled t per image"
    )
    + ")"
  )
  sampling = result["sampling"]
  lines.append(f"- Sampling {sampling['num_samples']} images took {sampling['seconds']:.1f} s")
  quality = result["sample_quality"]
  if quality:
    samples, floor = quality["samples"], quality["real_test_floor"]
    lines += [
      "",
      "## Sample quality",
      "",
      "Scores from a small MNIST classifier trained here on the real training set. The "
      "classifier FD is a Fréchet distance between its penultimate-layer features: it is "
      "**not comparable to published FIDs**.",
      "",
      "| | classifier FD | confident (p ≥ 0.9) | class histogram |",
      "|---|---|---|---|",
      f"| DDPM samples | {samples['classifier_fd']:.2f} | {samples['confident_share']:.1%} | "
      f"{samples['class_histogram']} |",
      f"| real test images (floor) | {floor['classifier_fd']:.2f} | "
      f"{floor['confident_share']:.1%} | {floor['class_histogram']} |",
    ]
  lines += ["", "![samples](samples.png)", "", "![loss](loss.png)", "", "![denoise](denoise.png)"]
  return "\n".join(lines) + "\n"
