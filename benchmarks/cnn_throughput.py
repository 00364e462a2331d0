"""Training throughput of the CIFAR SimpleCNN: jaxdiff's engine vs a PyTorch twin.

Measures images per second of one SGD-with-momentum run (batch 100 by
default) on random uint8 CIFAR-shaped data already in memory, for:

* jaxdiff: ``train.Trainer`` exactly as the experiments build it (loop and
  runs_per_call chosen per platform), one epoch per ``train_epoch`` call;
* pytorch: the seed article's loop (zero_grad, loss, backward, step) on the
  same architecture, float32 NCHW, with the same per-step work as the engine:
  a random permutation per epoch, a gather of uint8 rows, and normalization to
  [-1, 1] inside the step. It runs where JAX runs (``common.torch_device``):
  on CUDA, with the data already on the GPU, when JAX's device is a GPU.

Each framework first runs one untimed epoch (for JAX that is compile plus the
first epoch, reported separately), then ``--repeats`` timed epochs of ``--steps``
steps, taken in turns with the other's (``common.alternate``), each with its
framework's default thread count; the reported rate is the median.

  python benchmarks/cnn_throughput.py --batch-size 100 --steps 200 --repeats 3
  python benchmarks/cnn_throughput.py --skip-torch
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import (
  alternate,
  engine_epochs,
  header,
  random_data,
  report_rate,
  torch_device,
  torch_synchronize,
)

from jaxdiff import classification, parallel, train
from jaxdiff.models import SimpleCNN

try:
  import torch
  from torch import nn
except ImportError:  # the JAX half is still worth running without torch
  torch = None

CPU_OPS = {"auto": None, "on": True, "off": False}  # SimpleCNN.cpu_ops


def jaxdiff_epochs(images, labels, flags):
  """A function that trains the engine one epoch per call and returns its seconds."""
  model = SimpleCNN(cpu_ops=CPU_OPS[flags.cpu_ops])
  task = classification.classifier_task(model, (32, 32, 3))
  trainer = train.Trainer(
    task,
    functools.partial(optax.sgd, momentum=0.9),
    mesh=parallel.make_mesh(),
    batch_size=flags.batch_size,
    scan_unroll=flags.scan_unroll,
  )
  state = trainer.init(jax.random.key(0)[None], learning_rate=jnp.asarray([1e-3]))
  return engine_epochs(trainer, state, {"image": images, "label": labels})


class TorchSimpleCNN(nn.Module if torch is not None else object):
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


def torch_epochs(images, labels, batch_size, steps, device):
  """A function that trains the PyTorch twin one epoch per call and returns its seconds."""
  torch.manual_seed(0)
  # Stored as uint8 like the engine's device copy, so both pay for gather and normalization.
  x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
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
    torch_synchronize(torch, device)
    return time.perf_counter() - started

  return epoch_seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
  parser.add_argument("--repeats", type=int, default=3, help="timed epochs after the first")
  parser.add_argument("--skip-torch", action="store_true", help="time jaxdiff only")
  parser.add_argument("--cpu-ops", choices=CPU_OPS, default="auto",
                      help="SimpleCNN's CPU formulation: by backend (auto), always, never")  # fmt: skip
  parser.add_argument("--scan-unroll", type=int, default=1,
                      help="steps per iteration of the engine's epoch scan")  # fmt: skip
  flags = parser.parse_args()
  if min(flags.batch_size, flags.steps, flags.repeats, flags.scan_unroll) <= 0:
    parser.error("--batch-size, --steps, --repeats and --scan-unroll must be positive")

  print(header(), flush=True)
  images, labels = random_data(flags.steps * flags.batch_size)
  print(
    f"SimpleCNN (cpu_ops {flags.cpu_ops}), SGD momentum 0.9, batch {flags.batch_size}, one run, "
    f"{flags.steps} steps per epoch, scan unroll {flags.scan_unroll}",
    flush=True,
  )

  epochs = {"jaxdiff": jaxdiff_epochs(images, labels, flags)}
  if flags.skip_torch:
    print("pytorch: skipped (--skip-torch)")
  elif torch is None:
    print("pytorch: skipped (torch is not installed; pip install torch)")
  else:
    device = torch_device(torch)
    epochs["pytorch"] = torch_epochs(images, labels, flags.batch_size, flags.steps, device)
  timed = alternate(epochs, flags.repeats)
  first_labels = {"jaxdiff": "compile+first epoch", "pytorch": "warm-up epoch"}
  rates = {
    name: report_rate(name, flags.batch_size, flags.steps, timings, first, first_labels[name])
    for name, (first, timings) in timed.items()
  }
  # Kept as the last line either way, so tools reading it always find it.
  if "pytorch" in rates:
    print(f"ratio jaxdiff/pytorch: {rates['jaxdiff'] / rates['pytorch']:.2f}")
  else:
    print("ratio jaxdiff/pytorch: n/a")


if __name__ == "__main__":
  main()
