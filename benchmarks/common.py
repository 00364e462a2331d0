"""What the benchmarks share: the machine header, random data, the engines they time, timing
and traces.

Everything goes through public names: jaxdiff's API, and the DDPM experiment's configuration and
engine builder (``make_setup``, ``make_trainer``), so that the scripts time what the experiment
trains. Nothing here imports torch: the PyTorch twins live in ``twins.py``, which
:func:`import_twins` loads for the scripts that compare with them.
"""

import argparse
import collections
import datetime
import gzip
import json
import os
import pathlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import classification, environment, parallel, train
from jaxdiff.experiments.ddpm_mnist import experiment
from jaxdiff.experiments.ddpm_mnist.config import COMPUTE_DTYPES, DDPMConfig
from jaxdiff.models import UNET_SIZES, SimpleCNN
from jaxdiff.policy import ExecutionPolicy

CIFAR_SHAPE = (32, 32, 3)
MNIST_SHAPE = (28, 28, 1)


def momentum(learning_rate):
  """SGD with momentum 0.9, the seed article's optimizer (an optax factory for the engine)."""
  return optax.sgd(learning_rate, momentum=0.9)


# ----------------------------------------------------------------------------- the header


def header(packages=()) -> str:
  """One line: device, CPU, versions (``environment.describe``, plus ``packages``), the time."""
  described = environment.describe(packages)
  versions = ", ".join(f"{name} {version}" for name, version in described["versions"].items())
  # The affinity mask, not the machine's core count, bounds what both frameworks can use.
  return (
    f"device: {described['device_kind']} x{described['device_count']} "
    f"({described['platform']}); cpu: {described['cpu_model']}, "
    f"{described['usable_cores']} cores; {versions}; "
    f"{datetime.datetime.now().isoformat(timespec='seconds')}"
  )


# ----------------------------------------------------------------------------- a quiet machine?

# Other processes' CPU use, in cores averaged over the run, above which a timing is marked:
# a busy 2-thread process beside the PyTorch twin made its epochs several times slower
# (RESULTS.md, "The busy-machine check").
BUSY_CORES = 0.25
# Max/min of one framework's timed epochs above which they are marked as unsteady: a quiet
# machine's epochs drift less (RESULTS.md, "Machines"), a busy machine's by several times.
SPREAD_LIMIT = 1.5


def _cpu_seconds_by_process() -> dict[int, float]:
  """Every process's user+system CPU seconds so far, from /proc (empty where there is none)."""
  ticks = os.sysconf("SC_CLK_TCK")
  seconds = {}
  for entry in pathlib.Path("/proc").iterdir():
    if not entry.name.isdigit():
      continue
    try:
      # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
      fields = (entry / "stat").read_text().rpartition(")")[2].split()
      parent = int(fields[1])
      seconds[int(entry.name)] = (parent, (int(fields[11]) + int(fields[12])) / ticks)
    except (OSError, ValueError, IndexError):
      continue  # the process ended while being read
  return seconds


def _family(processes: dict, root: int) -> set[int]:
  """``root`` and its descendants among ``processes`` (pid -> (parent, seconds))."""
  family, grew = {root}, True
  while grew:
    children = {pid for pid, (parent, _) in processes.items() if parent in family} - family
    family |= children
    grew = bool(children)
  return family


class MachineWatch:
  """Whether the machine stayed quiet while a benchmark ran: other processes' CPU time and the
  load average, from the watch's creation to :meth:`report`.

  Other processes are every process except this one and its children (a benchmark's workers);
  a process that started during the run counts with all its CPU time, one that ended during it
  is missed (an undercount, never a false alarm).
  """

  def __init__(self):
    self._started = time.perf_counter()
    self._load = os.getloadavg()[0]
    self._before = _cpu_seconds_by_process()

  def other_cores(self) -> float:
    """Other processes' CPU seconds per wall second since the watch started."""
    after = _cpu_seconds_by_process()
    ours = _family(after, os.getpid())
    used = sum(
      seconds - self._before.get(pid, (None, 0.0))[1]
      for pid, (_, seconds) in after.items()
      if pid not in ours
    )
    return max(0.0, used) / max(time.perf_counter() - self._started, 1e-9)

  def report(self) -> bool:
    """Prints one line on the machine's load over the run (a WARNING if busy); True if quiet."""
    cores, load = self.other_cores(), os.getloadavg()[0]
    text = (f"other processes used {cores:.2f} cores on average; load average "
            f"{self._load:.2f} at start, {load:.2f} at end")  # fmt: skip
    quiet = cores <= BUSY_CORES
    if quiet:
      print(f"machine: quiet ({text})", flush=True)
    else:
      print(f"WARNING: the machine was busy ({text}, above {BUSY_CORES}): the figures of this "
            "run are not comparable with a quiet machine's", flush=True)  # fmt: skip
    return quiet


def import_twins():
  """The PyTorch twins (``twins.py``), or None where torch is not installed."""
  try:
    from benchmarks import twins  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as error:
    if error.name != "torch" and not str(error.name).startswith("torch."):
      raise
    return None
  return twins


def require_twins(parser: argparse.ArgumentParser):
  """:func:`import_twins`, or the script's usage error where torch is not installed."""
  twins = import_twins()
  if twins is None:
    parser.error("this script compares with PyTorch: it needs torch (pip install -e '.[bench]')")
  return twins


def start_twins(parser: argparse.ArgumentParser):
  """For a script that needs the twins: prints the header (torch's version in it) and returns
  the twins module and their device (``twins.torch_device``)."""
  twins = require_twins(parser)
  print(header(twins.PACKAGES), flush=True)
  return twins, twins.torch_device()


# ----------------------------------------------------------------------------- data and engines


def random_data(
  examples: int, image_shape: tuple[int, ...] = CIFAR_SHAPE
) -> tuple[np.ndarray, np.ndarray]:
  """Random uint8 NHWC images (CIFAR-shaped unless told) and int32 labels in [0, 10)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (examples, *image_shape), dtype=np.uint8)
  labels = rng.integers(0, 10, (examples,), dtype=np.int32)
  return images, labels


def cnn_trainer(optimizer, batch_size, convolution="auto", **policy_options) -> train.Trainer:
  """The engine for the CIFAR SimpleCNN, as the CIFAR comparison builds it.

  Args:
    optimizer: an optax factory.
    batch_size: the global batch.
    convolution: ``SimpleCNN``'s formulation; ``"auto"``, the policy's for the platform.
    **policy_options: ``ExecutionPolicy.for_mesh``'s (``loop``, ``runs_per_call``,
      ``scan_unroll``); the platform's defaults for the others.
  """
  mesh = parallel.make_mesh()
  policy = ExecutionPolicy.for_mesh(mesh, convolution=convolution, **policy_options)
  model = SimpleCNN(convolution=policy.convolution)
  task = classification.classifier_task(model, CIFAR_SHAPE)
  return train.Trainer(task, optimizer, mesh, batch_size, policy)


def cnn_engine(runs, batch_size, steps, *, optimizer=momentum, convolution="auto", **policy):
  """:func:`cnn_trainer`, the initial state of ``runs`` runs at lr 1e-3, and ``steps`` batches
  of random CIFAR-shaped data (host arrays)."""
  trainer = cnn_trainer(optimizer, batch_size, convolution, **policy)
  state = trainer.init(
    jax.random.split(jax.random.key(0), runs), learning_rate=jnp.full(runs, 1e-3)
  )
  images, labels = random_data(steps * batch_size)
  return trainer, state, {"image": images, "label": labels}


def ddpm_engine(config: DDPMConfig, images: np.ndarray, **policy_options):
  """The DDPM experiment's engine (``experiment.make_trainer``: one run) and initial state.

  ``policy_options`` (``ExecutionPolicy.for_mesh``'s) replace the platform's defaults.
  """
  setup = experiment.make_setup(config, **policy_options)
  return experiment.make_trainer(config, setup, images.shape[1:])


def first_run_params(state: train.TrainState):
  """The first run's parameters, on the host: copied before the engine donates the state."""
  return jax.device_get(jax.tree.map(lambda leaf: leaf[0], state.params))


# The engines engine_loops.py and engine_profile.py time and profile: ``--model``.
MODELS = ("cnn", "unet-tiny", "unet-small")
DEFAULT_BATCH_SIZES = {"cnn": 100, "unet-tiny": 32, "unet-small": 32}


def model_engine(model, runs, batch_size, steps, **policy_options):
  """``(trainer, state, host arrays)`` of ``--model``: the CNN with plain SGD, or a U-Net of
  the DDPM experiment on MNIST-shaped data (one run: its engine trains one)."""
  if model == "cnn":
    return cnn_engine(runs, batch_size, steps, optimizer=optax.sgd, **policy_options)
  images, _ = random_data(steps * batch_size, MNIST_SHAPE)
  config = DDPMConfig(model_size=model.removeprefix("unet-"), batch_size=batch_size)
  return (*ddpm_engine(config, images, **policy_options), {"image": images})


def refuse_runs_of_one_run_models(parser, flags):
  """The U-Net's engine is built for one run; more would silently profile or time one."""
  if flags.model != "cnn" and flags.runs != 1:
    parser.error(f"--model {flags.model} trains one run: leave out --runs or give --runs 1")


# ----------------------------------------------------------------------------- the engine's calls


def train_epochs(trainer, state, data, epochs):
  """Trains ``state`` for each epoch number in ``epochs``; returns the state once it is ready."""
  for epoch in epochs:
    state, _ = trainer.train_epoch(state, data, epoch)
  return jax.block_until_ready(state)


def compiled_programs(trainer, state, data):
  """The optimized HLO text of each program one epoch of ``state`` runs (the scanned epoch, or
  the step), compiled as training compiles them."""
  return [lowered.compile().as_text() for lowered in trainer.lower_epoch(state, data)]


def engine_epochs(trainer, state, arrays):
  """A function that trains the engine one more epoch per call and returns its seconds.

  The data is copied to the devices first, outside every timing; the first call compiles.
  """
  data = trainer.put_data(arrays)
  jax.block_until_ready((state, data))
  epoch = 0

  def epoch_seconds():
    nonlocal state, epoch
    started = time.perf_counter()
    state = train_epochs(trainer, state, data, [epoch])
    epoch += 1
    return time.perf_counter() - started

  return epoch_seconds


def trace_events(trainer, state, data, epochs):
  """Trains ``epochs`` (epoch numbers) under ``jax.profiler``; returns the state and the trace's
  events (Chrome trace format)."""
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      state = train_epochs(trainer, state, data, epochs)
    (trace,) = pathlib.Path(trace_dir).rglob("*.trace.json.gz")
    with gzip.open(trace) as file:
      events = json.load(file)
  return state, events["traceEvents"] if isinstance(events, dict) else events


def summed_durations(events):
  """``(microseconds, counts)``: Counters over the names of ``events`` (complete trace events)."""
  micros, counts = collections.Counter(), collections.Counter()
  for event in events:
    micros[event["name"]] += event["dur"]
    counts[event["name"]] += 1
  return micros, counts


# ----------------------------------------------------------------------------- timing


def alternate(epochs, repeats):
  """Times ``{name: epoch_seconds}`` in turns, so a drift in the machine's speed hits all alike.

  Returns ``{name: (first, timings)}``: each one's untimed first epoch (compile, warm-up), run
  in order before any timed one, and its ``repeats`` timed epochs, taken one name after another.
  """
  firsts = {name: epoch_seconds() for name, epoch_seconds in epochs.items()}
  timings = {name: [] for name in epochs}
  for _ in range(repeats):
    for name, epoch_seconds in epochs.items():
      timings[name].append(epoch_seconds())
  return {name: (firsts[name], timings[name]) for name in epochs}


FIRST_LABELS = {"jaxdiff": "compile+first epoch", "pytorch": "warm-up epoch"}


def report_rates(timed, batch_size, steps, suffix="", decimals=0):
  """Prints each framework's images/s over its median timed epoch (``alternate``'s result) and
  its epochs' spread (max/min), with a WARNING line above :data:`SPREAD_LIMIT`; returns
  ``{name: rate}`` and whether every framework's epochs were steady. The untimed first epoch is
  reported apart."""
  rates, steady = {}, True
  for name, (first, timings) in timed.items():
    rates[name] = steps * batch_size / statistics.median(timings)
    spread = max(timings) / min(timings)
    print(
      f"{name}{suffix}: {rates[name]:.{decimals}f} images/s (median of {len(timings)} epochs "
      f"of {steps} steps, max/min {spread:.2f}; {FIRST_LABELS[name]} {first:.1f} s)",
      flush=True,
    )
    if spread > SPREAD_LIMIT:
      steady = False
      print(f"WARNING: {name}{suffix}'s epochs spread {spread:.2f}x (max/min), above "
            f"{SPREAD_LIMIT}: its rate is not a steady figure", flush=True)  # fmt: skip
  return rates, steady


def print_ratio(rates, suffix="", why_not="", trusted=True):
  """The ``ratio jaxdiff/pytorch`` line, kept last either way so that tools always find it;
  marked ``(NOT TRUSTED: ...)`` unless ``trusted`` (a quiet machine, steady epochs)."""
  if "pytorch" in rates:
    mark = "" if trusted else " (NOT TRUSTED: busy machine or unsteady epochs, see above)"
    ratio = rates["jaxdiff"] / rates["pytorch"]
    print(f"ratio jaxdiff/pytorch{suffix}: {ratio:.2f}{mark}", flush=True)
  else:
    print(f"pytorch{suffix}: skipped ({why_not})")
    print(f"ratio jaxdiff/pytorch{suffix}: n/a", flush=True)


def skipped_torch(flags, twins) -> str:
  """Why the PyTorch half does not run ("" where it does)."""
  if flags.skip_torch:
    return "--skip-torch"
  return "" if twins is not None else "torch is not installed; pip install -e '.[bench]'"


def repeat_seconds(call, calls):
  """A function running ``call`` ``calls`` times and returning the seconds per call."""

  def seconds():
    started = time.perf_counter()
    for _ in range(calls):
      call()
    return (time.perf_counter() - started) / calls

  return seconds


# ----------------------------------------------------------------------------- flags


def positive(parser, flags, *names):
  """A usage error unless every flag in ``names`` (attribute names) is positive."""
  if min((getattr(flags, name) for name in names), default=1) <= 0:
    listed = ", ".join("--" + name.replace("_", "-") for name in names)
    parser.error(f"{listed} must be positive")


def add_unet_flags(parser, batch_size=32, steps=None, dtype=False):
  """The DDPM scripts' ``--sizes`` and ``--image-shape``; ``--batch-size`` unless ``batch_size``
  (its default) is None, ``--steps`` (per epoch) if ``steps`` (its default) is given, and
  ``--dtype`` if ``dtype``."""
  parser.add_argument("--sizes", "--size", default="tiny",
                      help=f"U-Net sizes, comma-separated, of {', '.join(UNET_SIZES)} (default tiny)")  # fmt: skip
  parser.add_argument(
    "--image-shape", default="28,28,1", help="height,width,channels (default 28,28,1: MNIST)"
  )
  if batch_size is not None:
    parser.add_argument("--batch-size", type=int, default=batch_size)
  if steps is not None:
    parser.add_argument("--steps", type=int, default=steps, help="steps per epoch")
  if dtype:
    parser.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32",
                        help="the U-Nets' computation dtype (parameters stay float32; "
                        "torch.autocast for the twin)")  # fmt: skip


def parse_unet_flags(parser):
  """Parses the flags, with :func:`add_unet_flags`'s checked and turned into a list of sizes
  and a shape tuple."""
  flags = parser.parse_args()
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
      experiment.check_image_shape(flags.image_shape, size)
    except experiment.ImageShapeError as error:
      parser.error(str(error))
  positive(parser, flags, *(name for name in ("batch_size", "steps") if name in vars(flags)))
  return flags


def shape_text(image_shape) -> str:
  return "x".join(map(str, image_shape))
