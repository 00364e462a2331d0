"""Training a first DDPM on MNIST on the fit loop, and showing what it learnt.

Training is the library's (:func:`jaxdiff.loop.fit`): data resident on the devices,
jitted and data-parallel steps, orbax checkpoints, resume, and the parameter EMA kept in
the train state. This module adds what is particular to the experiment: the optimizer
chain (Adam with warm-up and gradient clipping, optionally Langevin noise), sampling with
the EMA parameters, the variational bound in bits/dim on held-out images and the
sample-quality scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import (
  checkpoint,
  ddpm,
  distributed,
  environment,
  files,
  langevin,
  parallel,
  sample_quality,
  train,
)
from jaxdiff import config as config_lib
from jaxdiff.checkpoint import NoCheckpointError, RunMismatchError
from jaxdiff.data import DataError, Dataset, load_dataset
from jaxdiff.experiments.ddpm_mnist import plots, report
from jaxdiff.experiments.ddpm_mnist.config import (
  MODEL_FIELDS,
  NUM_CLASSES,
  SAMPLING_FIELDS,
  TRAINING_FIELDS,
  DDPMConfig,
)
from jaxdiff.experiments.ddpm_mnist.registry import (
  PREVIEW_IMAGES,
  SAMPLER_TABLE,
  draw,
  make_denoiser,
)
from jaxdiff.models.unet import UNET_SIZES
from jaxdiff.policy import ExecutionPolicy
from jaxdiff.summaries import Summaries


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
  summaries: Summaries | None = None,
) -> tuple[Any, dict[str, Any]]:
  """Trains the DDPM; returns the EMA parameters (on the host) and the training history.

  Trains ``config.steps`` steps, or for ``config.train_minutes`` of wall time instead.
  ``history["loss"]`` has every step's loss, ``history["calls"]`` the engine's calls
  (:class:`jaxdiff.train.Call`: steps, seconds; the first includes compilation). With
  ``summaries``, the fit loop writes the training series there (``Reporter(summaries=)``).

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
    reporter=train.Reporter("ddpm", quiet=quiet, log=log, summaries=summaries),
  )  # fmt: skip
  history = {"loss": carry.records.get("loss", []), "calls": calls}
  return _host_ema(state), history


def _host_ema(state: train.TrainState) -> Any:
  """The run's EMA parameters on the host: sampling and evaluation run on one device, outside
  the mesh."""
  return jax.device_get(jax.tree.map(lambda leaf: leaf[0], state.ema_params))


#: The record of a run's configuration and image shape in its output folder, written when it
#: trains, read to sample it again (:func:`load_run`, ``--sample-only``) or to resume it.
RUN_RECORD = "config.json"


def save_run_record(config: DDPMConfig, image_shape: tuple[int, ...], out: Path) -> None:
  record = {"config": dataclasses.asdict(config), "image_shape": list(image_shape)}
  files.write_json(out / RUN_RECORD, record)


def read_run_record(out: Path) -> tuple[DDPMConfig, tuple[int, ...]]:
  """The configuration and image shape a run in ``out`` trained with.

  Raises:
    jaxdiff.checkpoint.NoCheckpointError: ``out`` holds no :data:`RUN_RECORD`.
  """
  path = Path(out) / RUN_RECORD
  if not path.is_file():
    raise NoCheckpointError(
      f"{out} holds no {RUN_RECORD}: not the output folder of a DDPM run that trained (runs "
      "record their configuration there since --sample-only exists)"
    )
  saved = json.loads(path.read_text())
  return config_lib.from_saved(DDPMConfig, saved["config"]), tuple(saved["image_shape"])


def check_same_model(run_config: DDPMConfig, config: DDPMConfig, out: Path) -> None:
  """Raises RunMismatchError unless ``config`` asks for the model the run in ``out`` trained.

  Raises:
    jaxdiff.checkpoint.RunMismatchError: a field of :data:`~.config.MODEL_FIELDS` differs.
  """
  fields = {field.name: field for field in dataclasses.fields(DDPMConfig)}
  differ = [
    f"{config_lib.flag_name(fields[name])} {getattr(run_config, name)} "
    f"(asked for: {getattr(config, name)})"
    for name in MODEL_FIELDS
    if getattr(run_config, name) != getattr(config, name)
  ]
  if differ:
    raise RunMismatchError(
      f"the run in {out} trained another model: {', '.join(differ)}; give the run's values"
    )


def latest_checkpoint_step(out: Path) -> int | None:
  """The step of the last checkpoint in ``out``/checkpoints, or None without one."""
  directory = Path(out) / "checkpoints"
  if not (directory.is_dir() and any(directory.iterdir())):
    return None
  checkpoints = checkpoint.Checkpoints(directory)
  try:
    return checkpoints.latest_step()
  finally:
    checkpoints.close()


def restore_ema(
  config: DDPMConfig, setup: Setup, image_shape: tuple[int, ...], out: Path
) -> tuple[Any, int]:
  """The EMA parameters (on the host) of the last checkpoint in ``out``/checkpoints, and its step.

  ``config`` must be the run's own (its model and its optimizer, which fix the checkpoint's
  layout).

  Raises:
    jaxdiff.checkpoint.NoCheckpointError: there is no checkpoint.
  """
  step = latest_checkpoint_step(out)
  if step is None:
    raise NoCheckpointError(f"{out} holds no checkpoint to load: train the run first")
  _, state = make_trainer(config, setup, image_shape)
  checkpoints = checkpoint.Checkpoints(Path(out) / "checkpoints")
  try:
    state, _, _ = checkpoints.restore(step, state, {})
  finally:
    checkpoints.close()
  return _host_ema(state), step


def check_resumable(config: DDPMConfig, out: Path) -> None:
  """Refuses a ``--resume`` that does not fit the run in ``out``: another model, or a finished
  run (its steps trained) with other sampling flags, which would train nothing and only replace
  its samples and report; :data:`~.config.SAMPLING_FIELDS` says which flags those are.

  Raises:
    jaxdiff.checkpoint.RunMismatchError: as above.
  """
  if not (Path(out) / RUN_RECORD).is_file():
    return  # nothing trained yet, or a run from before the record: fit decides
  run_config, _ = read_run_record(out)
  check_same_model(run_config, config, out)
  step = latest_checkpoint_step(out)
  finished = config.train_minutes is None and step is not None and step >= config.steps
  changed = [name for name in SAMPLING_FIELDS if getattr(run_config, name) != getattr(config, name)]
  if finished and changed:
    flags = ", ".join("--" + name.replace("_", "-") for name in changed)
    raise RunMismatchError(
      f"the run in {out} has trained its {step} steps, so --resume with other {flags} would "
      "only replace its samples and report: sample it with --sample-only instead (its outputs "
      "go beside the report, named after the sampler), or raise --steps to train on"
    )


class Run(NamedTuple):
  """A trained run loaded by :func:`load_run`.

  Attributes:
    config: the configuration it trained with.
    ema_params: the EMA parameters of its last checkpoint, on the host.
    image_shape: one image's shape, ``(height, width, channels)``.
  """

  config: DDPMConfig
  ema_params: Any
  image_shape: tuple[int, ...]


def load_run(out_dir: str | Path) -> Run:
  """The configuration and last EMA parameters of the run that trained into ``out_dir``.

  Raises:
    jaxdiff.checkpoint.NoCheckpointError: ``out_dir`` holds no run record or no checkpoint.
  """
  out = Path(out_dir)
  config, image_shape = read_run_record(out)
  ema, _ = restore_ema(config, make_setup(config), image_shape, out)
  return Run(config, ema, image_shape)


class Samples(NamedTuple):
  """Images drawn by :func:`sample`: uint8 ``(N, height, width, channels)``, and the digit each
  was drawn for, or None from an unconditional run."""

  images: np.ndarray
  labels: np.ndarray | None


def sample(
  run: Run,
  key: jax.Array,
  num_samples: int,
  *,
  sampler: str | None = None,
  sample_steps: int | None = None,
  guidance: float | None = None,
  class_labels: tuple[int, ...] | None = None,
) -> Samples:
  """``num_samples`` images from a loaded run, as the experiment draws them.

  Each keyword left None keeps the run's configured value; the rest (the corrector's steps and
  snr, the PC predictor) are the run's. A conditional run's samples are drawn for
  ``class_labels`` in turn (every digit by default) and guided with weight ``guidance``.

  Raises:
    jaxdiff.config.ConfigError: a value the configuration refuses (e.g. guidance for an
      unconditional run, more steps than T).
  """
  overrides = {"sampler": sampler, "sample_steps": sample_steps, "guidance": guidance,
               "class_labels": None if class_labels is None else tuple(class_labels)}  # fmt: skip
  config = dataclasses.replace(
    run.config, num_samples=num_samples,
    **{name: value for name, value in overrides.items() if value is not None},
  )  # fmt: skip
  images, labels, _ = _draw_images(config, make_setup(config), run.ema_params, key,
                                   run.image_shape)  # fmt: skip
  return Samples(images, labels)


def sample_labels(config: DDPMConfig, num_samples: int) -> np.ndarray | None:
  """The digit each of ``num_samples`` samples is drawn from, or None for an unconditional run.

  ``config.class_labels`` (every digit by default) in turn, so each asked-for digit gets an
  equal share, within one, of the samples.
  """
  if not config.conditional:
    return None
  digits = np.asarray(config.class_labels or range(NUM_CLASSES), np.int32)
  return digits[np.arange(num_samples) % len(digits)]


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


def sample_and_score(
  config: DDPMConfig,
  setup: Setup,
  data: Dataset,
  ema: Any,
  out: Path,
  *,
  trajectory_at: tuple[int, ...] = (),
  tag: str = "",
  quiet: bool = True,
) -> Drawn:
  """Samples ``config.num_samples`` images from the EMA parameters, scores them and draws them.

  With 28x28x1 images the MNIST classifier of :mod:`jaxdiff.sample_quality` scores them against
  the second half of the test set (the first half's real digits give the floor); a conditional
  run's samples are also checked against the digit each was drawn for
  (:func:`jaxdiff.sample_quality.evaluate_conditional_samples`). ``config.sampler_table`` adds
  the sampler table and ``config.guidance_scales`` the guidance sweep, each from the same
  parameters and key. Writes ``samples.png``, for a conditional run ``samples_by_class.png``,
  and with them ``samplers.png`` and ``guidance.png``, each name carrying ``tag``
  (:func:`.report.output_name`). Unless ``quiet``, each phase prints a line as it starts.
  """
  say = _progress(quiet)
  schedule = setup.schedule
  shape = (config.num_samples,) + data.image_shape
  options = dict(setup.policy.compiler_options)
  say(f"sampling {config.num_samples} images: {report.sampler_words(dataclasses.asdict(config))}")
  sampling_started = time.perf_counter()
  samples_uint8, labels, trajectory = _draw_images(
    config, setup, ema, stream_key(config, Stream.SAMPLES), data.image_shape, trajectory_at
  )
  sampling = {"sampler": config.sampler, "seconds": time.perf_counter() - sampling_started,
              "num_samples": config.num_samples}  # fmt: skip
  say(f"sampled in {sampling['seconds']:.1f} s")
  denoise = make_denoiser(config, setup.model, schedule, ema, labels, config.guidance)
  figure = functools.partial(report.output_name, suffix="png", tag=tag)
  plots.plot_samples(samples_uint8, out / figure("samples"))
  if labels is not None:
    plots.plot_samples_by_class(samples_uint8, labels, out / figure("samples_by_class"))

  quality = None
  if data.image_shape == (28, 28, 1):
    say("the MNIST classifier that scores the samples (trained once, then loaded from the cache)")
    classifier = sample_quality.train_feature_classifier(
      data, stream_key(config, Stream.FEATURE_CLASSIFIER), mesh=setup.mesh, policy=setup.policy,
      quiet=quiet,
    )  # fmt: skip
    say("scoring the samples")
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
        config, denoise, schedule, shape, options, lambda images: score(images, labels), say
      )
      plots.plot_sampler_previews(quality["sampler_table"], previews, out / figure("samplers"))
    if config.guidance_scales:
      quality["guidance_sweep"] = _guidance_sweep(
        config, setup, ema, labels, shape, lambda images: score(images, labels), say
      )
      plots.plot_guidance_tradeoff(quality["guidance_sweep"], out / figure("guidance"))
  return Drawn(samples_uint8, labels, trajectory, sampling, quality)


def _draw_images(config, setup, ema, key, image_shape, trajectory_at=()):
  """``config.num_samples`` images of ``config.sampler`` from ``key``: uint8 images, the digit
  each was drawn for (or None) and the recorded trajectory (or None), on the host."""
  labels = sample_labels(config, config.num_samples)
  denoise = make_denoiser(config, setup.model, setup.schedule, ema, labels, config.guidance)
  shape = (config.num_samples,) + tuple(image_shape)
  samples, trajectory = jax.jit(
    lambda key: draw(config, denoise, setup.schedule, key, shape, trajectory_at),
    compiler_options=dict(setup.policy.compiler_options),
  )(key)
  samples = np.asarray(jax.block_until_ready(samples))
  return ddpm.to_uint8(samples), labels, None if trajectory is None else np.asarray(trajectory)


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
  ``report.md`` (atomically) beside the checkpoints and the run record
  (:data:`RUN_RECORD`), and the figures of :func:`sample_and_score`. With
  ``config.sample_only`` trains nothing: :func:`sample_run`.

  With ``summaries``, TensorBoard summaries and their JSON lines go to ``out_dir``/summaries/ddpm:
  the training series as the fit loop writes them, then, at the last step, the bound, the
  scores and the sample grid.

  Raises:
    jaxdiff.checkpoint.CheckpointsExistError: not ``resume``, and ``out_dir`` holds checkpoints.
    jaxdiff.checkpoint.RunMismatchError: ``resume`` refused by :func:`check_resumable`.
  """
  if config.sample_only:
    return sample_run(config, data_source, out_dir, quiet=quiet, summaries=summaries)
  started = time.perf_counter()
  out = Path(out_dir)
  if resume:
    check_resumable(config, out)
  data = load_dataset(data_source, name="mnist" if data_source == "tfds" else None)
  check_image_shape(data.image_shape, config.model_size)
  out.mkdir(parents=True, exist_ok=True)
  setup = make_setup(config)
  if not resume:
    checkpoint.check_no_checkpoints(out / "checkpoints")  # before the record is replaced
  save_run_record(config, data.image_shape, out)
  say = _progress(quiet)
  with _summaries(summaries, out) as writer:
    ema, history = train_ddpm(config, setup, data, out, resume=resume, quiet=quiet,
                              summaries=writer)  # fmt: skip
    result, drawn = _evaluate_trained(config, setup, data, ema, history, out, say, quiet)
    result["environment"] = environment.describe_run(started)
    result["commands"] = _commands(config, data_source, out_dir, summaries)
    result["summaries"] = SUMMARIES_DIR if summaries else None
    if writer is not None:
      _summarize(writer, result["train"]["steps"], drawn, "samples",
                 bpd=result["test_bits_per_dim"])  # fmt: skip
  files.write_json(out / "report.json", result)
  files.write_text(out / "report.md", report.render_report(result))
  say(f"wrote {out / 'report.md'}")
  return result


def _evaluate_trained(config, setup, data, ema, history, out, say, quiet) -> tuple[dict, Drawn]:
  """A trained run's samples, bound, figures and scores: the report's records, and the draw."""
  schedule = setup.schedule
  trajectory_steps = _trajectory_timesteps(config.num_timesteps)
  drawn = sample_and_score(config, setup, data, ema, out, trajectory_at=trajectory_steps,
                           quiet=quiet)  # fmt: skip
  trajectory = drawn.trajectory
  if trajectory is None:  # a sampler that records none: one ancestral draw for the figure
    say(f"the denoising figure: one ancestral draw of {config.num_timesteps} steps")
    labels = sample_labels(config, 1)
    one = make_denoiser(config, setup.model, schedule, ema, labels, config.guidance)
    _, trajectory = jax.jit(
      lambda key: ddpm.sample_ddpm(
        one, schedule, key, (1,) + data.image_shape, return_trajectory_at=trajectory_steps
      ),
      compiler_options=dict(setup.policy.compiler_options),
    )(stream_key(config, Stream.TRAJECTORY))

  held_out = data.x_test[: config.eval_images]
  timesteps = "every" if config.bpd_timesteps is None else config.bpd_timesteps
  say(f"the test bound in bits/dim on {len(held_out)} held-out images ({timesteps} t each)")
  # A conditional model's bound is its unconditional one, the null label's: comparable with an
  # unconditional model's.
  unlabelled = make_denoiser(config, setup.model, schedule, ema)
  bpd = ddpm.bits_per_dim(unlabelled, schedule, ddpm.to_unit_range(held_out),
                          stream_key(config, Stream.BITS_PER_DIM),
                          num_timesteps_sampled=config.bpd_timesteps)  # fmt: skip
  bpd = {name: float(np.mean(value)) for name, value in bpd.items()}

  plots.plot_loss(history["loss"], out / "loss.png")
  plots.plot_denoising(np.asarray(trajectory), trajectory_steps, out / "denoise.png")
  calls = [(call.steps, call.seconds) for call in history["calls"]]
  timed = calls[1:] or calls  # leave out compilation when possible
  timed_steps, timed_seconds = (sum(column) for column in zip(*timed))
  result = {
    "config": dataclasses.asdict(config),
    "data": data.source,
    "data_label": data.label,
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
  return result, drawn


#: The experiment's command line, as its reports quote it.
SCRIPT = "experiments/ddpm_mnist.py"
#: Where a run's TensorBoard summaries go, under its output folder.
SUMMARIES_DIR = "summaries"
#: The run's name in its summaries (one sub-directory of :data:`SUMMARIES_DIR`).
SUMMARIES_RUN = "ddpm"


@contextlib.contextmanager
def _summaries(enabled: bool, out: Path):
  """The run's :class:`jaxdiff.summaries.Summaries`, closed on the way out, or None."""
  if not enabled:
    yield None
    return
  summaries = Summaries(out / SUMMARIES_DIR, [SUMMARIES_RUN])
  try:
    yield summaries
  finally:
    summaries.close()


def _summarize(summaries: Summaries, step: int, drawn: Drawn, prefix: str,
               bpd: dict[str, float] | None = None) -> None:  # fmt: skip
  """Writes the scores at ``step``: ``test/bits_per_dim``, ``<prefix>/<score>`` of the samples,
  ``<prefix>_w<w>/<score>`` of each guidance weight swept, and the sample grid as the image
  ``<prefix>``."""
  scalars = {} if bpd is None else {"test/bits_per_dim": bpd["total"]}
  quality = drawn.quality
  names = ("classifier_fd", "confident_share", "class_accuracy", "confident_accurate_share")
  if quality is not None:
    scalars.update({f"{prefix}/{name}": quality["samples"][name] for name in names
                    if name in quality["samples"]})  # fmt: skip
    for row in quality.get("guidance_sweep", []):
      scalars.update({f"{prefix}_w{row['guidance']:g}/{name}": row[name] for name in names})
  summaries.scalars(step, scalars)
  summaries.image(step, prefix, plots.sample_grid(drawn.samples))
  summaries.flush()


def _commands(
  config: DDPMConfig, data_source: str, out_dir: str | Path, summaries: bool
) -> dict[str, str]:
  """The command lines that made a run, resume it, sample it again and show its summaries, for
  its report."""
  steps = min(20, config.num_timesteps)
  again = dataclasses.replace(config, sampler="dpm_solver", sample_steps=steps, sample_only=True)
  made_by, sample_again = (
    config_lib.rerun_command(SCRIPT, run, data_source, out_dir, summaries=summaries)
    for run in (config, again)
  )
  return {
    "made_by": made_by,
    "resume": f"{made_by} --resume",
    "sample_again": sample_again,
    "tensorboard": shlex.join(["tensorboard", "--logdir", str(Path(out_dir) / SUMMARIES_DIR)]),
  }


def _progress(quiet: bool) -> Callable[[str], None]:
  """Where a run's phase lines go after training: stdout on process 0, nowhere when quiet."""
  if quiet or not distributed.is_main_process():
    return lambda line: None
  return lambda line: print(f"ddpm: {line}", flush=True)


def sample_run(
  config: DDPMConfig,
  data_source: str,
  out_dir: str | Path,
  *,
  quiet: bool = False,
  summaries: bool = True,
) -> dict[str, Any]:
  """Samples and scores a trained run again, with ``config``'s sampling flags; trains nothing.

  Loads the EMA parameters of the last checkpoint in ``out_dir``, draws and scores them as
  :func:`sample_and_score` does with ``config``'s :data:`~.config.SAMPLING_FIELDS` (the
  training fields stay the run's), and writes ``report-<tag>.json`` and ``report-<tag>.md``
  and the figures, each named with :meth:`~.config.DDPMConfig.sampler_tag`, beside the
  training report, which stays as it was; the scores and the grid also go to the run's
  summaries at the checkpoint's step, as ``samples_<tag>/...``, with ``summaries``.

  Raises:
    jaxdiff.checkpoint.NoCheckpointError: ``out_dir`` holds no run record or checkpoint.
    jaxdiff.checkpoint.RunMismatchError: ``config`` asks for another model than the run's, or
      ``data_source``'s images have another shape.
  """
  started = time.perf_counter()
  out = Path(out_dir)
  run_config, image_shape = read_run_record(out)
  check_same_model(run_config, config, out)
  config = dataclasses.replace(config, **{name: getattr(run_config, name)
                                          for name in TRAINING_FIELDS})  # fmt: skip
  data = load_dataset(data_source, name="mnist" if data_source == "tfds" else None)
  if data.image_shape != image_shape:
    raise RunMismatchError(
      f"the run in {out} trained on {image_shape} images; --data {data_source} holds "
      f"{data.image_shape} images"
    )
  setup = make_setup(config)
  ema, step = restore_ema(config, setup, image_shape, out)
  tag = config.sampler_tag()
  drawn = sample_and_score(config, setup, data, ema, out, tag=tag, quiet=quiet)
  with _summaries(summaries, out) as writer:
    if writer is not None:
      _summarize(writer, step, drawn, f"samples_{tag}")
  result = {
    "config": dataclasses.asdict(config),
    "data": data.source,
    "data_label": data.label,
    "environment": environment.describe_run(started),
    "checkpoint_step": step,
    "commands": _commands(config, data_source, out_dir, summaries),
    "summaries": SUMMARIES_DIR if summaries else None,
    "sampling": drawn.sampling,
    "sample_quality": drawn.quality,
  }
  files.write_json(out / report.output_name("report", "json", tag), result)
  markdown = report.render_sample_report(result, tag)
  path = out / report.output_name("report", "md", tag)
  files.write_text(path, markdown)
  _progress(quiet)(f"wrote {path}")
  return result


def _sampler_table(
  config, denoise, schedule, shape, options, score, say
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
  """Every row of :data:`SAMPLER_TABLE` sampled from the same parameters and key, scored.

  Returns the rows and each row's first :data:`PREVIEW_IMAGES` images.
  """
  rows, previews = [], []
  for sampler, steps, corrector_steps, snr in SAMPLER_TABLE:
    if sampler in ("ddim", "dpm_solver") and steps > config.num_timesteps:
      continue
    if steps is not None:  # a PC row's DDIM predictor takes every step of a short T
      steps = min(steps, config.num_timesteps)
    levels = config.num_timesteps if steps is None else steps
    solver = sampler == "dpm_solver"
    row = {
      "sampler": sampler, "ddim_steps": None if solver else steps,
      "solver_steps": steps if solver else None, "corrector_steps": corrector_steps,
      "snr": snr, "model_evaluations": levels * (1 + corrector_steps),
    }  # fmt: skip
    say(f"sampler table, row {len(rows) + 1}: {report.sampler_name(row)}")
    row_config = dataclasses.replace(
      config, sampler=sampler, sample_steps=levels, corrector_steps=corrector_steps,
      snr=snr or config.snr, pc_predictor="ddpm" if steps is None else "ddim",
    )  # fmt: skip
    sample = jax.jit(lambda key, row=row_config: draw(row, denoise, schedule, key, shape)[0],
                     compiler_options=options)  # fmt: skip
    images, seconds = _timed(sample, stream_key(config, Stream.SAMPLES))
    previews.append(images[:PREVIEW_IMAGES])
    scores = score(images)
    shares = np.asarray(scores["class_histogram"]) / len(images)
    rows.append({
      **row, "seconds": seconds,
      "classifier_fd": scores["classifier_fd"], "confident_share": scores["confident_share"],
      "class_share_range": float(shares.max() - shares.min()),
      "rarest_class_share": float(shares.min()),
      **({"class_accuracy": scores["class_accuracy"]} if "class_accuracy" in scores else {}),
    })  # fmt: skip
  return rows, previews


def _guidance_sweep(config, setup, ema, labels, shape, score, say) -> list[dict[str, Any]]:
  """The configured sampler at each of ``config.guidance_scales``, from the same parameters and
  key (so the same initial noise), each sample set scored."""
  rows = []
  for index, guidance in enumerate(config.guidance_scales):
    say(f"guidance sweep, w = {guidance:g} ({index + 1} of {len(config.guidance_scales)})")
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
