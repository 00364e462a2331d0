"""The training engine on a tiny classifier: loops, devices, runs, divergence, checkpoints."""

import contextlib
import logging
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdiff
from jaxdiff import classification, parallel, train
from jaxdiff.checkpoint import Checkpoints
from jaxdiff.policy import ExecutionPolicy, computes_convolution


class TinyClassifier(nn.Module):
  @nn.compact
  def __call__(self, images):
    return nn.Dense(3)(images.reshape(images.shape[0], -1))


TASK = classification.classifier_task(TinyClassifier(), (4, 4, 1))
NUM_RUNS = 3


@pytest.fixture(scope="module")
def arrays():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 64).astype(np.int32)
  # Images correlated with the label, so training has something to learn.
  images = np.clip(labels[:, None, None, None] * 80 + rng.integers(0, 60, (64, 4, 4, 1)), 0, 255)
  return {"image": images.astype(np.uint8), "label": labels}


def _train(arrays, epochs=2, devices=None, loop="step", runs_per_call=1, learning_rates=None,
           scan_unroll=1):  # fmt: skip
  mesh = parallel.make_mesh(devices)
  policy = ExecutionPolicy.for_mesh(mesh, loop=loop, runs_per_call=runs_per_call,
                                    scan_unroll=scan_unroll)  # fmt: skip
  trainer = train.Trainer(TASK, jaxdiff.langevin_sgd, mesh=mesh, batch_size=16, policy=policy)
  keys = jax.random.split(jax.random.key(0), NUM_RUNS)
  lrs = learning_rates if learning_rates is not None else [0.05, 0.1, 0.2]
  state = trainer.init(keys, learning_rate=jnp.asarray(lrs), diffusion=jnp.asarray([0.0, 1e-4, 1e-3]),
                       key=jax.random.split(jax.random.key(1), NUM_RUNS), momentum=0.9)  # fmt: skip
  data = trainer.put_data(arrays)
  losses = []
  for epoch in range(epochs):
    state, metrics = trainer.train_epoch(state, data, epoch)
    losses.append(metrics["loss"])
  return state, np.concatenate(losses)


@pytest.fixture(scope="module")
def reference(arrays):
  """Step loop, one run per call, four devices: what the other tests compare with."""
  return _train(arrays)


def test_training_reduces_the_loss(reference):
  state, losses = reference
  assert losses.shape == (8, NUM_RUNS)  # 2 epochs x 64 / 16 steps, one column per run
  assert np.all(losses[-2:].mean(0) < losses[:2].mean(0))
  np.testing.assert_array_equal(state.step, [8] * NUM_RUNS)
  np.testing.assert_array_equal(state.diverged_at, [-1] * NUM_RUNS)


def test_scan_epoch_matches_the_step_loop(arrays, reference):
  _, losses = _train(arrays, loop="scan")
  # Same program, compiled inside a scan: float reassociation only.
  np.testing.assert_allclose(losses, reference[1], rtol=1e-5, atol=1e-6)


def test_unrolled_scan_matches_the_step_loop(arrays, reference):
  # Three steps per iteration of an epoch of four: a remainder step too.
  _, losses = _train(arrays, loop="scan", scan_unroll=3)
  np.testing.assert_allclose(losses, reference[1], rtol=1e-5, atol=1e-6)


def test_one_device_matches_four(arrays, reference):
  _, losses = _train(arrays, devices=jax.devices()[:1])
  # A mean over 4 shard means instead of one mean: float rounding only.
  np.testing.assert_allclose(losses, reference[1], rtol=1e-5, atol=1e-6)


def test_vmapped_runs_match_runs_done_one_by_one(arrays, reference):
  state, losses = _train(arrays, runs_per_call=0)  # all three runs in one vmapped call
  np.testing.assert_allclose(losses, reference[1], rtol=1e-5, atol=1e-6)
  for leaf, ref in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference[0].params)):
    np.testing.assert_allclose(leaf, ref, rtol=1e-5, atol=1e-6)


def test_replicas_hold_identical_state(reference):
  state, _ = reference
  for leaf in jax.tree.leaves(state.params):
    shards = [np.asarray(shard.data) for shard in leaf.addressable_shards]
    assert len(shards) == 4
    for shard in shards[1:]:
      np.testing.assert_array_equal(shard, shards[0])


def test_a_diverging_run_stops_and_the_others_go_on(arrays):
  state, losses = _train(arrays, epochs=1, learning_rates=[0.05, 3e38, 0.1])
  diverged_at = np.asarray(state.diverged_at)
  assert diverged_at[1] >= 0 and diverged_at[0] == -1 and diverged_at[2] == -1
  assert not np.isfinite(losses[diverged_at[1], 1])
  assert np.all(np.isfinite(losses[:, [0, 2]]))
  for leaf in jax.tree.leaves(state.params):
    assert np.all(np.isfinite(leaf))  # the diverged run keeps its last finite parameters


def test_an_update_to_non_finite_parameters_is_not_kept_though_the_loss_was_finite(arrays):
  mesh = parallel.make_mesh()
  policy = ExecutionPolicy.for_mesh(mesh, loop="step")
  trainer = train.Trainer(TASK, optax.sgd, mesh=mesh, batch_size=16, policy=policy)
  # An infinite learning rate: the first loss is finite, the parameters after the step are not.
  keys = jax.random.split(jax.random.key(0), 2)
  state = trainer.init(keys, learning_rate=jnp.array([jnp.inf, 0.1]))
  initial = jax.device_get(state.params)
  state, metrics = trainer.train_epoch(state, trainer.put_data(arrays), epoch=0, max_steps=2)
  assert np.isfinite(metrics["loss"][0]).all()
  np.testing.assert_array_equal(state.diverged_at, [0, -1])
  for leaf, initial_leaf in zip(jax.tree.leaves(state.params), jax.tree.leaves(initial)):
    np.testing.assert_array_equal(leaf[0], initial_leaf[0])  # its last finite parameters
    assert not np.array_equal(leaf[1], initial_leaf[1])  # the other run trained on


@pytest.mark.parametrize("loop", ["step", "scan"])
def test_an_empty_range_of_steps_leaves_the_state_and_returns_no_metrics(arrays, loop):
  mesh = parallel.make_mesh()
  policy = ExecutionPolicy.for_mesh(mesh, loop=loop)
  trainer = train.Trainer(TASK, optax.sgd, mesh=mesh, batch_size=16, policy=policy)
  data = trainer.put_data(arrays)
  state = trainer.init(jax.random.split(jax.random.key(6), 2), learning_rate=jnp.array(0.1))
  state, _ = trainer.train_epoch(state, data, epoch=0)
  after_one_epoch = _host_leaves(state)
  steps = trainer.steps_per_epoch(data)
  # Resuming exactly at an epoch's end, and a budget of no steps.
  for epoch, limits in ((0, {"start_step": steps}), (1, {"max_steps": 0})):
    state, metrics = trainer.train_epoch(state, data, epoch=epoch, **limits)
    for leaf, before in zip(_host_leaves(state), after_one_epoch):
      np.testing.assert_array_equal(leaf, before)
    shapes = {name: value.shape for name, value in metrics.items()}
    assert shapes == {"loss": (0, 2), "accuracy": (0, 2)}


def test_checkpoint_round_trip_is_bitwise(tmp_path, arrays, reference):
  state, _ = reference
  extras = {"sum": np.arange(6.0).reshape(2, 3)}
  checkpoints = Checkpoints(tmp_path / "ckpt")
  checkpoints.save(2, state, extras, {"epochs": [1, 2]})
  assert checkpoints.latest_step() == 2
  restored, restored_extras, history = checkpoints.restore(2, state, extras)
  checkpoints.close()
  assert history == {"epochs": [1, 2]}
  np.testing.assert_array_equal(restored_extras["sum"], extras["sum"])
  for leaf, ref in zip(_host_leaves(restored), _host_leaves(state)):
    np.testing.assert_array_equal(leaf, ref)


def _host_leaves(tree):
  """The leaves as NumPy arrays, keys as their key data."""
  to_host = lambda leaf: np.asarray(
    jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf
  )
  return [to_host(leaf) for leaf in jax.tree.leaves(tree)]


def test_an_asynchronous_save_keeps_what_it_was_given_while_training_goes_on(tmp_path, arrays):
  mesh = parallel.make_mesh()
  policy = ExecutionPolicy.for_mesh(mesh, loop="step")
  trainer = train.Trainer(TASK, optax.sgd, mesh=mesh, batch_size=16, policy=policy)
  state = trainer.init(
    jax.random.split(jax.random.key(0), 2), learning_rate=jnp.asarray([0.1, 0.2])
  )
  data = trainer.put_data(arrays)
  saved, saved_params = _host_leaves(state), _host_leaves(state.params)
  history = {"epochs": [1]}
  checkpoints = Checkpoints(tmp_path / "ckpt")
  checkpoints.save(1, state, {}, history)
  # Before the files are written: the training step donates the saved state's buffers, and
  # the history grows.
  state, _ = trainer.train_epoch(state, data, 0)
  history["epochs"].append(2)
  checkpoints.close()
  assert not any(map(np.array_equal, _host_leaves(state.params), saved_params))  # it trained
  reopened = Checkpoints(tmp_path / "ckpt")
  restored, _, restored_history = reopened.restore(1, state, {})
  reopened.close()
  assert restored_history == {"epochs": [1]}
  for leaf, want in zip(_host_leaves(restored), saved):
    np.testing.assert_array_equal(leaf, want)


def test_bad_engine_arguments():
  mesh = parallel.make_mesh()
  with pytest.raises(parallel.BatchShardingError, match="not divisible"):
    train.Trainer(TASK, optax.sgd, mesh=mesh, batch_size=10)
  with pytest.raises(ValueError, match="batch_size must be positive"):
    train.Trainer(TASK, optax.sgd, mesh=mesh, batch_size=0)
  with pytest.raises(ValueError, match="loop"):
    ExecutionPolicy.for_mesh(mesh, loop="while")
  with pytest.raises(ValueError, match="scan_unroll must be positive"):
    ExecutionPolicy.for_mesh(mesh, scan_unroll=0)


class TinyConvClassifier(nn.Module):
  @nn.compact
  def __call__(self, images):
    return nn.Dense(3)(nn.Conv(2, (3, 3))(images).reshape(images.shape[0], -1))


def test_computes_convolution_looks_into_nested_jaxprs():
  x, w = jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2))
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
  nested = jax.jit(lambda x, w: jax.lax.cond(True, conv, lambda x, w: jnp.zeros((1, 4, 4, 2)), x, w))  # fmt: skip
  assert computes_convolution(jax.make_jaxpr(nested)(x, w).jaxpr)
  no_conv = jax.jit(lambda x, w: jnp.tanh(x).sum() * w.sum())
  assert not computes_convolution(jax.make_jaxpr(jax.grad(no_conv))(x, w).jaxpr)


@pytest.mark.parametrize(
  "model, convolution, loop",
  [(TinyClassifier(), "none", "scan"), (TinyConvClassifier(), "lax", "step")],
)
def test_the_engine_runs_the_policy_s_loop_for_the_workload(arrays, model, convolution, loop):
  task = classification.classifier_task(model, (4, 4, 1))
  mesh = parallel.make_mesh()
  policy = ExecutionPolicy.for_mesh(mesh, convolution=convolution)
  assert policy.loop == loop  # on the CPU, only a step with lax convolutions runs from Python
  trainer = train.Trainer(task, optax.sgd, mesh=mesh, batch_size=16, policy=policy)
  state = trainer.init(jax.random.key(0)[None], learning_rate=jnp.array([0.1]))
  # The workload is declared truly: the step computes lax convolutions exactly when declared.
  batch = {name: jnp.asarray(array[:16]) for name, array in arrays.items()}
  params = jax.tree.map(lambda leaf: leaf[0], state.params)
  step = jax.make_jaxpr(jax.grad(lambda p: task.loss(p, batch, None)[0]))(params)
  assert computes_convolution(step.jaxpr) == (convolution == "lax")
  data = trainer.put_data(arrays)
  with _compiled_programs() as compiled:
    state, metrics = trainer.train_epoch(state, data, epoch=0, max_steps=1)
  # The epoch ran the chosen loop's program.
  assert ("local_step" if loop == "step" else "local_epoch") in compiled, compiled
  assert metrics["loss"].shape == (1, 1) and np.isfinite(metrics["loss"]).all()


def test_a_single_run_vmaps_only_if_the_policy_says_so(arrays):
  mesh = parallel.make_mesh()
  losses, programs = [], []
  for vmap_single_run in (False, True):
    policy = ExecutionPolicy(platform="cpu", loop="step", runs_per_call=1,
                             vmap_single_run=vmap_single_run)  # fmt: skip
    trainer = train.Trainer(TASK, optax.sgd, mesh=mesh, batch_size=16, policy=policy)
    state = trainer.init(jax.random.key(7)[None], learning_rate=jnp.array([0.1]))
    data = trainer.put_data(arrays)
    (step,) = trainer.lower_epoch(state, data)
    programs.append(step.as_text())
    losses.append(trainer.train_epoch(state, data, epoch=0)[1]["loss"])
  assert programs[0] != programs[1]
  # The same step with and without a run axis of one: float rounding at most.
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


def test_run_slices():
  assert train.run_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
  assert train.run_slices(5, 0) == [slice(0, 5)]  # 0: all runs in one slice


@pytest.mark.parametrize("loop", ["step", "scan"])
def test_an_epoch_in_two_parts_equals_one_epoch(arrays, loop):
  mesh = parallel.make_mesh()
  policy = ExecutionPolicy.for_mesh(mesh, loop=loop)
  trainer = train.Trainer(TASK, optax.sgd, mesh=mesh, batch_size=16, policy=policy)
  data = trainer.put_data(arrays)

  def fresh_state():
    return trainer.init(jax.random.split(jax.random.key(3), 2), learning_rate=jnp.array([0.1, 0.2]))

  whole, whole_metrics = trainer.train_epoch(fresh_state(), data, epoch=0)
  part, first = trainer.train_epoch(fresh_state(), data, epoch=0, max_steps=1)
  part, rest = trainer.train_epoch(part, data, epoch=0, start_step=1)
  np.testing.assert_array_equal(
    np.concatenate([first["loss"], rest["loss"]]), whole_metrics["loss"]
  )
  for leaf, ref in zip(jax.tree.leaves(part.params), jax.tree.leaves(whole.params)):
    np.testing.assert_array_equal(leaf, ref)


@contextlib.contextmanager
def _compiled_programs():
  """Names of the jitted functions that XLA compiles inside the block."""
  names = []

  class Collect(logging.Handler):
    def emit(self, record):
      match = re.match(r"Finished XLA compilation of jit\((\w+)\)", record.getMessage())
      if match:
        names.append(match.group(1))

  handler = Collect()
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      yield names
  finally:
    logger.removeHandler(handler)


@pytest.mark.parametrize("loop, runs_per_call", [("step", 2), ("scan", 2), ("scan", 0)])
def test_compile_ahead_leaves_the_epoch_program_compiled(arrays, loop, runs_per_call):
  """Three runs two per call are slices of 2 and 1 runs: two programs to compile ahead."""
  mesh = parallel.make_mesh()
  policy = ExecutionPolicy.for_mesh(mesh, loop=loop, runs_per_call=runs_per_call)
  trainer = train.Trainer(TASK, optax.sgd, mesh=mesh, batch_size=16, policy=policy)
  data = trainer.put_data(arrays)
  state = trainer.init(jax.random.split(jax.random.key(4), 3), learning_rate=jnp.array(0.1))
  program = "local_step" if loop == "step" else "local_epoch"
  with _compiled_programs() as ahead:
    trainer.compile(state, data)
  assert ahead.count(program) == (2 if runs_per_call == 2 else 1), ahead
  with _compiled_programs() as during_epoch:
    state, metrics = trainer.train_epoch(state, data, epoch=0)
  assert program not in during_epoch, during_epoch
  assert metrics["loss"].shape == (4, 3) and np.isfinite(metrics["loss"]).all()


def test_trainers_of_one_task_share_the_parameter_initialisation(arrays):
  # A task of its own, whose initialisation no earlier test has compiled.
  task = classification.classifier_task(TinyClassifier(), (4, 4, 1))
  mesh = parallel.make_mesh()
  keys = jax.random.split(jax.random.key(5), 2)
  sgd = train.Trainer(task, optax.sgd, mesh=mesh, batch_size=16)
  adam = train.Trainer(task, optax.adam, mesh=mesh, batch_size=16)
  assert sgd._programs.init_params is adam._programs.init_params
  with _compiled_programs() as sgd_compiled:
    sgd_state = sgd.init(keys, learning_rate=jnp.array(0.1))
  with _compiled_programs() as adam_compiled:
    adam_state = adam.init(keys, learning_rate=jnp.array(0.1))
  # The parameter initialiser (jit of the task's init) compiles once, for the first trainer.
  assert sgd_compiled.count(task.init.__name__) == 1, sgd_compiled
  assert task.init.__name__ not in adam_compiled, adam_compiled
  for leaf, other in zip(jax.tree.leaves(sgd_state.params), jax.tree.leaves(adam_state.params)):
    np.testing.assert_array_equal(leaf, other)
  first_seed, second_seed = np.asarray(sgd_state.params["Dense_0"]["kernel"])
  assert not np.array_equal(first_seed, second_seed)
