"""A scored group of classifier runs: epoch records, the posterior average, shift, resume."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import classification, parallel, posterior, train
from jaxdiff.classification import Evaluation

QUIET = train.Reporter(quiet=True, log=lambda line: None)


class TinyClassifier(nn.Module):
  @nn.compact
  def __call__(self, images):
    return nn.Dense(3)(images.reshape(images.shape[0], -1))


MODEL = TinyClassifier()


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 96).astype(np.int32)
  images = np.clip(labels[:, None, None, None] * 80 + rng.integers(0, 60, (96, 4, 4, 1)), 0, 255)
  images = images.astype(np.uint8)
  mesh = parallel.make_mesh()
  task = classification.classifier_task(MODEL, (4, 4, 1))
  trainer = train.Trainer(task, jaxdiff.langevin_sgd, mesh=mesh, batch_size=16)
  predict = classification.make_predictor(MODEL, mesh, chunk_size=8)
  data = trainer.put_data({"image": images[:64], "label": labels[:64]})
  return trainer, data, predict, Evaluation("held out", images[64:], labels[64:])


def _state(trainer, learning_rates=(0.05, 0.1)):
  runs = len(learning_rates)
  return trainer.init(jax.random.split(jax.random.key(0), runs),
                      learning_rate=jnp.asarray(learning_rates), diffusion=1e-3,
                      key=jax.random.split(jax.random.key(1), runs))  # fmt: skip


def _score(setup, evaluation=None, learning_rates=(0.05, 0.1), reporter=QUIET, **kwargs):
  trainer, data, predict, held_out = setup
  return classification.train_and_score(
    trainer, _state(trainer, learning_rates), data, train.Budget(epochs=4), predict=predict,
    evaluation=evaluation or held_out, num_classes=3,
    snapshots=posterior.SnapshotEpochs(burn_in=2), reporter=reporter, **kwargs,
  )  # fmt: skip


def test_each_run_is_scored_each_epoch_at_the_end_and_through_its_average(setup):
  _, _, predict, held_out = setup
  group = _score(setup)
  assert len(group.runs) == 2
  for run, run_scores in enumerate(group.runs):
    assert run_scores["status"] == "ok" and run_scores["diverged_at_step"] is None
    assert run_scores["snapshots"] == 2  # epochs 2 and 3 (0-based)
    epochs = run_scores["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4] and epochs[-1]["step"] == 16
    assert epochs[0]["averaged"] is None and epochs[2]["averaged"] is not None
    assert epochs[-1]["averaged"] == run_scores["averaged"]  # the average after the last epoch
    final_probs = predict(group.state.params, held_out.images)[run]
    assert run_scores["final"] == classification.scores(final_probs, held_out.labels)
    assert epochs[-1]["current"] == run_scores["final"]
    assert set(epochs[0]["train"]) == {"loss", "accuracy"}
    assert run_scores["step_time_s"] > 0 and run_scores["last_epoch_loss_std"] >= 0
    # One timing per call of the engine; the median leaves the first (compilation) out.
    assert len(run_scores["step_times_s"]) == len(group.runs[0]["epochs"])
    assert run_scores["step_time_s"] == pytest.approx(np.median(run_scores["step_times_s"][1:]))
    assert run_scores["shift"] is None
  assert group.runs[0]["final"] != group.runs[1]["final"]  # the runs differ


def test_rotated_copies_are_scored_per_angle_and_zero_is_the_plain_score(setup):
  _, _, _, held_out = setup
  rotated = held_out._replace(angles=(0, 90))
  group = _score(setup, rotated)
  plain = _score(setup)
  for with_shift, without in zip(group.runs, plain.runs):
    shift = with_shift["shift"]
    assert shift["angles"] == [0, 90]
    assert shift["final"][0] == without["final"] == with_shift["final"]
    assert shift["averaged"][0] == without["averaged"] == with_shift["averaged"]
    assert shift["final"][1] != shift["final"][0]
  with pytest.raises(ValueError, match="include 0"):
    _score(setup, held_out._replace(angles=(90,)))


def test_a_diverged_run_is_scored_and_says_so(setup):
  group = _score(setup, learning_rates=(0.05, 3e38))
  assert group.runs[0]["status"] == "ok"
  assert group.runs[1]["status"] == "diverged" and group.runs[1]["diverged_at_step"] >= 0


def test_a_resumed_group_scores_as_an_uninterrupted_one(setup, tmp_path):
  trainer, data, predict, held_out = setup
  straight = _score(setup)
  classification.train_and_score(
    trainer, _state(trainer), data, train.Budget(epochs=3), predict=predict, evaluation=held_out,
    num_classes=3, snapshots=posterior.SnapshotEpochs(burn_in=2), reporter=QUIET,
    checkpointing=train.Checkpointing(tmp_path),
  )  # fmt: skip
  resumed = _score(setup, checkpointing=train.Checkpointing(tmp_path, resume=True))
  for a, b in zip(straight.runs, resumed.runs):
    for key in ("final", "averaged", "snapshots", "status", "last_epoch_loss_std"):
      assert a[key] == b[key], key
    assert [e["current"] for e in a["epochs"]] == [e["current"] for e in b["epochs"]]


def test_the_epoch_scores_go_to_the_reporters_summaries(setup, tmp_path):
  from jaxdiff import summaries

  writer = summaries.Summaries(tmp_path, ["lr 0.05", "lr 0.1"])
  reporter = train.Reporter(quiet=True, log=lambda line: None, summaries=writer)
  group = _score(setup, reporter=reporter)
  writer.close()
  series = summaries.read_scalars(writer.directories[1])
  assert [step for step, _ in series["held out/error"]] == [4, 8, 12, 16]
  assert [step for step, _ in series["held out_averaged/error"]] == [12, 16]  # after snapshots
  assert series["held out/error"][-1][1] == pytest.approx(group.runs[1]["final"]["error"])
  assert "train/loss" in series
