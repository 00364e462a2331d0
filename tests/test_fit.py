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


def _loss_recorder(end: train.EpochEnd) -> train.HookCarry:
  """A hook that keeps every step's losses in the carry's records, as an experiment would."""
  return end.carry.extend("losses", end.metrics["loss"].tolist()).extend("complete", [end.complete])


QUIET = train.Reporter(quiet=True)


class Interrupted(Exception):
  pass


def test_resume_after_an_interruption_equals_the_uninterrupted_run(tmp_path, trainer, data):
  four_epochs = train.Budget(epochs=4)
  straight = train.fit(trainer, _state(trainer), data, four_epochs, on_epoch_end=_loss_recorder,
                       checkpointing=train.Checkpointing(tmp_path / "straight"),
                       reporter=QUIET)  # fmt: skip

  def interrupt_in_third_epoch(end):
    if end.epoch == 2:
      raise Interrupted  # the third epoch's checkpoint is never written
    return _loss_recorder(end)

  with pytest.raises(Interrupted):
    train.fit(trainer, _state(trainer), data, four_epochs, on_epoch_end=interrupt_in_third_epoch,
              checkpointing=train.Checkpointing(tmp_path / "resumed"), reporter=QUIET)  # fmt: skip
  assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["4", "8"]
  logged = []
  resumed = train.fit(trainer, _state(trainer), data, four_epochs, on_epoch_end=_loss_recorder,
                      checkpointing=train.Checkpointing(tmp_path / "resumed", resume=True),
                      reporter=train.Reporter(quiet=True, log=logged.append))  # fmt: skip
  assert logged == ["train: resumed after step 8"]
  _assert_bitwise_equal(resumed.state, straight.state)
  assert resumed.carry.records["losses"] == straight.carry.records["losses"]
  assert [call.epoch for call in resumed.calls] == [0, 1, 2, 3]


def test_a_step_budget_ends_inside_an_epoch_and_resumes_there(tmp_path, trainer, data):
  part = train.fit(trainer, _state(trainer), data, train.Budget(steps=6),
                   on_epoch_end=_loss_recorder, reporter=QUIET,
                   checkpointing=train.Checkpointing(tmp_path / "part"))  # fmt: skip
  np.testing.assert_array_equal(part.state.step, [6, 6])
  assert [(call.epoch, call.steps) for call in part.calls] == [(0, 4), (1, 2)]
  assert part.carry.records["complete"] == [True, False]
  # The same six steps taken by hand.
  by_hand, first = trainer.train_epoch(_state(trainer), data, epoch=0)
  by_hand, second = trainer.train_epoch(by_hand, data, epoch=1, max_steps=2)
  _assert_bitwise_equal(part.state, by_hand)
  assert part.carry.records["losses"] == np.concatenate([first["loss"], second["loss"]]).tolist()

  ten_steps = train.Budget(steps=10)
  resumed = train.fit(trainer, _state(trainer), data, ten_steps, on_epoch_end=_loss_recorder,
                      checkpointing=train.Checkpointing(tmp_path / "part", resume=True),
                      reporter=QUIET)  # fmt: skip
  straight = train.fit(trainer, _state(trainer), data, ten_steps, reporter=QUIET)
  _assert_bitwise_equal(resumed.state, straight.state)
  assert [(call.epoch, call.steps) for call in resumed.calls] == [(0, 4), (1, 2), (1, 2), (2, 2)]
  assert resumed.carry.records["complete"] == [True, False, True, False]


def test_short_calls_save_only_every_k_epochs_and_at_the_end(tmp_path, trainer, data):
  # 4 steps an epoch in calls of 2: saves after epoch 2 (step 8) and the last call (step 10).
  budget = train.Budget(steps=10, steps_per_call=2)
  saving = train.Checkpointing(tmp_path / "run", every_epochs=2)
  result = train.fit(trainer, _state(trainer), data, budget, checkpointing=saving, reporter=QUIET)
  assert len(result.calls) == 5
  assert sorted(int(p.name) for p in (tmp_path / "run").iterdir()) == [8, 10]

  def interrupt_at_step_10(end):
    if int(end.state.step[0]) == 10:
      raise Interrupted  # after the save at step 8, before the one at 10
    return end.carry

  with pytest.raises(Interrupted):
    train.fit(trainer, _state(trainer), data, budget, on_epoch_end=interrupt_at_step_10,
              checkpointing=train.Checkpointing(tmp_path / "cut", every_epochs=2),
              reporter=QUIET)  # fmt: skip
  assert sorted(int(p.name) for p in (tmp_path / "cut").iterdir()) == [8]
  resumed = train.fit(trainer, _state(trainer), data, budget, reporter=QUIET,
                      checkpointing=train.Checkpointing(tmp_path / "cut", resume=True,
                                                        every_epochs=2))  # fmt: skip
  _assert_bitwise_equal(resumed.state, result.state)
  with pytest.raises(ValueError, match="every_epochs"):
    train.Checkpointing(tmp_path, every_epochs=0)


def test_a_diverging_run_is_stopped_and_named_while_the_others_go_on(trainer, data):
  logged = []
  names = ["lr 0.05", "lr 3e38", "lr 0.1"]
  reporter = train.Reporter("sgd", names, quiet=True, log=logged.append)
  result = train.fit(trainer, _state(trainer, (0.05, 3e38, 0.1)), data, train.Budget(epochs=2),
                     reporter=reporter)  # fmt: skip
  diverged_at = np.asarray(result.state.diverged_at)
  assert diverged_at[1] >= 0 and diverged_at[0] == -1 and diverged_at[2] == -1
  assert logged == [
    f"sgd: lr 3e38 diverged at step {diverged_at[1]}: non-finite loss or parameters; it keeps "
    "its last finite parameters and stops, the other runs go on"
  ]
  assert len(result.calls) == 2  # the budget, for the runs that go on
  np.testing.assert_array_equal(result.state.step, [8, 8, 8])
  for leaf in jax.tree.leaves(result.state.params):
    assert np.all(np.isfinite(leaf))
  # The healthy runs trained as they would have alone.
  keys = jax.random.split(jax.random.key(0), 3)[np.array([0, 2])]  # the same runs' keys
  alone_state = trainer.init(keys, learning_rate=jnp.asarray([0.05, 0.1]))
  alone = train.fit(trainer, alone_state, data, train.Budget(epochs=2), reporter=QUIET)
  kept = jax.tree.map(lambda leaf: leaf[np.array([0, 2])], result.state.params)
  for leaf, other in zip(jax.tree.leaves(kept), jax.tree.leaves(alone.state.params)):
    np.testing.assert_allclose(leaf, other, rtol=1e-6)


def test_training_stops_once_every_run_has_diverged(trainer, data):
  logged = []
  result = train.fit(trainer, _state(trainer, (3e38, 3e38)), data, train.Budget(epochs=5),
                     reporter=train.Reporter(quiet=True, log=logged.append))  # fmt: skip
  assert len(result.calls) == 1
  assert len(logged) == 2 and logged[-1].endswith("no run is left")


def test_the_hook_carries_its_arrays_into_checkpoints(tmp_path, trainer, data):
  def count_epochs(end):
    return end.carry.with_array("epochs_seen", end.carry.arrays["epochs_seen"] + 1)

  carry = train.HookCarry(arrays={"epochs_seen": np.zeros((), np.int32)})
  first = train.fit(trainer, _state(trainer), data, train.Budget(epochs=2), carry=carry,
                    on_epoch_end=count_epochs, checkpointing=train.Checkpointing(tmp_path),
                    reporter=QUIET)  # fmt: skip
  assert int(first.carry.arrays["epochs_seen"]) == 2
  more = train.fit(trainer, _state(trainer), data, train.Budget(epochs=3), carry=carry,
                   on_epoch_end=count_epochs,
                   checkpointing=train.Checkpointing(tmp_path, resume=True),
                   reporter=train.Reporter(quiet=True, log=lambda line: None))  # fmt: skip
  assert int(more.carry.arrays["epochs_seen"]) == 3
  assert int(carry.arrays["epochs_seen"]) == 0  # the initial carry is never changed in place


def test_chained_hooks_each_see_the_carry_the_previous_returned(trainer, data):
  def count(end):
    return end.carry.with_array("count", end.carry.arrays["count"] + 1)

  def record_count(end):  # runs after count: sees this call's count
    return end.carry.extend("counts", [int(end.carry.arrays["count"])])

  carry = train.HookCarry(arrays={"count": np.zeros((), np.int32)})
  count_then_record = train.chain_hooks(count, record_count)
  result = train.fit(trainer, _state(trainer), data, train.Budget(epochs=3), carry=carry,
                     on_epoch_end=count_then_record, reporter=QUIET)  # fmt: skip
  assert result.carry.records["counts"] == [1, 2, 3]
  assert int(result.carry.arrays["count"]) == 3


def test_a_hook_that_returns_no_carry_is_refused(trainer, data):
  def forgets_to_return(end):
    end.carry.extend("losses", end.metrics["loss"].tolist())

  with pytest.raises(TypeError, match="returns the new HookCarry"):
    train.fit(trainer, _state(trainer), data, train.Budget(steps=1),
              on_epoch_end=forgets_to_return, reporter=QUIET)  # fmt: skip


def test_fit_phases_are_timed(trainer, data, tmp_path):
  clock = train.PhaseClock()
  train.fit(trainer, _state(trainer), data, train.Budget(epochs=1),
            checkpointing=train.Checkpointing(tmp_path), reporter=QUIET, clock=clock)  # fmt: skip
  assert set(clock.seconds) == {"train", "checkpoint"}
  assert all(seconds >= 0 for seconds in clock.seconds.values())


def test_fit_refuses_an_earlier_runs_checkpoints_and_bad_budgets(tmp_path, trainer, data):
  one_step, checkpointing = train.Budget(steps=1), train.Checkpointing(tmp_path)
  train.fit(trainer, _state(trainer), data, one_step, checkpointing=checkpointing, reporter=QUIET)
  with pytest.raises(CheckpointsExistError, match="--resume"):
    train.fit(trainer, _state(trainer), data, one_step, checkpointing=checkpointing,
              reporter=QUIET)  # fmt: skip
  with pytest.raises(ValueError, match="not both"):
    train.Budget(steps=1, epochs=1)
  with pytest.raises(ValueError, match="give fit a budget"):
    train.Budget()
  with pytest.raises(ValueError, match="must not be negative"):
    train.Budget(steps=-1)


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
  spent = train.fit(trainer, _state(trainer), data, train.Budget(time_limit_s=0.0),
                    reporter=QUIET)  # fmt: skip
  assert [call.steps for call in spent.calls] == [1]
  # Plenty of time: after that step, the rest of the epoch, then the step budget ends it.
  ample = train.fit(trainer, _state(trainer), data, train.Budget(steps=6, time_limit_s=3600.0),
                    reporter=QUIET)  # fmt: skip
  assert [call.steps for call in ample.calls] == [1, STEPS_PER_EPOCH - 1, 2]
  np.testing.assert_array_equal(ample.state.step, [6, 6])
