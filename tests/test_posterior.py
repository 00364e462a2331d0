"""Posterior collection: which epochs or steps are snapshots, the Bayesian model average, resume, Brier score."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import classification, metrics, parallel, posterior, train

NUM_RUNS = 2
EVAL_IMAGES = 16


class TinyClassifier(nn.Module):
  @nn.compact
  def __call__(self, images):
    return nn.Dense(3)(images.reshape(images.shape[0], -1))


MODEL = TinyClassifier()
TASK = classification.classifier_task(MODEL, (4, 4, 1))


@pytest.fixture(scope="module")
def setup():
  mesh = parallel.make_mesh()
  trainer = train.Trainer(TASK, jaxdiff.langevin_sgd, mesh=mesh, batch_size=16)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 64).astype(np.int32)
  images = np.clip(labels[:, None, None, None] * 80 + rng.integers(0, 60, (64, 4, 4, 1)), 0, 255)
  images = images.astype(np.uint8)
  data = trainer.put_data({"image": images, "label": labels})
  predict = classification.make_predictor(MODEL, mesh, chunk_size=8)
  return trainer, data, predict, images[:EVAL_IMAGES]


QUIET = train.Reporter(quiet=True)


def _carry():
  return train.HookCarry(arrays={"posterior": posterior.init_average(NUM_RUNS, EVAL_IMAGES, 3)})


def _state(trainer):
  return trainer.init(jax.random.split(jax.random.key(0), NUM_RUNS), learning_rate=0.1,
                      diffusion=1e-3, key=jax.random.split(jax.random.key(1), NUM_RUNS))  # fmt: skip


def test_epoch_and_step_snapshots():
  burn_in = posterior.SnapshotEpochs(burn_in=3, thin=2)
  assert [e for e in range(10) if burn_in.takes(e)] == [3, 5, 7, 9]
  cyclical = posterior.SnapshotEpochs(cycle_length=4, per_cycle=2)
  assert [e for e in range(12) if cyclical.takes(e)] == [2, 3, 6, 7, 10, 11]
  late = posterior.SnapshotEpochs(burn_in=5, cycle_length=4)  # no snapshot in burn-in
  assert [e for e in range(12) if late.takes(e)] == [7, 11]


def test_the_average_is_the_mean_of_the_snapshots(setup):
  trainer, data, predict, evaluation = setup
  schedule = posterior.SnapshotEpochs(burn_in=1, thin=2)
  seen = []

  def record_and_average(end):
    seen.append(predict(end.state.params, evaluation))
    return posterior.averaging_hook(predict, evaluation, schedule)(end)

  result = train.fit(trainer, _state(trainer), data, train.Budget(epochs=6), carry=_carry(),
                     on_epoch_end=record_and_average, reporter=QUIET)  # fmt: skip
  average = result.carry.arrays["posterior"]
  assert int(average.count) == 3  # epochs 1, 3 and 5
  expected = np.mean([seen[epoch] for epoch in (1, 3, 5)], axis=0)
  np.testing.assert_allclose(posterior.averaged_probs(average), expected, rtol=1e-6)
  assert posterior.averaged_probs(average).shape == (NUM_RUNS, len(evaluation), 3)


def test_resume_mid_run_gives_the_same_average(tmp_path, setup):
  trainer, data, predict, evaluation = setup
  hook = posterior.averaging_hook(predict, evaluation, posterior.SnapshotEpochs(burn_in=1))

  five_epochs = train.Budget(epochs=5)
  straight = train.fit(trainer, _state(trainer), data, five_epochs, carry=_carry(),
                       on_epoch_end=hook, reporter=QUIET)  # fmt: skip
  train.fit(trainer, _state(trainer), data, train.Budget(epochs=3), carry=_carry(),
            on_epoch_end=hook, checkpointing=train.Checkpointing(tmp_path),
            reporter=QUIET)  # fmt: skip
  resumed = train.fit(trainer, _state(trainer), data, five_epochs, carry=_carry(),
                      on_epoch_end=hook, checkpointing=train.Checkpointing(tmp_path, resume=True),
                      reporter=train.Reporter(quiet=True, log=lambda line: None))  # fmt: skip
  for name in ("probs_sum", "count"):
    np.testing.assert_array_equal(
      np.asarray(getattr(resumed.carry.arrays["posterior"], name)),
      np.asarray(getattr(straight.carry.arrays["posterior"], name)),
    )


def test_an_average_without_snapshots_says_why():
  with pytest.raises(ValueError, match="no snapshot"):
    posterior.averaged_probs(posterior.init_average(1, 2, 3))
  with pytest.raises(ValueError, match="shape"):
    posterior.add_snapshot(posterior.init_average(1, 2, 3), jnp.zeros((1, 2, 4)))


def test_brier_score_and_the_scores_together():
  probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
  labels = np.array([0, 1, 0])
  # 0 for certain and right, (0.25 + 0.25) for an even guess, 2 for certain and wrong.
  assert metrics.brier_score(probs, labels) == pytest.approx((0 + 0.5 + 2) / 3)
  scores = metrics.classification_scores(probs, labels)
  assert scores["accuracy"] == pytest.approx(1 / 3) and scores["error"] == pytest.approx(2 / 3)
  assert set(scores) == {"accuracy", "error", "nll", "ece", "brier"}


def test_the_hook_leaves_incomplete_epochs_alone(setup):
  trainer, data, predict, evaluation = setup
  hook = posterior.averaging_hook(predict, evaluation, posterior.SnapshotEpochs())
  result = train.fit(trainer, _state(trainer), data, train.Budget(steps=6), carry=_carry(),
                     on_epoch_end=hook, reporter=QUIET)  # fmt: skip
  assert int(result.carry.arrays["posterior"].count) == 1  # epoch 0; the 2 steps of epoch 1 are not


def test_the_last_k_snapshots_parameters_are_kept(tmp_path, setup):
  trainer, data, predict, evaluation = setup
  snapshots = posterior.ParameterSnapshots(tmp_path / "snapshots", keep=2)
  hook = posterior.averaging_hook(predict, evaluation, posterior.SnapshotEpochs(burn_in=1),
                                  snapshots=snapshots)  # fmt: skip
  params_at = {}

  def record_and_snapshot(end):
    params_at[int(end.state.step[0])] = jax.device_get(end.state.params)
    return hook(end)

  result = train.fit(trainer, _state(trainer), data, train.Budget(epochs=5), carry=_carry(),
                     on_epoch_end=record_and_snapshot, reporter=QUIET)  # fmt: skip
  snapshots.save(20, result.state.params)  # already kept: not written again
  snapshots.close()
  # 64 images in batches of 16: 4 steps an epoch; snapshots after epochs 1-4 (steps 8-20).
  assert int(result.carry.arrays["posterior"].count) == 4
  assert snapshots.steps() == [16, 20]
  for step in (16, 20):
    restored = snapshots.restore(step, like=result.state.params)
    for kept, recorded in zip(jax.tree.leaves(restored), jax.tree.leaves(params_at[step])):
      np.testing.assert_array_equal(np.asarray(kept), recorded)
  with pytest.raises(ValueError, match="at least 1"):
    posterior.ParameterSnapshots(tmp_path / "none", keep=0)


def test_step_snapshots_every_k_steps_inside_epochs(setup):
  trainer, data, predict, evaluation = setup
  # 4 steps an epoch; calls of 2 steps, snapshots after steps 4, 6, 8 and 10.
  schedule = posterior.SnapshotSteps(burn_in=4, thin=2)
  assert [s for s in range(12) if schedule.takes_step(s)] == [4, 6, 8, 10]
  seen = {}

  def record_and_average(end):
    seen[int(end.state.step[0])] = predict(end.state.params, evaluation)
    return posterior.averaging_hook(predict, evaluation, schedule)(end)

  result = train.fit(trainer, _state(trainer), data, train.Budget(steps=10, steps_per_call=2),
                     carry=_carry(), on_epoch_end=record_and_average, reporter=QUIET)  # fmt: skip
  assert [call.steps for call in result.calls] == [2] * 5 and sorted(seen) == [2, 4, 6, 8, 10]
  average = result.carry.arrays["posterior"]
  assert int(average.count) == 4
  expected = np.mean([seen[step] for step in (4, 6, 8, 10)], axis=0)
  np.testing.assert_allclose(posterior.averaged_probs(average), expected, rtol=1e-6)


def test_calls_of_k_steps_end_at_multiples_of_k_across_epochs(setup):
  trainer, data, _, _ = setup
  # 4 steps an epoch, calls of at most 3: they end at 3, the epoch's end 4, then 6, 8, 9.
  result = train.fit(trainer, _state(trainer), data, train.Budget(steps=9, steps_per_call=3),
                     reporter=QUIET)  # fmt: skip
  assert np.cumsum([call.steps for call in result.calls]).tolist() == [3, 4, 6, 8, 9]
  with pytest.raises(ValueError, match="steps_per_call"):
    train.Budget(steps=9, steps_per_call=0)
