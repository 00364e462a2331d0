"""The MNIST BNN benchmark: the Gaussian prior task, the snapshots taken and the CLI end to end."""

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

from jaxdiff import cli, config, summaries
from jaxdiff.classification import classifier_task
from jaxdiff.experiments.mnist_bnn.config import BnnConfig
from jaxdiff.experiments.mnist_bnn.experiment import rerun_command, snapshots_of
from jaxdiff.experiments.mnist_bnn.pool import PoolError, pool_experiment, pool_reports
from jaxdiff.experiments.mnist_bnn.registry import METHODS as METHOD_SPECS
from jaxdiff.experiments.mnist_bnn.registry import RunPlan
from jaxdiff.experiments.mnist_bnn.report import (
  chain_milestones,
  headline_table,
  render_markdown,
  summarize,
  summarize_chain,
)
from jaxdiff.models import MLP
from jaxdiff.tasks import Task, with_gaussian_prior

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "experiments" / "mnist_bnn.py"
POOL_CLI = ROOT / "experiments" / "mnist_bnn_pool.py"
METHODS = ("sgd", "sgld", "psgld", "sghmc", "csgld")
GRID = (0.01, 0.1)
# 80 training images, the last 16 held out: 64 to train on, batches of 8 split over 4 devices.
TINY_RUN = ["--epochs", 2, "--batch-size", 8, "--seeds", 2, "--validation-size", 16,
            "--lr-grid", ",".join(map(str, GRID)), "--cycles", 2, "--temperatures", "1,0.1",
            "--shift-angles", "0,90", "--quiet"]  # fmt: skip


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


def test_each_protocol_is_a_preset_and_flags_change_one_ingredient_at_a_time():
  assert BnnConfig().is_published_protocol()
  assert BnnConfig(tuning_epochs=8).is_published_protocol()  # tuning's length is not fixed
  assert not BnnConfig(epochs=20, lr_halving_epochs=4).is_published_protocol()
  paper = BnnConfig.preset("korattikara2015")
  assert paper.is_published_protocol() and not paper.tuned
  assert (paper.seeds, paper.epochs, paper.lr_schedule, paper.thin_steps) == (
    10,
    2000,
    "constant",
    100,
  )
  assert not BnnConfig.preset("korattikara2015", epochs=100).is_published_protocol()
  parsed, _, _ = cli.parse(BnnConfig, ["--protocol", "korattikara2015", "--seeds", "3"],
                           description="d", default_out="out")  # fmt: skip
  assert parsed == BnnConfig.preset("korattikara2015", seeds=3)
  assert config.flags_to_rerun(parsed) == ["--protocol", "korattikara2015", "--seeds", "3"]
  assert config.flags_to_rerun(BnnConfig(seeds=5)) == ["--seeds", "5"]
  command = rerun_command(parsed, "mnist.npz", "out")
  assert command.endswith("--protocol korattikara2015 --seeds 3")


def test_psgld_adapts_its_preconditioner_through_the_burn_in_then_freezes_it():
  plan = RunPlan(total_steps=20, lr_schedule="halving", halving_steps=10, cycles=1,
                 exploration=0.5, burn_in_steps=5)  # fmt: skip
  optimizer = METHOD_SPECS["psgld"].factory(plan)(0.1, 0.0, jax.random.key(0))
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
            "step_time_s": 1e-3, "averaged": scores, "final": scores}  # fmt: skip

  summary = summarize([run("ok", 0.03), run("diverged", 0.9), run("ok", 0.05)],
                      {"psgld": 0.001, "sgld": None})  # fmt: skip
  entry = summary["psgld"]
  assert entry["seeds"] == 3 and entry["diverged"] == 1
  assert entry["averaged"]["error"]["n"] == 2
  assert entry["averaged"]["error"]["mean"] == pytest.approx(0.04)
  # The standard error of two values 0.02 apart: their sample std √2·0.01 over √2.
  assert "| psgld (1 of 3 diverged, left out) | 0.001 | 4.00 ± 1.00 |" in headline_table(summary)[2]
  assert summary["sgld"]["learning_rate"] is None  # every tuning run diverged: a result
  assert "sgld (every tuning run diverged" in headline_table(summary)[3]


@pytest.mark.parametrize(
  "epochs, milestones",
  [(1, [1]), (2, [1, 2]), (7, [1, 2, 5, 7]), (100, [1, 2, 5, 10, 20, 50, 100]),
   (2000, [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000])],
)  # fmt: skip
def test_the_chain_is_read_at_1_2_5_times_powers_of_ten_and_at_its_end(epochs, milestones):
  assert chain_milestones(epochs) == milestones


def test_the_chain_summary_reads_each_seed_at_the_milestones_and_leaves_diverged_ones_out():
  def run(status, errors, averaged_from):
    epochs = [{"current": {"error": error},
               "averaged": {"error": error / 2} if epoch >= averaged_from else None}
              for epoch, error in enumerate(errors, start=1)]  # fmt: skip
    return {"method": "sgld", "status": status, "epochs": epochs}

  chain = summarize_chain([run("ok", [0.1, 0.08, 0.06], averaged_from=2),
                           run("ok", [0.2, 0.10, 0.04], averaged_from=2),
                           run("diverged", [0.9], averaged_from=1)])  # fmt: skip
  entry = chain["sgld"]
  assert entry["epochs"] == [1, 2, 3]
  assert [stat["n"] for stat in entry["current"]] == [2, 2, 2]
  assert [stat["mean"] for stat in entry["current"]] == pytest.approx([0.15, 0.09, 0.05])
  assert entry["averaged"][0]["mean"] is None  # before the first snapshot
  assert [stat["mean"] for stat in entry["averaged"][1:]] == pytest.approx([0.045, 0.025])
  assert summarize_chain([run("diverged", [0.9], averaged_from=1)]) == {}


@pytest.mark.parametrize(
  "epochs, cycles, per_cycle", [(100, 4, 5), (20, 5, 1), (2, 2, 1)]
)  # fmt: skip
def test_csgld_snapshots_the_epochs_that_end_in_the_sampling_phase(epochs, cycles, per_cycle):
  config = BnnConfig(epochs=epochs, cycles=cycles)
  schedule = snapshots_of(config, "csgld", epochs, steps_per_epoch=5)
  assert schedule.per_cycle == per_cycle
  assert sum(schedule.takes(epoch) for epoch in range(epochs)) == cycles * per_cycle


def test_a_thinned_chain_snapshots_every_k_steps_after_its_burn_in():
  config = BnnConfig.preset("korattikara2015", epochs=10, burn_in=0.2, thin_steps=5)
  schedule = snapshots_of(config, "sgld", 10, steps_per_epoch=10)
  assert [s for s in range(101) if schedule.takes_step(s)] == list(range(20, 101, 5))
  with pytest.raises(ValueError, match="multiple of --thin-steps"):
    snapshots_of(BnnConfig.preset("korattikara2015", epochs=10, burn_in=0.2, thin_steps=3),
                      "sgld", 10, steps_per_epoch=10)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
  """80 train and 16 test 28x28 uint8 images: blobs whose position is the label."""
  path = tmp_path_factory.mktemp("data") / "tiny_mnist.npz"
  save_mnist_npz(mnist_like(train=80, test=16), path)
  return path


def _cli(tmp_path, *args, script=CLI):
  env = {**os.environ, "JAXDIFF_CACHE": str(tmp_path / "cache")}
  return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
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
  assert ("changes the li2016 protocol's length or schedule**: epochs 2 (the protocol's: 100)"
          in markdown)  # fmt: skip
  assert "python experiments/mnist_bnn.py" in markdown and "--resume" in markdown
  published = {**report, "protocol": {**report["protocol"], "published": True}}
  assert "changes the li2016 protocol" not in render_markdown(published)
  # The cold-posterior curve: the samplers of the curve at both temperatures, paired seeds.
  assert set(report["cold_posterior"]) == {"sgld", "sghmc", "csgld"}
  for points in report["cold_posterior"].values():
    assert [p["temperature"] for p in points] == [1.0, 0.1]
    assert all(p["averaged"]["error"]["n"] == 2 for p in points)
  assert "## The cold-posterior curve" in markdown
  # The chain's length: each seed method at epochs 1 and 2; the average after the burn-in epoch.
  assert set(report["chain"]) == set(METHODS)
  sgld_chain = report["chain"]["sgld"]
  assert sgld_chain["epochs"] == [1, 2]
  assert sgld_chain["averaged"][0]["mean"] is None and sgld_chain["averaged"][1]["n"] == 2
  final_error = report["summary"]["sgld"]["final"]["error"]["mean"]
  assert sgld_chain["current"][1]["mean"] == pytest.approx(final_error)
  assert "## The chain's length" in markdown and "| sgld (averaged) | — |" in markdown
  # Every method scored at every angle, averaged and final; angle 0 is the plain test score.
  assert set(report["shift"]) == set(METHODS)
  for name, entry in report["shift"].items():
    assert entry["angles"] == [0, 90]
    zero = entry["averaged"]["error"][0]["mean"]
    assert zero == pytest.approx(report["summary"][name]["averaged"]["error"]["mean"])
  assert "## Rotated test images" in markdown and "ECE % by angle" in markdown
  for name in ("scores.png", "tuning.png", "curves.png", "cold_posterior.png", "shift.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"[`{name}`]({name})" in markdown
  # Live series, one TensorBoard run per phase, method and run: 2 epochs of 8 steps.
  assert "tensorboard --logdir summaries" in markdown
  runs = sorted(path.name for path in (out / "summaries" / "seeds" / "sgld").iterdir())
  assert runs == [f"lr_{report['tuning']['picked']['sgld']:g}_seed_{seed}_T_1" for seed in (0, 1)]
  series = summaries.read_scalars(out / "summaries" / "seeds" / "sgld" / runs[1])
  assert [step for step, _ in series["test/error"]] == [8, 16]
  assert [step for step, _ in series["test_averaged/error"]] == [16]  # after the burn-in epoch
  assert [step for step, _ in series["train/loss"]] == [8, 16]
  lines = (out / "summaries" / "seeds" / "sgld" / runs[1] / "scalars.jsonl").read_text()
  assert [json.loads(line)["step"] for line in lines.splitlines()].count(16) >= 2
  assert len(list((out / "summaries" / "temperatures" / "sghmc").iterdir())) == 2  # T 0.1 × 2


def test_a_method_whose_every_tuning_run_diverges_is_a_row_of_the_report(tmp_path, tiny_mnist):
  out = tmp_path / "out"
  result = _cli(tmp_path, "--data", tiny_mnist, "--out", out, "--methods", "sgd,sgld",
                "--epochs", 2, "--batch-size", 8, "--seeds", 1, "--validation-size", 16,
                "--lr-grid", "1e35,1e36", "--temperatures", "", "--shift-angles", "", "--quiet")  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  assert "every tuning run diverged" in result.stdout
  report = json.loads((out / "report.json").read_text())
  assert report["tuning"]["picked"] == {"sgd": None, "sgld": None}
  assert report["summary"]["sgd"]["learning_rate"] is None
  assert "none: every run diverged" in (out / "report.md").read_text()


def test_the_korattikara_preset_thins_by_steps_without_tuning(tmp_path, tiny_mnist):
  out = tmp_path / "out"
  result = _cli(tmp_path, "--data", tiny_mnist, "--out", out, "--protocol", "korattikara2015",
                "--epochs", 4, "--batch-size", 8, "--seeds", 2, "--validation-size", 16,
                "--burn-in", "0.5", "--thin-steps", 4, "--quiet", "--no-summaries")  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  assert not (out / "summaries").exists()
  report = json.loads((out / "report.json").read_text())
  assert report["protocol"]["name"] == "korattikara2015" and not report["tuning"]["tuned"]
  assert [run["phase"] for run in report["runs"]] == ["seeds", "seeds"]
  # 64 images in batches of 8: 8 steps an epoch; after 16 burn-in steps a snapshot every 4.
  assert report["summary"]["sgld"]["snapshots"] == 5 and report["summary"]["sgld"]["seeds"] == 2
  assert report["summary"]["sgld"]["learning_rate"] == 0.1
  assert "--protocol korattikara2015" in report["command"]


# One sampler with tuning, a cold curve and rotations: every kind of record a part can hold.
SAMPLER_RUN = ["--methods", "sgld", "--epochs", 2, "--batch-size", 8, "--validation-size", 16,
               "--lr-grid", "0.01,0.1", "--temperatures", "1,0.1", "--shift-angles", "0,90",
               "--quiet", "--no-summaries"]  # fmt: skip
TIMINGS = ("step_time_s", "step_times_s")


def _untimed(runs):
  return [{key: value for key, value in run.items() if key not in TIMINGS} for run in runs]


def test_runs_of_some_seeds_each_pool_into_the_report_of_one_run_of_them_all(tmp_path, tiny_mnist):
  reports = {}
  parts = (("whole", [2]), ("first", [1]), ("second", [1, "--first-seed", 1, "--note", "part"]))
  for name, seeds in parts:
    result = _cli(tmp_path, "--data", tiny_mnist, "--out", tmp_path / name, *SAMPLER_RUN,
                  "--seeds", *seeds)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reports[name] = json.loads((tmp_path / name / "report.json").read_text())
  out = tmp_path / "pooled"
  result = _cli(tmp_path, tmp_path / "second", tmp_path / "first", "--out", out, "--note",
                "pooled", script=POOL_CLI)  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  pooled, whole = json.loads((out / "report.json").read_text()), reports["whole"]
  # Seed s has the same keys in every run, so the parts' records are the whole run's bit for bit,
  # recorded in its order, and so are the scores; only the timings are each run's own.
  assert _untimed(pooled["runs"]) == _untimed(whole["runs"])
  assert pooled["config"] == {**whole["config"], "notes": ["pooled"]}
  assert pooled["tuning"] == whole["tuning"]
  for key in ("chain", "cold_posterior", "shift"):
    assert pooled[key] == whole[key], key
  assert {**pooled["summary"]["sgld"], "step_time_s": None} == {
    **whole["summary"]["sgld"], "step_time_s": None}  # fmt: skip
  command = whole["command"].replace(str(tmp_path / "whole"), str(out)) + " --note pooled"
  assert pooled["command"] == command
  # The parts by their seeds, whatever the order they were named in.
  assert [(part["seeds"], part["notes"]) for part in pooled["parts"]] == [([0], []),
                                                                            ([1], ["part"])]  # fmt: skip
  markdown = (out / "report.md").read_text()
  assert "Pooled from 2 runs" in markdown and "  - seed 1: " in markdown
  assert "- pooled\n" in markdown and "- part\n" not in markdown
  assert (out / "shift.png").is_file() and (out / "cold_posterior.png").is_file()
  # What cannot be one run's seeds is refused, saying what to do.
  first, second = reports["first"], reports["second"]
  longer = {**second, "config": {**second["config"], "epochs": 3}}
  later = {**second, "config": {**second["config"], "first_seed": 2}}
  for parts, message in (([first], "two or more runs"), ([first, whole], "seed 0 is in two"),
                         ([first, longer], "differ in epochs"), ([first, later], "seed 1"),
                         ([first, pooled], "pooled already")):  # fmt: skip
    with pytest.raises(PoolError, match=message):
      pool_reports(parts, out)
  (tmp_path / "garbled").mkdir()
  (tmp_path / "garbled" / "report.json").write_text("{")
  for folders, message in (([tmp_path / "first", tmp_path], "holds no report.json"),
                           ([tmp_path / "first", tmp_path / "garbled"], "is not JSON")):  # fmt: skip
    result = _cli(tmp_path, *folders, "--out", tmp_path / "bad", script=POOL_CLI)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr and not (tmp_path / "bad").exists()
  with pytest.raises(PoolError, match="is one of the runs"):
    pool_experiment([tmp_path / "first", tmp_path / "second"], tmp_path / "second")


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
