"""Training a first DDPM on MNIST on the fit loop, and showing what it learnt.

Training is the library's (:func:`jaxdiff.loop.fit`): data resident on the devices,
jitted and data-parallel steps, orbax checkpoints, resume, and the parameter EMA kept in
the train state. This module adds what is particular to the experiment: the optimizer
chain (Adam with warm-up and gradient clipping, optionally Langevin noise), sampling with
the EMA parameters, the variational bound in bits/dim on held-out images and the
sample-quality scores.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import ddpm, environment, files, langevin, parallel, sample_quality, train
from jaxdiff.data import DataError, Dataset, load_dataset
from jaxdiff.experiments.ddpm_mnist import report
from jaxdiff.experiments.ddpm_mnist.config import NUM_CLASSES, DDPMConfig
from jaxdiff.models.unet import UNET_SIZES
from jaxdiff.policy import ExecutionPolicy


class ImageShapeError(DataError, ValueError):
  """Images the U-Net cannot take (sizes must halve evenly at every downsampling)."""


class Stream(enum.IntEnum):
  """The run's named key streams, ``fold_in(root, stream)``; fixed, as each fixes a result."""

  PARAMS = 1  # parameters, data order and the loss's noise
  LANGEVIN_NOISE = 2
  SAMPLES = 3
  TRAJECTORY = 4
  BITS_PER_DIM = 5
  FEATURE_CLASSIFIER = 6


def stream_key(config: DDPMConfig, stream: Stream) -> jax.Array:
  return jax.random.fold_in(jax.random.key(config.seed), int(stream))


class Setup(NamedTuple):
  """What a run derives from its configuration, built once: schedule, model, mesh, policy."""

  schedule: ddpm.NoiseSchedule
  model: nn.Module
  mesh: jax.sharding.Mesh
  policy: ExecutionPolicy


def make_setup(config: DDPMConfig, **policy_options: Any) -> Setup:
  """The run's :class:`Setup` over every device; ``policy_options`` (``ExecutionPolicy.for_mesh``'s
  ``loop``, ``runs_per_call``, ``scan_unroll``) replace the platform's defaults."""
  mesh = parallel.make_mesh()
  schedule = ddpm.make_schedule(config.schedule, config.num_timesteps)
  # The U-Net's plain convolutions.
  policy = ExecutionPolicy.for_mesh(mesh, convolution="lax", **policy_options)
  return Setup(schedule, config.make_model(), mesh, policy)


def ddpm_optimizer(config: DDPMConfig) -> Callable[..., optax.GradientTransformation]:
  """An optax factory for the engine: ``factory(learning_rate, diffusion, key)``.

  Clip, Adam under a warm-up schedule, and Langevin noise when ``diffusion > 0`` (the same
  schedule as Adam's step).
  """

  def factory(learning_rate, diffusion, key):
    schedule = optax.linear_schedule(0.0, learning_rate, config.warmup_steps)
    parts = [optax.clip_by_global_norm(config.grad_clip), optax.adam(schedule)]
    if config.langevin_diffusion > 0:
      parts.append(langevin.add_langevin_noise(key, schedule, diffusion))
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


class LabelError(DataError, ValueError):
  """Labels a class-conditional run cannot learn: outside ``[0, NUM_CLASSES)``."""


def check_labels(data: Dataset) -> None:
  """Raises LabelError unless every training label is a digit, as ``--conditional`` needs."""
  labels = np.asarray(data.y_train)
  if labels.min() < 0 or labels.max() >= NUM_CLASSES:
    raise LabelError(
      f"--conditional needs labels in [0, {NUM_CLASSES}); {data.label} has labels from "
      f"{labels.min()} to {labels.max()}"
    )


def make_trainer(
  config: DDPMConfig, setup: Setup, image_shape: tuple[int, ...]
) -> tuple[train.Trainer, train.TrainState]:
  """The engine for one DDPM run over the setup's mesh, and the run's initial state.

  A ``config.conditional`` run's task reads the batches' ``"label"`` too.

  Raises:
    ImageShapeError: the U-Net cannot take images of ``image_shape``.
  """
  check_image_shape(image_shape, config.model_size)
  conditional = {"num_classes": NUM_CLASSES, "label_dropout": config.label_dropout}
  task = ddpm.ddpm_task(setup.model, setup.schedule, image_shape, config.prediction,
                        config.loss_weighting, config.min_snr_gamma,
                        **(conditional if config.conditional else {}))  # fmt: skip
  trainer = train.Trainer(task, ddpm_optimizer(config), setup.mesh, config.batch_size,
                          setup.policy, ema_decay=config.ema_decay)  # fmt: skip
  state = trainer.init(
    stream_key(config, Stream.PARAMS)[None],
    learning_rate=jnp.asarray([config.learning_rate], jnp.float32),
    diffusion=jnp.asarray([config.langevin_diffusion], jnp.float32),
    key=stream_key(config, Stream.LANGEVIN_NOISE)[None],
  )
  return trainer, state


def train_ddpm(
  config: DDPMConfig,
  setup: Setup,
  data: Dataset,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  log: Callable[[str], None] = print,
) -> tuple[Any, dict[str, Any]]:
  """Trains the DDPM; returns the EMA parameters (on the host) and the training history.

  Trains ``config.steps`` steps, or for ``config.train_minutes`` of wall time instead.
  ``history["loss"]`` has every step's loss, ``history["calls"]`` the engine's calls
  (:class:`jaxdiff.train.Call`: steps, seconds; the first includes compilation).

  Raises:
    jaxdiff.checkpoint.CheckpointsExistError: not ``resume``, and ``out_dir`` holds checkpoints.
  """
  trainer, state = make_trainer(config, setup, data.image_shape)
  arrays = {"image": data.x_train}
  if config.conditional:
    check_labels(data)
    arrays["label"] = data.y_train
  device_data = trainer.put_data(arrays)

  def record_losses(end: train.EpochEnd) -> train.HookCarry:
    return end.carry.extend("loss", (float(loss) for loss in end.metrics["loss"][:, 0]))

  timed = config.train_minutes is not None
  budget = train.Budget(steps=None if timed else config.steps,
                        time_limit_s=config.train_minutes * 60 if timed else None)  # fmt: skip
  state, carry, calls = train.fit(
    trainer, state, device_data, budget, on_epoch_end=record_losses,
    checkpointing=train.Checkpointing(Path(out_dir) / "checkpoints", resume=resume),
    reporter=train.Reporter("ddpm", quiet=quiet, log=log),
  )  # fmt: skip
  history = {"loss": carry.records.get("loss", []), "calls": calls}
  # On the host: sampling and evaluation run on one device, outside the mesh.
  return jax.device_get(jax.tree.map(lambda leaf: leaf[0], state.ema_params)), history


def sample_labels(config: DDPMConfig, num_samples: int) -> np.ndarray | None:
  """The digit each of ``num_samples`` samples is drawn from, or None for an unconditional run.

  ``config.class_labels`` (every digit by default) in turn, so each asked-for digit gets an
  equal share, within one, of the samples.
  """
  if not config.conditional:
    return None
  digits = np.asarray(config.class_labels or range(NUM_CLASSES), np.int32)
  return digits[np.arange(num_samples) % len(digits)]


def make_denoiser(
  config: DDPMConfig,
  model: nn.Module,
  schedule: ddpm.NoiseSchedule,
  params: Any,
  labels: np.ndarray | None = None,
  guidance: float = 0.0,
) -> ddpm.DenoiseFn:
  """The samplers' ``denoise_fn(x_t, t) -> ε`` from the model's ``config.prediction``.

  With ``labels`` (one per sample), classifier-free guidance towards them at weight
  ``guidance`` (:func:`jaxdiff.ddpm.guided_denoiser`), so that every sampler, the
  predictor-corrector's corrector included, follows the guided score. Without labels a
  conditional model predicts for its null label: the unconditional model.
  """
  if labels is None:
    return ddpm.denoiser(
      lambda x, t: model.apply({"params": params}, x, t), schedule, config.prediction
    )
  return ddpm.guided_denoiser(lambda x, t, y: model.apply({"params": params}, x, t, y), schedule,
                              labels, model.null_label, guidance, config.prediction)  # fmt: skip


def draw(
  config: DDPMConfig,
  denoise: ddpm.DenoiseFn,
  schedule: ddpm.NoiseSchedule,
  key: jax.Array,
  shape: tuple[int, ...],
  trajectory_at: tuple[int, ...] = (),
) -> tuple[jax.Array, jax.Array | None]:
  """One batch from ``config.sampler`` (its steps, predictor and corrector as configured).

  Returns ``(samples in [-1, 1], trajectory)``: the ancestral samplers (ddpm, pc with the ddpm
  predictor) record the samples entering the timesteps ``trajectory_at``, the others None.
  """
  ancestral = config.sampler == "ddpm" or (config.sampler == "pc" and config.pc_predictor == "ddpm")
  record = trajectory_at if ancestral else ()
  if config.sampler == "ddpm":
    drawn = ddpm.sample_ddpm(denoise, schedule, key, shape, return_trajectory_at=record)
  elif config.sampler == "pc":
    drawn = ddpm.sample_pc(
      denoise, schedule, key, shape, corrector_steps=config.corrector_steps, snr=config.snr,
      return_trajectory_at=record, predictor=config.pc_predictor, num_steps=config.sample_steps,
    )  # fmt: skip
  elif config.sampler == "ddim":
    drawn = ddpm.sample_ddim(denoise, schedule, key, shape, num_steps=config.sample_steps)
  else:
    drawn = ddpm.sample_dpm_solver(denoise, schedule, key, shape, num_steps=config.sample_steps)
  return drawn if record else (drawn, None)


class Drawn(NamedTuple):
  """What :func:`sample_and_score` drew and measured.

  Attributes:
    samples: uint8 images ``(num_samples,) + image shape``.
    labels: the digit each was drawn for, or None (unconditional).
    trajectory: the recorded ``x_t`` of an ancestral sampler, or None.
    sampling: the report's ``"sampling"`` record (sampler, seconds, count).
    quality: the report's ``"sample_quality"`` record, or None for images the MNIST classifier
      cannot judge.
  """

  samples: np.ndarray
  labels: np.ndarray | None
  trajectory: np.ndarray | None
  sampling: dict[str, Any]
  quality: dict[str, Any] | None


def output_name(stem: str, suffix: str, tag: str = "") -> str:
  """``stem.suffix``, or ``stem-tag.suffix`` for the outputs of a run sampled again (a tag
  naming the sampler), which so never replace the training report's."""
  return f"{stem}-{tag}.{suffix}" if tag else f"{stem}.{suffix}"


def sample_and_score(
  config: DDPMConfig,
  setup: Setup,
  data: Dataset,
  ema: Any,
  out: Path,
  *,
  trajectory_at: tuple[int, ...] = (),
  tag: str = "",
) -> Drawn:
  """Samples ``config.num_samples`` images from the EMA parameters, scores them and draws them.

  With 28x28x1 images the MNIST classifier of :mod:`jaxdiff.sample_quality` scores them against
  the second half of the test set (the first half's real digits give the floor); a conditional
  run's samples are also checked against the digit each was drawn for
  (:func:`jaxdiff.sample_quality.evaluate_conditional_samples`). ``config.sampler_table`` adds
  the sampler table and ``config.guidance_scales`` the guidance sweep, each from the same
  parameters and key. Writes ``samples.png``, for a conditional run ``samples_by_class.png``,
  and with them ``samplers.png`` and ``guidance.png``, each name carrying ``tag``
  (:func:`output_name`).
  """
  schedule = setup.schedule
  labels = sample_labels(config, config.num_samples)
  denoise = make_denoiser(config, setup.model, schedule, ema, labels, config.guidance)
  shape = (config.num_samples,) + data.image_shape
  options = dict(setup.policy.compiler_options)
  sampling_started = time.perf_counter()
  samples, trajectory = jax.jit(
    lambda key: draw(config, denoise, schedule, key, shape, trajectory_at),
    compiler_options=options,
  )(stream_key(config, Stream.SAMPLES))
  samples = np.asarray(jax.block_until_ready(samples))
  sampling = {"sampler": config.sampler, "seconds": time.perf_counter() - sampling_started,
              "num_samples": config.num_samples}  # fmt: skip
  samples_uint8 = ddpm.to_uint8(samples)
  report.plot_samples(samples_uint8, out / output_name("samples", "png", tag))
  if labels is not None:
    report.plot_samples_by_class(samples_uint8, labels,
                                 out / output_name("samples_by_class", "png", tag))  # fmt: skip

  quality = None
  if data.image_shape == (28, 28, 1):
    classifier = sample_quality.train_feature_classifier(
      data, stream_key(config, Stream.FEATURE_CLASSIFIER), mesh=setup.mesh, policy=setup.policy
    )
    half = len(data.x_test) // 2
    reference, reference_labels = data.x_test[half:], data.y_test[half:]

    def score(images, asked):
      if asked is None:
        return sample_quality.evaluate_samples(classifier, images, reference)
      return sample_quality.evaluate_conditional_samples(classifier, images, asked, reference,
                                                         reference_labels)  # fmt: skip

    floor = min(config.num_samples, half)
    quality = {
      "samples": score(samples_uint8, labels),
      "real_test_floor": score(
        data.x_test[:floor], None if labels is None else data.y_test[:floor]
      ),
    }
    if config.sampler_table:
      quality["sampler_table"], previews = _sampler_table(
        config, denoise, schedule, shape, options, lambda images: score(images, labels)
      )
      report.plot_sampler_previews(quality["sampler_table"], previews,
                                   out / output_name("samplers", "png", tag))  # fmt: skip
    if config.guidance_scales:
      quality["guidance_sweep"] = _guidance_sweep(
        config, setup, ema, labels, shape, lambda images: score(images, labels)
      )
      report.plot_guidance_tradeoff(quality["guidance_sweep"],
                                    out / output_name("guidance", "png", tag))  # fmt: skip
  return Drawn(samples_uint8, labels, None if trajectory is None else np.asarray(trajectory),
               sampling, quality)  # fmt: skip


def run_experiment(
  config: DDPMConfig,
  data_source: str,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  summaries: bool = True,
) -> dict[str, Any]:
  """Trains, samples, scores and writes every output to ``out_dir``.

  Writes ``samples.png``, ``loss.png``, ``denoise.png``, ``report.json`` and
  ``report.md`` (atomically) beside the checkpoints, and the figures of
  :func:`sample_and_score`.
  """
  del summaries  # not written yet by this experiment (issue 35)
  started = time.perf_counter()
  data = load_dataset(data_source, name="mnist" if data_source == "tfds" else None)
  check_image_shape(data.image_shape, config.model_size)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  setup = make_setup(config)
  ema, history = train_ddpm(config, setup, data, out, resume=resume, quiet=quiet)
  schedule = setup.schedule

  trajectory_steps = _trajectory_timesteps(config.num_timesteps)
  drawn = sample_and_score(config, setup, data, ema, out, trajectory_at=trajectory_steps)
  trajectory = drawn.trajectory
  if trajectory is None:  # a sampler that records none: one ancestral draw for the figure
    labels = sample_labels(config, 1)
    one = make_denoiser(config, setup.model, schedule, ema, labels, config.guidance)
    _, trajectory = jax.jit(
      lambda key: ddpm.sample_ddpm(
        one, schedule, key, (1,) + data.image_shape, return_trajectory_at=trajectory_steps
      ),  # fmt: skip
      compiler_options=dict(setup.policy.compiler_options),
    )(stream_key(config, Stream.TRAJECTORY))

  held_out = data.x_test[: config.eval_images]
  # A conditional model's bound is its unconditional one, the null label's: comparable with an
  # unconditional model's.
  unlabelled = make_denoiser(config, setup.model, schedule, ema)
  bpd = ddpm.bits_per_dim(unlabelled, schedule, ddpm.to_unit_range(held_out),
                          stream_key(config, Stream.BITS_PER_DIM),
                          num_timesteps_sampled=config.bpd_timesteps)  # fmt: skip
  bpd = {name: float(np.mean(value)) for name, value in bpd.items()}

  report.plot_loss(history["loss"], out / "loss.png")
  report.plot_denoising(np.asarray(trajectory), trajectory_steps, out / "denoise.png")
  calls = [(call.steps, call.seconds) for call in history["calls"]]
  timed = calls[1:] or calls  # leave out compilation when possible
  timed_steps, timed_seconds = (sum(column) for column in zip(*timed))
  result = {
    "config": dataclasses.asdict(config),
    "data": data.source,
    "data_label": data.label,
    "environment": environment.describe_run(started),
    "train": {
      "steps": len(history["loss"]),
      "final_loss": float(np.mean(history["loss"][-100:])) if history["loss"] else None,
      "training_seconds": sum(seconds for _, seconds in calls),
      "images_per_second": config.batch_size * timed_steps / timed_seconds,
      "throughput_includes_compilation": len(calls) == 1,
    },
    "test_bits_per_dim": bpd,
    "sampling": drawn.sampling,
    "sample_quality": drawn.quality,
  }
  files.write_json(out / "report.json", result)
  files.write_text(out / "report.md", report.render_report(result))
  return result


# (sampler, DDIM steps, corrector steps, snr) of the sampler table's rows: a PC row with DDIM
# steps has the DDIM predictor, one without the ancestral predictor over all T levels. The PC
# rows use the DDIM predictor: with the ancestral one each row would cost (1 + M)·T model
# evaluations, two to four times the DDPM row, for a table that must fit a CPU session. The
# last rows go past the default (M = 2, snr 0.24), up to which the confident share rose with
# both (RESULTS.md, "The full budget").
SAMPLER_TABLE = (
  ("ddpm", None, 0, None),
  ("ddim", 25, 0, None),
  ("ddim", 50, 0, None),
  ("ddim", 100, 0, None),
  ("pc", 100, 1, 0.08),
  ("pc", 100, 1, 0.16),
  ("pc", 100, 2, 0.16),
  ("pc", 100, 2, 0.24),
  ("pc", 100, 2, 0.32),
  ("pc", 100, 3, 0.16),
  ("pc", 100, 3, 0.24),
)


# Images of each sampler table row shown in samplers.png.
PREVIEW_IMAGES = 16


def _sampler_table(
  config, denoise, schedule, shape, options, score
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
  """Every row of :data:`SAMPLER_TABLE` sampled from the same parameters and key, scored.

  Returns the rows and each row's first :data:`PREVIEW_IMAGES` images.
  """
  rows, previews = [], []
  for sampler, ddim_steps, corrector_steps, snr in SAMPLER_TABLE:
    if sampler == "ddim" and ddim_steps > config.num_timesteps:
      continue
    if ddim_steps is not None:  # a PC row's DDIM predictor takes every step of a short T
      ddim_steps = min(ddim_steps, config.num_timesteps)
    levels = config.num_timesteps if ddim_steps is None else ddim_steps
    row_config = dataclasses.replace(
      config, sampler=sampler, sample_steps=levels, corrector_steps=corrector_steps,
      snr=snr or config.snr, pc_predictor="ddpm" if ddim_steps is None else "ddim",
    )  # fmt: skip
    sample = jax.jit(lambda key, row=row_config: draw(row, denoise, schedule, key, shape)[0],
                     compiler_options=options)  # fmt: skip
    images, seconds = _timed(sample, stream_key(config, Stream.SAMPLES))
    previews.append(images[:PREVIEW_IMAGES])
    scores = score(images)
    shares = np.asarray(scores["class_histogram"]) / len(images)
    rows.append({
      "sampler": sampler, "ddim_steps": ddim_steps, "corrector_steps": corrector_steps,
      "snr": snr, "model_evaluations": levels * (1 + corrector_steps), "seconds": seconds,
      "classifier_fd": scores["classifier_fd"], "confident_share": scores["confident_share"],
      "class_share_range": float(shares.max() - shares.min()),
      "rarest_class_share": float(shares.min()),
      **({"class_accuracy": scores["class_accuracy"]} if "class_accuracy" in scores else {}),
    })  # fmt: skip
  return rows, previews


def _guidance_sweep(config, setup, ema, labels, shape, score) -> list[dict[str, Any]]:
  """The configured sampler at each of ``config.guidance_scales``, from the same parameters and
  key (so the same initial noise), each sample set scored."""
  rows = []
  for guidance in config.guidance_scales:
    denoise = make_denoiser(config, setup.model, setup.schedule, ema, labels, guidance)
    sample = jax.jit(lambda key, d=denoise: draw(config, d, setup.schedule, key, shape)[0],
                     compiler_options=dict(setup.policy.compiler_options))  # fmt: skip
    images, seconds = _timed(sample, stream_key(config, Stream.SAMPLES))
    scores = score(images)
    rows.append({
      "guidance": guidance, "seconds": seconds, "classifier_fd": scores["classifier_fd"],
      "class_accuracy": scores["class_accuracy"], "confident_share": scores["confident_share"],
      "confident_accurate_share": scores["confident_accurate_share"],
      "per_class": scores["per_class"],
    })  # fmt: skip
  return rows


def _timed(sample: Callable[[jax.Array], jax.Array], key: jax.Array) -> tuple[np.ndarray, float]:
  """``sample(key)`` as uint8 images, and the seconds it took, compiled beforehand so that they
  are sampling's only."""
  sample.lower(key).compile()
  started = time.perf_counter()
  images = ddpm.to_uint8(jax.block_until_ready(sample(key)))
  return np.asarray(images), time.perf_counter() - started


def _trajectory_timesteps(num_timesteps: int) -> tuple[int, ...]:
  fractions = (1.0, 0.8, 0.6, 0.4, 0.25, 0.1, 0.05, 0.0)
  return tuple(sorted({round(f * (num_timesteps - 1)) for f in fractions}, reverse=True))
