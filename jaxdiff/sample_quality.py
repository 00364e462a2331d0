"""Quality of generated MNIST digits, judged by a small MNIST classifier.

FID needs Inception-v3 weights, which cannot be downloaded here, so this
module trains its own judge: :class:`MnistFeatureNet`, a two-convolution CNN,
trained on the real MNIST training set with the shared engine
(:class:`jaxdiff.engine.Trainer`) and cached on disk. :func:`evaluate_samples`
then reports, for a set of generated images,

* ``classifier_fd``: the Fréchet distance between Gaussian fits of the
  classifier's 128 penultimate features of the samples and of real images. It
  is computed like FID but on a different network, so it is **not comparable
  to published FIDs**; compare it only with the same classifier's value for
  real held-out images (the floor set by sampling noise);
* ``confident_share``: the share of samples the classifier puts in one class
  with probability at least 0.9, a proxy for legible digits;
* ``class_histogram``: predicted classes, which shows mode dropping;

and :func:`evaluate_conditional_samples` adds, for samples drawn for given digits, the share
the classifier assigns to the digit asked for, and each digit's own Fréchet distance.

Example:
  >>> import jaxdiff
  >>> from jaxdiff.files import write_npz
  >>> rng = np.random.default_rng(0)
  >>> images, labels = rng.integers(0, 256, (8, 28, 28, 1), np.uint8), np.arange(8, dtype=np.int32)
  >>> write_npz("mnist.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
  >>> data = jaxdiff.load_dataset("mnist.npz", name="mnist")
  >>> params = train_feature_classifier(data, jax.random.key(0), epochs=1, cache_dir="cache")
  >>> samples = rng.integers(0, 256, (4, 28, 28, 1), np.uint8)  # a sampler's images
  >>> scores = evaluate_samples(params, samples, data.x_test)
  >>> scores["num_samples"], sum(scores["class_histogram"]), scores["classifier_fd"] > 0
  (4, 4, True)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import classification, distributed, parallel
from jaxdiff.data import Dataset, default_cache_dir
from jaxdiff.engine import Trainer
from jaxdiff.files import write_npz
from jaxdiff.loop import Budget, Reporter, fit
from jaxdiff.metrics import frechet_distance, gaussian_fit
from jaxdiff.models import normalize_images
from jaxdiff.policy import ExecutionPolicy

Params = Any

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def normalize_mnist(images: jax.Array) -> jax.Array:
  """uint8 MNIST pixels standardised with the training set's mean and std."""
  return normalize_images(images, MNIST_MEAN, MNIST_STD)


IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
#: The feature classifier's name in its cache key, changed whenever MnistFeatureNet or its
#: training changes so that a cached classifier of another recipe is never loaded.
ARCHITECTURE = "MnistFeatureNet-conv32-conv64-dense128-v2"
CONFIDENCE = 0.9
NOTE = (
  "classifier_fd is a Fréchet distance between Gaussian fits of the 128 penultimate "
  "features of jaxdiff's small MNIST classifier (not Inception-v3): it is NOT comparable "
  "to published FIDs; compare it with the value for real held-out images."
)


class MnistFeatureNet(nn.Module):
  """conv 3x3 (32), ReLU, max-pool 2; conv 3x3 (64), ReLU, max-pool 2; dense 128, ReLU; dense 10.

  Takes images standardised with MNIST's pixel mean and standard deviation
  (0.1307, 0.3081), as :func:`normalize_mnist` returns them.
  """

  @nn.compact
  def __call__(
    self, x: jax.Array, return_features: bool = False
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Returns the logits, or ``(logits, penultimate features)`` with ``return_features``."""
    for features in (32, 64):
      x = nn.relu(nn.Conv(features, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    features = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    logits = nn.Dense(NUM_CLASSES)(features)
    return (logits, features) if return_features else logits


def train_feature_classifier(
  data: Dataset,
  key: jax.Array,
  *,
  epochs: int = 2,
  batch_size: int = 128,
  cache_dir: str | os.PathLike | None = None,
  mesh: jax.sharding.Mesh | None = None,
  policy: ExecutionPolicy | None = None,
  quiet: bool = True,
) -> Params:
  """Trains :class:`MnistFeatureNet` on ``data``'s training split, or loads the cached result.

  One run of ``optax.adam`` (learning rate 1e-3) on the shared engine. The
  parameters are cached in ``cache_dir`` under a digest of the training
  images and labels, ``key``, ``epochs``, ``batch_size`` and
  :data:`ARCHITECTURE`; a later call with the same inputs loads them. The
  device count is not part of the key: it changes the result by float
  rounding only.

  Args:
    data: a data set of 28x28x1 uint8 images with labels below 10.
    key: seeds the initial parameters and the data order.
    epochs: passes over the training split.
    batch_size: the global batch, a multiple of the mesh's devices.
    cache_dir: where the parameters are cached; default
      ``jaxdiff.data.default_cache_dir() / "mnist_classifier"``.
    mesh: the data mesh (default ``parallel.make_mesh()``).
    policy: how the engine runs (default ``ExecutionPolicy.for_mesh(mesh)``).
    quiet: hides the progress bar.

  Returns:
    The parameters as host (numpy) arrays.

  Raises:
    ValueError: the images are not 28x28x1 or a label is 10 or more.
    RuntimeError: the training loss or parameters became non-finite.
  """
  if data.image_shape != IMAGE_SHAPE:
    raise ValueError(f"the feature classifier needs {IMAGE_SHAPE} images, got {data.image_shape}")
  if data.y_train.max() >= NUM_CLASSES:
    raise ValueError(f"labels must be below {NUM_CLASSES}, got up to {data.y_train.max()}")
  cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "mnist_classifier"
  path = cache / f"{ARCHITECTURE}-{_fingerprint(data, key, epochs, batch_size)}.npz"
  # Training runs collectives: every process trains, or none (hosts may not share the cache).
  if distributed.every_process(path.exists()):
    return _load_params(path)
  mesh = mesh if mesh is not None else parallel.make_mesh()
  # A data set smaller than one batch (as in tests) trains on whole-set batches.
  batch_size = min(batch_size, len(data.x_train) // mesh.size * mesh.size)
  task = classification.classifier_task(MnistFeatureNet(), IMAGE_SHAPE, normalize_mnist)
  trainer = Trainer(task, optax.adam, mesh, batch_size, policy)
  state = trainer.init(key[None], learning_rate=1e-3)
  arrays = trainer.put_data({"image": data.x_train, "label": data.y_train})
  reporter = Reporter("feature classifier", quiet=quiet)
  state = fit(trainer, state, arrays, Budget(epochs=epochs), reporter=reporter).state
  if int(state.diverged_at[0]) >= 0:
    raise RuntimeError(f"the feature classifier diverged at step {int(state.diverged_at[0])}")
  params = jax.tree.map(lambda leaf: np.asarray(leaf[0]), state.params)
  write_npz(path, **_named_leaves(params))
  return params


def evaluate_samples(
  params: Params, samples: np.ndarray, reference: np.ndarray, *, chunk_size: int = 500
) -> dict[str, Any]:
  """Scores generated MNIST images against real ones with the feature classifier.

  ``classifier_fd`` is a Fréchet distance on this module's small MNIST
  classifier's penultimate features, **not** Inception-v3's: it is not
  comparable to published FIDs, only to the same classifier's score for real
  held-out images. With fewer images than the 128 features the covariances
  are singular and the distance is biased upwards, as FID is.

  Args:
    params: from :func:`train_feature_classifier`.
    samples: generated images, uint8 ``(N, 28, 28, 1)``.
    reference: real images, uint8 ``(M, 28, 28, 1)``.
    chunk_size: images per forward pass (bounds memory).

  Returns:
    A dict of ``classifier_fd`` (float), ``confident_share`` (the share of samples whose top
    probability is at least 0.9), ``reference_confident_share``, ``class_histogram`` (10 ints:
    the samples' predicted classes), ``num_samples`` (N), ``num_reference`` (M) and ``note``
    (a str).

  Raises:
    ValueError: an image array is not uint8 ``(n, 28, 28, 1)`` with n >= 2.
  """
  sample_probs, sample_features = _probs_and_features(params, samples, chunk_size)
  reference_probs, reference_features = _probs_and_features(params, reference, chunk_size)
  return _scores(sample_probs, sample_features, reference_probs, reference_features)


def evaluate_conditional_samples(
  params: Params,
  samples: np.ndarray,
  asked_labels: np.ndarray,
  reference: np.ndarray,
  reference_labels: np.ndarray,
  *,
  chunk_size: int = 500,
) -> dict[str, Any]:
  """Scores class-conditional samples: :func:`evaluate_samples`' scores, and whether each
  sample is the digit it was asked for.

  ``class_accuracy`` is the share of samples the classifier assigns to their asked-for digit,
  and ``confident_accurate_share`` the share it assigns there with probability at least 0.9.
  Per digit asked for, the share and the Fréchet distance between that digit's samples and
  the reference images of that label: with a few dozen samples a digit against 128 features,
  that distance is biased upwards more than the whole set's (see :func:`evaluate_samples`), so
  compare it between samplers or guidance weights at the same sample counts only.

  Args:
    params: from :func:`train_feature_classifier`.
    samples: generated images, uint8 ``(N, 28, 28, 1)``.
    asked_labels: the digit each sample was drawn for, int ``(N,)``.
    reference: real images, uint8 ``(M, 28, 28, 1)``.
    reference_labels: their labels, int ``(M,)``.
    chunk_size: images per forward pass.

  Returns:
    A dict of :func:`evaluate_samples`' scores and ``class_accuracy`` (float),
    ``confident_accurate_share`` (float) and ``per_class``: for each digit asked for, in order,
    a dict of ``digit``, ``num_samples``, ``class_accuracy`` and ``classifier_fd`` (None where
    the digit has fewer than two samples or reference images).

  Raises:
    ValueError: as :func:`evaluate_samples`, or labels whose length is not the images'.
  """
  asked_labels, reference_labels = np.asarray(asked_labels), np.asarray(reference_labels)
  if len(asked_labels) != len(samples) or len(reference_labels) != len(reference):
    raise ValueError(
      f"{len(asked_labels)} labels for {len(samples)} samples and {len(reference_labels)} for "
      f"{len(reference)} reference images: one label per image"
    )
  sample_probs, sample_features = _probs_and_features(params, samples, chunk_size)
  reference_probs, reference_features = _probs_and_features(params, reference, chunk_size)
  scores = _scores(sample_probs, sample_features, reference_probs, reference_features)
  hit = sample_probs.argmax(axis=1) == asked_labels
  per_class = []
  for digit in np.unique(asked_labels):
    mine, theirs = asked_labels == digit, reference_labels == digit
    fits = mine.sum() >= 2 and theirs.sum() >= 2
    distance = frechet_distance(*gaussian_fit(sample_features[mine]),
                                *gaussian_fit(reference_features[theirs])) if fits else None  # fmt: skip
    per_class.append({"digit": int(digit), "num_samples": int(mine.sum()),
                      "class_accuracy": float(hit[mine].mean()), "classifier_fd": distance})  # fmt: skip
  return {
    **scores,
    "class_accuracy": float(hit.mean()),
    "confident_accurate_share": float((hit & (sample_probs.max(axis=1) >= CONFIDENCE)).mean()),
    "per_class": per_class,
  }


def _scores(sample_probs, sample_features, reference_probs, reference_features) -> dict[str, Any]:
  """:func:`evaluate_samples`' scores from the classifier's outputs for both sets."""
  confident = sample_probs.max(axis=1) >= CONFIDENCE
  histogram = np.bincount(sample_probs.argmax(axis=1), minlength=NUM_CLASSES)
  return {
    "classifier_fd": frechet_distance(
      *gaussian_fit(sample_features), *gaussian_fit(reference_features)
    ),
    "confident_share": float(confident.mean()),
    "reference_confident_share": float((reference_probs.max(axis=1) >= CONFIDENCE).mean()),
    "class_histogram": [int(count) for count in histogram],
    "num_samples": len(sample_probs),
    "num_reference": len(reference_probs),
    "note": NOTE,
  }


@jax.jit
def _forward(params: Params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  logits, features = MnistFeatureNet().apply(
    {"params": params}, normalize_mnist(images), return_features=True
  )
  return jax.nn.softmax(logits), features


def _probs_and_features(
  params: Params, images: np.ndarray, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE or len(images) < 2:
    raise ValueError(
      f"expected uint8 images of shape (n >= 2, 28, 28, 1), got {images.dtype} {images.shape}"
    )
  # Padding the last chunk keeps one compiled shape.
  padded = np.concatenate([images, np.zeros((-len(images) % chunk_size,) + IMAGE_SHAPE, np.uint8)])
  outputs = [
    _forward(params, padded[start : start + chunk_size])
    for start in range(0, len(padded), chunk_size)
  ]
  probs, features = (np.concatenate(parts)[: len(images)] for parts in zip(*outputs))
  return probs.astype(np.float64), features.astype(np.float64)


def _fingerprint(data: Dataset, key: jax.Array, epochs: int, batch_size: int) -> str:
  digest = hashlib.sha256(ARCHITECTURE.encode())
  digest.update(f"{data.x_train.shape}:{epochs}:{batch_size}".encode())
  digest.update(np.ascontiguousarray(data.x_train).tobytes())
  digest.update(np.ascontiguousarray(data.y_train, np.int32).tobytes())
  digest.update(np.asarray(jax.random.key_data(key)).tobytes())
  return digest.hexdigest()[:16]


def _leaf_name(path: tuple[Any, ...]) -> str:
  return ".".join(str(entry.key) for entry in path)


def _named_leaves(params: Params) -> dict[str, np.ndarray]:
  return {_leaf_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _load_params(path: Path) -> Params:
  template = jax.eval_shape(
    MnistFeatureNet().init, jax.random.key(0), jnp.zeros((1,) + IMAGE_SHAPE)
  )["params"]
  with np.load(path, allow_pickle=False) as arrays:
    stored = {name: arrays[name] for name in arrays.files}
  expected = {name: leaf.shape for name, leaf in _named_leaves(template).items()}
  if {name: leaf.shape for name, leaf in stored.items()} != expected:
    raise ValueError(
      f"the cached classifier {str(path)!r} does not fit MnistFeatureNet; delete it to retrain"
    )
  leaves, structure = jax.tree_util.tree_flatten_with_path(template)
  return jax.tree_util.tree_unflatten(structure, [stored[_leaf_name(p)] for p, _ in leaves])
