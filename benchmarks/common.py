"""What the benchmarks share: the machine header, random image data, engine timing."""

import datetime
import importlib.metadata
import os
import statistics
import time

import jax
import numpy as np


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown CPU"


def version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "missing"


def header() -> str:
  device = jax.devices()[0]
  # The affinity mask, not the machine's core count, bounds what both frameworks can use.
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return (
    f"device: {device.device_kind} x{jax.device_count()} ({device.platform}); "
    f"cpu: {cpu_model()}, {cores} cores; "
    f"jax {jax.__version__}, jaxlib {version('jaxlib')}, torch {version('torch')}; "
    f"{datetime.datetime.now().isoformat(timespec='seconds')}"
  )


def torch_device(torch):
  """Where the PyTorch twin runs, printed with torch's version and threads: CUDA when JAX runs
  on a GPU, else the CPU.

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


def torch_synchronize(torch, device) -> None:
  """Waits for the twin's queued GPU work, so that host clocks time it."""
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def random_data(
  examples: int, image_shape: tuple[int, ...] = (32, 32, 3)
) -> tuple[np.ndarray, np.ndarray]:
  """Random uint8 NHWC images (CIFAR-shaped unless told) and int32 labels in [0, 10)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (examples, *image_shape), dtype=np.uint8)
  labels = rng.integers(0, 10, (examples,), dtype=np.int32)
  return images, labels


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
    state, _ = trainer.train_epoch(state, data, epoch)
    jax.block_until_ready(state)
    epoch += 1
    return time.perf_counter() - started

  return epoch_seconds


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


def report_rate(name, batch_size, steps, timings, first, first_label, decimals=0):
  """Prints and returns images/s over the median timed epoch; ``first`` is reported apart."""
  rate = steps * batch_size / statistics.median(timings)
  print(
    f"{name}: {rate:.{decimals}f} images/s (median of {len(timings)} epochs of {steps} steps; "
    f"{first_label} {first:.1f} s)",
    flush=True,
  )
  return rate
