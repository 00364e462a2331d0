"""The MNIST BNN benchmark: the Gaussian prior task, the snapshot schedule and the CLI end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from behaviour_data import mnist_like, save_mnist_npz

from jaxdiff.classification import classifier_task
from jaxdiff.experiments.mnist_bnn.config import BnnConfig
from jaxdiff.experiments.mnist_bnn.experiment import snapshot_schedule
from jaxdiff.experiments.mnist_bnn.registry import METHODS as METHOD_SPECS
from jaxdiff.experiments.mnist_bnn.registry import Schedule
from jaxdiff.experiments.mnist_bnn.report import headline_table, render_markdown, summarize
from jaxdiff.models import MLP
from jaxdiff.tasks import Task, with_gaussian_prior

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "experiments" / "mnist_bnn.py"
METHODS = ("sgd", "sgld", "psgld", "sghmc", "csgld")
GRID = (0.01, 0.1)
# 80 training images, the last 16 held out: 64 to train on, batches of 8 split over 4 devices.
TINY_RUN = ["--epochs", 2, "--batch-size", 8, "--seeds", 2, "--validation-size", 16,
            "--lr-grid", ",".join(map(str, GRID)), "--cycles", 2, "--quiet"]  # fmt: skip


def test_gaussian_prior_adds_half_squared_norm_over_variance_and_n():
  def data_loss(params, batch, key):
    del key
    return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2), {}

  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
  batch = {"x": jnp.array([0.5, 1.5]), "y": jnp.array([1.0, 0.0])}
  task = with_gaussian_prior(Task(lambda key: params, data_loss), num_examples=50,
                             prior_variance=2.0)  # fmt: skip
  loss, extra = task.loss(params, batch, jax.random.key(0))
  expected_data = data_loss(params, batch, None)[0]
  np.testing.assert_allclose(extra["data_loss"], expected_data, rtol=1e-6)
  np.testing.assert_allclose(loss, expected_data + 0.5 * (1 + 4 + 9) / (2.0 * 50), rtol=1e-6)
  # The prior's gradient is θ/(σ²N): weight decay 1/(σ²N).
  grads = jax.grad(lambda p: task.loss(p, batch, None)[0])(params)
  data_grads = jax.grad(lambda p: data_loss(p, batch, None)[0])(params)
  for name, value in params.items():
    np.testing.assert_allclose(grads[name], data_grads[name] + value / (2.0 * 50), rtol=1e-6)


def test_gaussian_prior_keeps_init_and_rejects_bad_arguments():
  task = classifier_task(MLP(), (28, 28, 1))
  prior = with_gaussian_prior(task, num_examples=100)
  assert prior.init is task.init
  params = prior.init(jax.random.key(0))
  assert sum(leaf.size for leaf in jax.tree.leaves(params)) == 478_410  # 784-400-400-10
  with pytest.raises(ValueError, match="num_examples"):
    with_gaussian_prior(task, num_examples=0)
  with pytest.raises(ValueError, match="prior_variance"):
    with_gaussian_prior(task, num_examples=10, prior_variance=0.0)


def test_published_protocol_is_the_seeds_length_and_cadence_whatever_the_tuning_length():
  assert BnnConfig().is_published_protocol()
  assert BnnConfig(tuning_epochs=8).is_published_protocol()
  assert not BnnConfig(epochs=20, lr_halving_epochs=4).is_published_protocol()
  assert not BnnConfig(lr_halving_epochs=10).is_published_protocol()


def test_psgld_adapts_its_preconditioner_through_the_burn_in_then_freezes_it():
  schedule = Schedule(total_steps=20, halving_steps=10, cycles=1, exploration=0.5,
                      burn_in_steps=5)  # fmt: skip
  optimizer = METHOD_SPECS["psgld"].factory(schedule)(0.1, 0.0, jax.random.key(0))
  params = {"w": jnp.zeros(3)}
  state = optimizer.init(params)
  moments = []
  for step in range(7):
    _, state = optimizer.update({"w": jnp.full(3, step + 1.0)}, state, params)
    moments.append(np.asarray(state.second_moment["w"]))
  assert not np.array_equal(moments[3], moments[4])  # step 5 of 5 still adapts
  np.testing.assert_array_equal(moments[4], moments[6])  # frozen from then on


def test_summary_leaves_diverged_seeds_out_of_the_scores_and_says_so():
  def run(status, error):
    scores = {"error": error, "nll": None if status != "ok" else 0.1, "ece": 0.01, "brier": 0.02}
    return {"method": "psgld", "learning_rate": 0.001, "status": status, "snapshots": 3,
            "epoch_time_s": 1.0, "averaged": scores, "final": scores}  # fmt: skip

  summary = summarize([run("ok", 0.03), run("diverged", 0.9), run("ok", 0.05)])["psgld"]
  assert summary["seeds"] == 3 and summary["diverged"] == 1
  assert summary["averaged"]["error"]["n"] == 2
  assert summary["averaged"]["error"]["mean"] == pytest.approx(0.04)
  assert (
    "| psgld (1 of 3 diverged, left out) | 0.001 | 4.00 ± 1.00 |"
    in headline_table({"psgld": summary})[2]
  )


@pytest.mark.parametrize(
  "epochs, cycles, per_cycle", [(100, 4, 5), (20, 5, 1), (2, 2, 1)]
)  # fmt: skip
def test_csgld_snapshots_the_epochs_that_end_in_the_sampling_phase(epochs, cycles, per_cycle):
  config = BnnConfig(epochs=epochs, cycles=cycles)
  schedule = snapshot_schedule(config, "csgld", epochs)
  assert schedule.per_cycle == per_cycle
  assert sum(schedule.takes(epoch) for epoch in range(epochs)) == cycles * per_cycle


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
  """80 train and 16 test 28x28 uint8 images: blobs whose position is the label."""
  path = tmp_path_factory.mktemp("data") / "tiny_mnist.npz"
  save_mnist_npz(mnist_like(train=80, test=16), path)
  return path


def _cli(tmp_path, *args):
  env = {**os.environ, "JAXDIFF_CACHE": str(tmp_path / "cache")}
  return subprocess.run([sys.executable, str(CLI), *map(str, args)], capture_output=True,
                        text=True, timeout=600, cwd=ROOT, env=env, check=False)  # fmt: skip


def test_cli_tunes_every_method_and_reports_averaged_and_final_scores(tmp_path, tiny_mnist):
  out = tmp_path / "out"
  result = _cli(tmp_path, "--data", tiny_mnist, "--out", out, *TINY_RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert report["tuning"]["grid"] == list(GRID)
  assert report["tuning"]["epochs"] == 2
  assert set(report["tuning"]["picked"]) == set(METHODS)
  assert all(lr in GRID for lr in report["tuning"]["picked"].values())
  assert report["data"]["train_images"] == 64
  assert report["protocol"]["diffusion"] == pytest.approx(1.0 / 64)
  for name in METHODS:
    entry = report["summary"][name]
    assert entry["learning_rate"] == report["tuning"]["picked"][name]
    assert entry["seeds"] == 2 and entry["snapshots"] >= 1
    for predictive in ("averaged", "final"):
      for metric in ("error", "nll", "ece"):
        assert entry[predictive][metric]["n"] == 2, (name, predictive, metric)
  tuning_runs = [run for run in report["runs"] if run["phase"] == "tuning"]
  assert len(tuning_runs) == len(METHODS) * len(GRID)
  assert all(run["averaged"] is not None and run["final"] is not None for run in tuning_runs)
  markdown = (out / "report.md").read_text()
  assert "shortened run" in markdown and "python experiments/mnist_bnn.py" in markdown
  # Seeds at the published length with shorter tuning: no warning, the tuning's length said.
  seeds_published = {**report, "protocol": {**report["protocol"], "published": True,
                                            "epochs": 100}}  # fmt: skip
  markdown = render_markdown(seeds_published)
  assert "shortened run" not in markdown
  halving = report["protocol"]["tuning_lr_halving_epochs"]
  assert (f"2 epochs with the learning rate halved every {halving:g}: the seeds' 100 epochs "
          "and cadence scaled down") in markdown  # fmt: skip
  for name in ("scores.png", "tuning.png", "curves.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
  "args, message",
  [
    (["--lr-grid", "0.1,0"], "--lr-grid: must be greater than 0"),
    (["--methods", "adam"], "unknown method adam"),
    (["--epochs", "3", "--cycles", "2"], "divisible by --cycles"),
  ],
)
def test_bad_flags_give_one_line_and_exit_2(tmp_path, tiny_mnist, args, message):
  result = _cli(tmp_path, "--data", tiny_mnist, "--out", tmp_path / "out", *args)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and message in lines[0], result.stderr
