"""Image classification on top of the engine: the task and a mesh-parallel predictor.

:func:`classifier_task` is the cross-entropy loss (with the batch's accuracy as its one metric)
that the engine trains; :func:`make_predictor` turns a run axis of parameters into predicted
probabilities. The metrics of those probabilities (accuracy, NLL, ECE, Brier score) are in
:mod:`jaxdiff.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaxdiff import parallel
from jaxdiff.engine import run_slices
from jaxdiff.models import normalize_images
from jaxdiff.policy import ExecutionPolicy
from jaxdiff.tasks import Task


def classifier_task(
  model: nn.Module,
  image_shape: tuple[int, ...],
  normalize: Callable[[jax.Array], jax.Array] = normalize_images,
) -> Task:
  """Softmax cross-entropy on ``{"image": uint8 NHWC, "label": int}`` batches.

  ``normalize`` maps the uint8 pixels to the model's input (default: [-1, 1]).
  """

  def init(key):
    return model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]

  def loss(params, batch, key):
    del key  # deterministic model
    logits = model.apply({"params": params}, normalize(batch["image"]))
    labels = batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

  return Task(init, loss)


def make_predictor(
  model: nn.Module,
  mesh: jax.sharding.Mesh,
  chunk_size: int = 500,
  policy: ExecutionPolicy | None = None,
  normalize: Callable[[jax.Array], jax.Array] = normalize_images,
) -> Callable[[object, np.ndarray], np.ndarray]:
  """Returns ``predict(params, images) -> probabilities (runs, n, classes)``.

  ``params`` carries a leading run axis (a ``TrainState.params``); the images
  are split across the devices and pushed through in chunks to bound memory.
  Runs go ``policy.runs_per_call`` at a time, as in :class:`jaxdiff.engine.Trainer`
  (default policy: ``ExecutionPolicy.for_mesh(mesh)``).
  """
  policy = policy or ExecutionPolicy.for_mesh(mesh)
  devices = mesh.size

  def local_probs(params, images):
    chunks = images.reshape((-1, chunk_size) + images.shape[1:])

    def chunk_probs(chunk):
      logits = jax.vmap(lambda p: model.apply({"params": p}, normalize(chunk)))(params)
      return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    probs = jax.lax.map(chunk_probs, chunks)  # (chunks, runs, chunk, classes)
    return jnp.swapaxes(probs, 0, 1).reshape(probs.shape[1], -1, probs.shape[-1])

  compiled = jax.jit(
    jax.shard_map(
      local_probs,
      mesh=mesh,
      in_specs=(P(), P(parallel.DATA_AXIS)),
      out_specs=P(None, parallel.DATA_AXIS),
    ),
    compiler_options=dict(policy.compiler_options),
  )

  def predict(params, images: np.ndarray) -> np.ndarray:
    count = len(images)
    multiple = devices * chunk_size
    padded = -count % multiple
    if padded:
      images = np.concatenate([images, np.zeros((padded,) + images.shape[1:], images.dtype)])
    images = parallel.shard_batch(images, mesh)
    num_runs = len(jax.tree.leaves(params)[0])
    probs = [
      parallel.to_host(compiled(jax.tree.map(lambda leaf, runs=runs: leaf[runs], params), images))
      for runs in run_slices(num_runs, policy.runs_per_call)
    ]
    return np.concatenate(probs)[:, :count]

  return predict
