"""Live metrics: TensorBoard event files and JSON lines per run, written by fit and read back."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_fit import TASK, Interrupted

import jaxdiff
from jaxdiff import parallel, summaries, train


@pytest.fixture(scope="module")
def setup():
  trainer = train.Trainer(TASK, jaxdiff.langevin_sgd, mesh=parallel.make_mesh(), batch_size=16)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 64).astype(np.int32)
  images = np.clip(labels[:, None, None, None] * 80 + rng.integers(0, 60, (64, 4, 4, 1)), 0, 255)
  return trainer, trainer.put_data({"image": images.astype(np.uint8), "label": labels})


def _state(trainer):
  return trainer.init(jax.random.split(jax.random.key(0), 2), learning_rate=jnp.array([0.05, 0.1]),
                      diffusion=1e-3, key=jax.random.split(jax.random.key(1), 2))  # fmt: skip


def _assert_same_series(series, other):
  assert [step for step, _ in series] == [step for step, _ in other]
  np.testing.assert_allclose([v for _, v in series], [v for _, v in other], rtol=1e-6)


def _reporter(root, **kwargs):
  writer = summaries.Summaries(root, ["lr 0.05", "lr 0.1"])
  return writer, train.Reporter(quiet=True, log=lambda line: None, summaries=writer,
                                summary_every=3, **kwargs)  # fmt: skip


def test_fit_writes_each_runs_training_series_to_tensorboard_and_json_lines(setup, tmp_path):
  trainer, data = setup
  writer, reporter = _reporter(tmp_path)
  result = train.fit(trainer, _state(trainer), data, train.Budget(epochs=2), reporter=reporter)
  writer.close()
  assert [d.name for d in writer.directories] == ["lr_0.05", "lr_0.1"]
  for run, directory in enumerate(writer.directories):
    series = summaries.read_scalars(directory)
    # 4 steps an epoch, means over 3 steps: intervals end at steps 3, 4, 6 and 8.
    assert [step for step, _ in series["train/loss"]] == [3, 4, 6, 8]
    assert set(series) >= {"train/accuracy", "hyperparams/learning_rate",
                           "hyperparams/diffusion", "train/images_per_second"}  # fmt: skip
    assert series["hyperparams/learning_rate"][0][1] == pytest.approx([0.05, 0.1][run])
    lines = [json.loads(line) for line in (directory / "scalars.jsonl").read_text().splitlines()]
    losses = [(line["step"], line["train/loss"]) for line in lines if "train/loss" in line]
    _assert_same_series(losses, series["train/loss"])
  assert result.state.step[0] == 8


def test_a_resumed_fit_continues_the_same_series(setup, tmp_path):
  trainer, data = setup

  def interrupt_in_second_epoch(end):
    if end.epoch == 1:
      raise Interrupted  # after the second epoch's summaries, before its checkpoint
    return end.carry

  writer, reporter = _reporter(tmp_path / "summaries")
  with pytest.raises(Interrupted):
    train.fit(trainer, _state(trainer), data, train.Budget(epochs=3), reporter=reporter,
              on_epoch_end=interrupt_in_second_epoch,
              checkpointing=train.Checkpointing(tmp_path / "checkpoints"))  # fmt: skip
  writer.close()
  writer, reporter = _reporter(tmp_path / "summaries")
  train.fit(trainer, _state(trainer), data, train.Budget(epochs=3), reporter=reporter,
            checkpointing=train.Checkpointing(tmp_path / "checkpoints", resume=True))  # fmt: skip
  writer.close()
  straight, reporter = _reporter(tmp_path / "straight")
  train.fit(trainer, _state(trainer), data, train.Budget(epochs=3), reporter=reporter)
  straight.close()
  for resumed_dir, straight_dir in zip(writer.directories, straight.directories):
    resumed_loss = summaries.read_scalars(resumed_dir)["train/loss"]
    _assert_same_series(resumed_loss, summaries.read_scalars(straight_dir)["train/loss"])
    steps = [json.loads(line)["step"] for line in
             (resumed_dir / "scalars.jsonl").read_text().splitlines()]  # fmt: skip
    assert steps == sorted(steps)  # the interrupted epoch's lines were dropped, then rewritten


def test_images_and_bad_run_names(tmp_path):
  writer = summaries.Summaries(tmp_path, ["a/b", "c"])
  writer.image(5, "samples", np.zeros((8, 8, 1), np.uint8), run=0)
  writer.close()
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(str(tmp_path / "a_b"))
  events.Reload()
  assert events.Tags()["images"] == ["samples"]
  with pytest.raises(ValueError, match="distinct"):
    summaries.Summaries(tmp_path, ["a b", "a_b"])
