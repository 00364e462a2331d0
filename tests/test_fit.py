"""The fit loop: budgets, resume after an interruption, divergence, hooks, the parameter EMA."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff import classification, parallel, train
from jaxdiff.checkpoint import CheckpointsExistError

STEPS_PER_EPOCH = 4  # 64 examples, batch 16


class TinyClassifier(nn.Module):
  @nn.compact
  def __call__(self, images):
    return nn.Dense(3)(images.reshape(images.shape[0], -1))


TASK = classification.classifier_task(TinyClassifier(), (4, 4, 1))


@pytest.fixture(scope="module")
def trainer():
  return train.Trainer(TASK, optax.sgd, mesh=parallel.make_mesh(), batch_size=16)


@pytest.fixture(scope="module")
def data(trainer):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 64).astype(np.int32)
  images = np.clip(labels[:, None, None, None] * 80 + rng.integers(0, 60, (64, 4, 4, 1)), 0, 255)
  return trainer.put_data({"image": images.astype(np.uint8), "label": labels})


def _state(trainer, learning_rates=(0.05, 0.1)):
  keys = jax.random.split(jax.random.key(0), len(learning_rates))
  return trainer.init(keys, learning_rate=jnp.asarray(learning_rates))


def _host_leaves(tree):
  to_host = lambda leaf: np.asarray(  # noqa: E731
    jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf
  )
  return [to_host(leaf) for leaf in jax.tree.leaves(tree)]


def _assert_bitwise_equal(tree, other):
  leaves, other_leaves = _host_leaves(tree), _host_leaves(other)
  assert len(leaves) == len(other_leaves) > 0
  for leaf, other_leaf in zip(leaves, other_leaves):
    np.testing.assert_array_equal(leaf, other_leaf)


def _loss_recorder(end: train.EpochEnd):
  """A hook that keeps every step's losses in the history, as an experiment would."""
  end.history.setdefault("losses", []).extend(end.metrics["loss"].tolist())
  end.history.setdefault("complete", []).append(end.complete)


class Interrupted(Exception):
  pass


def test_resume_after_an_interruption_equals_the_uninterrupted_run(tmp_path, trainer, data):
  straight = train.fit(trainer, _state(trainer), data, epochs=4, on_epoch_end=_loss_recorder,
                       checkpoint_dir=tmp_path / "straight", quiet=True)  # fmt: skip

  def interrupt_in_third_epoch(end):
    if end.epoch == 2:
      raise Interrupted  # the third epoch's checkpoint is never written
    _loss_recorder(end)

  with pytest.raises(Interrupted):
    train.fit(trainer, _state(trainer), data, epochs=4, on_epoch_end=interrupt_in_third_epoch,
              checkpoint_dir=tmp_path / "resumed", quiet=True)  # fmt: skip
  assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["4", "8"]
  logged = []
  resumed = train.fit(trainer, _state(trainer), data, epochs=4, on_epoch_end=_loss_recorder,
                      checkpoint_dir=tmp_path / "resumed", resume=True, quiet=True,
                      log=logged.append)  # fmt: skip
  assert logged == ["train: resumed after step 8"]
  _assert_bitwise_equal(resumed.state, straight.state)
  assert resumed.history["losses"] == straight.history["losses"]
  assert [c["epoch"] for c in resumed.history["calls"]] == [0, 1, 2, 3]


def test_a_step_budget_ends_inside_an_epoch_and_resumes_there(tmp_path, trainer, data):
  part = train.fit(trainer, _state(trainer), data, steps=6, on_epoch_end=_loss_recorder,
                   checkpoint_dir=tmp_path / "part", quiet=True)  # fmt: skip
  np.testing.assert_array_equal(part.state.step, [6, 6])
  assert [(c["epoch"], c["steps"]) for c in part.history["calls"]] == [(0, 4), (1, 2)]
  assert part.history["complete"] == [True, False]
  # The same six steps taken by hand.
  by_hand, first = trainer.train_epoch(_state(trainer), data, epoch=0)
  by_hand, second = trainer.train_epoch(by_hand, data, epoch=1, max_steps=2)
  _assert_bitwise_equal(part.state, by_hand)
  assert part.history["losses"] == np.concatenate([first["loss"], second["loss"]]).tolist()

  resumed = train.fit(trainer, _state(trainer), data, steps=10, on_epoch_end=_loss_recorder,
                      checkpoint_dir=tmp_path / "part", resume=True, quiet=True, log=print)  # fmt: skip
  straight = train.fit(trainer, _state(trainer), data, steps=10, quiet=True)
  _assert_bitwise_equal(resumed.state, straight.state)
  assert [(c["epoch"], c["steps"]) for c in resumed.history["calls"]] == [
    (0, 4), (1, 2), (1, 2), (2, 2)
  ]  # fmt: skip
  assert resumed.history["complete"] == [True, False, True, False]


def test_a_diverging_run_is_stopped_and_named_while_the_others_go_on(trainer, data):
  logged = []
  names = ["lr 0.05", "lr 3e38", "lr 0.1"]
  result = train.fit(trainer, _state(trainer, (0.05, 3e38, 0.1)), data, epochs=2,
                     run_names=names, name="sgd", quiet=True, log=logged.append)  # fmt: skip
  diverged_at = np.asarray(result.state.diverged_at)
  assert diverged_at[1] >= 0 and diverged_at[0] == -1 and diverged_at[2] == -1
  assert logged == [
    f"sgd: lr 3e38 diverged at step {diverged_at[1]}: non-finite loss; it keeps its last finite "
    "parameters and stops, the other runs go on"
  ]
  assert len(result.history["calls"]) == 2  # the budget, for the runs that go on
  np.testing.assert_array_equal(result.state.step, [8, 8, 8])
  for leaf in jax.tree.leaves(result.state.params):
    assert np.all(np.isfinite(leaf))
  # The healthy runs trained as they would have alone.
  keys = jax.random.split(jax.random.key(0), 3)[np.array([0, 2])]  # the same runs' keys
  alone_state = trainer.init(keys, learning_rate=jnp.asarray([0.05, 0.1]))
  alone = train.fit(trainer, alone_state, data, epochs=2, quiet=True)
  kept = jax.tree.map(lambda leaf: leaf[np.array([0, 2])], result.state.params)
  for leaf, other in zip(jax.tree.leaves(kept), jax.tree.leaves(alone.state.params)):
    np.testing.assert_allclose(leaf, other, rtol=1e-6)


def test_training_stops_once_every_run_has_diverged(trainer, data):
  logged = []
  result = train.fit(trainer, _state(trainer, (3e38, 3e38)), data, epochs=5, quiet=True,
                     log=logged.append)  # fmt: skip
  assert len(result.history["calls"]) == 1
  assert len(logged) == 2 and logged[-1].endswith("no run is left")


def test_the_hook_carries_extras_into_checkpoints(tmp_path, trainer, data):
  def count_epochs(end):
    return {"epochs_seen": end.extras["epochs_seen"] + 1}

  extras = {"epochs_seen": np.zeros((), np.int32)}
  first = train.fit(trainer, _state(trainer), data, epochs=2, extras=extras,
                    on_epoch_end=count_epochs, checkpoint_dir=tmp_path, quiet=True)  # fmt: skip
  assert int(first.extras["epochs_seen"]) == 2
  more = train.fit(trainer, _state(trainer), data, epochs=3, extras=extras,
                   on_epoch_end=count_epochs, checkpoint_dir=tmp_path, resume=True, quiet=True,
                   log=lambda line: None)  # fmt: skip
  assert int(more.extras["epochs_seen"]) == 3


def test_fit_phases_are_timed(trainer, data, tmp_path):
  clock = train.PhaseClock()
  train.fit(trainer, _state(trainer), data, epochs=1, checkpoint_dir=tmp_path, quiet=True,
            clock=clock)  # fmt: skip
  assert set(clock.seconds) == {"train", "checkpoint"}
  assert all(seconds >= 0 for seconds in clock.seconds.values())


def test_fit_refuses_an_earlier_runs_checkpoints_and_bad_budgets(tmp_path, trainer, data):
  train.fit(trainer, _state(trainer), data, steps=1, checkpoint_dir=tmp_path, quiet=True)
  with pytest.raises(CheckpointsExistError, match="--resume"):
    train.fit(trainer, _state(trainer), data, steps=1, checkpoint_dir=tmp_path, quiet=True)
  with pytest.raises(ValueError, match="not both"):
    train.fit(trainer, _state(trainer), data, steps=1, epochs=1)
  with pytest.raises(ValueError, match="give fit a budget"):
    train.fit(trainer, _state(trainer), data)
  with pytest.raises(ValueError, match="must not be negative"):
    train.fit(trainer, _state(trainer), data, steps=-1)


def test_the_parameter_ema_follows_every_step(data):
  ema_trainer = train.Trainer(TASK, optax.sgd, mesh=parallel.make_mesh(), batch_size=16,
                              ema_decay=0.9)  # fmt: skip
  state = _state(ema_trainer)
  initial = jax.device_get(state.params)
  _assert_bitwise_equal(state.ema_params, initial)
  state, _ = ema_trainer.train_epoch(state, data, epoch=0, max_steps=1)
  after_one = jax.device_get(state.params)
  for ema, old, new in zip(*(jax.tree.leaves(t) for t in (state.ema_params, initial, after_one))):
    np.testing.assert_allclose(ema, 0.9 * old + 0.1 * new, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="ema_decay"):
    train.Trainer(TASK, optax.sgd, mesh=parallel.make_mesh(), batch_size=16, ema_decay=1.0)


def test_a_time_limit_stops_training_at_the_pace_it_measured(trainer, data):
  # No time at all: the first call runs one step (it measures the pace), and no other; a
  # whole first epoch could overrun a budget many times over.
  spent = train.fit(trainer, _state(trainer), data, time_limit_s=0.0, quiet=True)
  assert [c["steps"] for c in spent.history["calls"]] == [1]
  # Plenty of time: after that step, the rest of the epoch, then the step budget ends it.
  ample = train.fit(trainer, _state(trainer), data, steps=6, time_limit_s=3600.0, quiet=True)
  assert [c["steps"] for c in ample.history["calls"]] == [1, STEPS_PER_EPOCH - 1, 2]
  np.testing.assert_array_equal(ample.state.step, [6, 6])
