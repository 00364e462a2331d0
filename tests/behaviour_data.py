"""Deterministic synthetic data sets for the behaviour pin (tests/test_behaviour_pin.py) and
the CLI tests, and a reader of the checkpoints the CLIs write.

CIFAR-shaped: each class has its own mean colour, so a CNN learns something in one epoch;
MNIST-shaped: a bright blob whose position is the label; tiny CIFAR: random pixels, for runs
that only need the shapes. All come from fixed numpy seeds.
"""

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxdiff.data import Dataset


def save_tiny_cifar_npz(path) -> None:
  """A CIFAR-shaped .npz: 240 train and 40 test 32x32x3 uint8 images, 10 classes."""
  rng = np.random.default_rng(0)
  np.savez(path, x_train=rng.integers(0, 256, (240, 32, 32, 3), dtype=np.uint8),
           y_train=np.arange(240) % 10,
           x_test=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
           y_test=np.arange(40) % 10)  # fmt: skip


def checkpoint_leaves(directory: Path) -> list[np.ndarray]:
  """The arrays of a checkpoint of jaxdiff.checkpoint (``directory`` holds ``arrays/``), as
  numpy: restored without shardings, so its devices need not exist in this process."""
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(directory / "arrays").item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  restored = checkpointer.restore(directory / "arrays", restore_args=as_numpy)
  return [np.asarray(leaf) for leaf in jax.tree.leaves(restored)]


def cifar_like(train: int = 2000, test: int = 500) -> Dataset:
  rng = np.random.default_rng(0)
  colours = rng.uniform(40, 215, (10, 3))

  def split(count):
    labels = np.arange(count) % 10
    noise = rng.normal(0, 40, (count, 32, 32, 3))
    images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int32)

  x_train, y_train = split(train)
  x_test, y_test = split(test)
  names = tuple(f"class{i}" for i in range(10))
  return Dataset("cifar_like", x_train, y_train, x_test, y_test, names, "synthetic")


def mnist_like(train: int = 64, test: int = 16) -> Dataset:
  rng = np.random.default_rng(0)

  def split(count):
    labels = np.arange(count) % 10
    pixels = rng.integers(0, 40, (count, 28, 28), dtype=np.uint8)
    for image, label in zip(pixels, labels):
      row, column = divmod(int(label), 5)
      image[4 + 12 * row : 12 + 12 * row, 2 + 5 * column : 6 + 5 * column] = 250
    return pixels[..., None], labels.astype(np.int32)

  x_train, y_train = split(train)
  x_test, y_test = split(test)
  names = tuple(str(i) for i in range(10))
  return Dataset("mnist_like", x_train, y_train, x_test, y_test, names, "synthetic")


def save_mnist_npz(dataset: Dataset, path) -> None:
  """Writes ``dataset`` in the ``mnist.npz`` layout (images without the channel axis)."""
  np.savez(path, x_train=dataset.x_train[..., 0], y_train=dataset.y_train,
           x_test=dataset.x_test[..., 0], y_test=dataset.y_test)  # fmt: skip
