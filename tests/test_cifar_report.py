"""The CIFAR comparison's report: summaries of synthetic runs, claims, report.md and plots.

The metrics' own cases are in test_metrics.py and the atomic writers' in test_files.py;
the ECE cases here are those test_metrics.py does not cover.
"""

import json
import os

import numpy as np
import pytest

from jaxdiff import metrics
from jaxdiff.experiments.cifar import plots, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores(accuracy, nll, ece):
  """A :class:`jaxdiff.classification.Scores`; NaN accuracy (a diverged run) as None."""
  finite = accuracy == accuracy
  return {"accuracy": accuracy if finite else None, "error": 1 - accuracy if finite else None,
          "nll": nll, "ece": ece, "brier": 0.5}  # fmt: skip


def make_run(
  optimizer,
  seed,
  accuracies,
  *,
  lr=0.01,
  diffusion=None,
  gap=0.05,
  loss_std=0.1,
  step_time=0.01,
  step_times=None,
  status="ok",
  posterior=None,
  snapshots=5,
  train_loss=None,
  nll=1.4,
):
  """One run record as the comparison writes it; the last accuracy is the final test accuracy.

  ``posterior``: the averaged predictive's ``(accuracy, nll, ece)``, or None (no average).
  ``step_times``: per call of the engine (default: a slow first call, then ±1 % about
  ``step_time``). ``train_loss``: the last epoch's mean training loss (default 2/epochs).
  """
  epochs = [
    {
      "epoch": i + 1,
      "step": 10 * (i + 1),
      "train": {
        "loss": 2.0 / (i + 1) if train_loss is None or i + 1 < len(accuracies) else train_loss,
        "accuracy": acc + gap,
      },
      "current": _scores(acc, 1.5, 0.05),
      "averaged": None,
    }
    for i, acc in enumerate(accuracies)
  ]
  return {
    "method": optimizer,
    "phase": "main",
    "seed": seed,
    "learning_rate": lr,
    "diffusion": diffusion,
    "temperature": None if diffusion is None else 50_000 * diffusion,
    "status": status,
    "diverged_at_step": 7 if status == "diverged" else None,
    "snapshots": snapshots if posterior else 0,
    "final": _scores(accuracies[-1], nll, 0.04),
    "averaged": None if posterior is None else _scores(*posterior),
    "epochs": epochs,
    "last_epoch_loss_std": loss_std,
    "step_time_s": step_time,
    "step_times_s": [2 * step_time, 0.99 * step_time, step_time, 1.01 * step_time]
    if step_times is None
    else step_times,
    "shift": None,
    "final_train": _scores(accuracies[-1] + gap, 1.0, 0.03),
  }


@pytest.fixture
def runs():
  """sgd and langevin × 3 seeds with known statistics."""
  sgd = [
    make_run("sgd", 0, [0.2, 0.35, 0.45], loss_std=0.10, step_time=0.0100),
    make_run("sgd", 1, [0.3, 0.38, 0.48], loss_std=0.12, step_time=0.0101),
    make_run("sgd", 2, [0.25, 0.41, 0.51], loss_std=0.14, step_time=0.0102),
  ]
  posterior = (0.6, 1.1, 0.02)
  langevin = [
    make_run("langevin", s, accs, diffusion=1e-4, gap=gap, step_time=0.0105, posterior=posterior)
    for s, (accs, gap) in enumerate(
      [([0.32, 0.45, 0.5], 0.01), ([0.31, 0.46, 0.52], 0.012), ([0.2, 0.28, 0.29], 0.008)]
    )
  ]
  return sgd + langevin


def test_ece_of_a_calibrated_and_a_confidently_wrong_model():
  calibrated = np.array([[0.75, 0.25]] * 4)
  assert metrics.expected_calibration_error(calibrated, np.array([0, 0, 0, 1])) == pytest.approx(0)
  certain = np.array([[1.0, 0.0]] * 5)
  assert metrics.expected_calibration_error(certain, np.zeros(5, int)) == pytest.approx(0)
  assert metrics.expected_calibration_error(certain, np.ones(5, int)) == pytest.approx(1)


def test_ece_two_bins_by_hand():
  # Bin of confidence 0.9: 3 of 4 right, |0.75 - 0.9| = 0.15; bin of 0.6: 4 of 4, |1 - 0.6| = 0.4.
  probs = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 4)
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
  expected = 0.5 * 0.15 + 0.5 * 0.4
  assert metrics.expected_calibration_error(probs, labels) == pytest.approx(expected)
  assert metrics.expected_calibration_error(probs, labels, num_bins=2) == pytest.approx(
    abs(7 / 8 - 0.75)
  )


def test_summarize_means_stds_and_step_time_ratio(runs):
  summary = report.summarize(runs)
  assert list(summary["optimizers"]) == ["sgd", "langevin"]
  sgd, langevin = summary["optimizers"]["sgd"], summary["optimizers"]["langevin"]
  finals = np.array([0.45, 0.48, 0.51])
  assert sgd["final_test_accuracy"]["mean"] == pytest.approx(finals.mean())
  # The sample std (ddof = 1): 0.03 here, where the population one is 0.0245.
  assert sgd["final_test_accuracy"]["std"] == pytest.approx(0.03)
  assert sgd["final_test_accuracy"]["se"] == pytest.approx(0.03 / np.sqrt(3))
  assert sgd["final_test_accuracy"]["n"] == 3
  assert sgd["final_train_accuracy"]["mean"] == pytest.approx(finals.mean() + 0.05)
  assert sgd["generalization_gap"]["mean"] == pytest.approx(0.05)
  assert sgd["last_epoch_loss_std"]["mean"] == pytest.approx(0.12)
  assert langevin["best_test_accuracy"]["mean"] == pytest.approx((0.5 + 0.52 + 0.29) / 3)
  assert sgd["step_time_vs_sgd"] == pytest.approx(1.0)
  assert langevin["step_time_vs_sgd"] == pytest.approx(0.0105 / 0.0101)
  assert (langevin["learning_rate"], langevin["diffusion"]) == (0.01, 1e-4)
  assert langevin["temperature"] == pytest.approx(5.0)
  assert sgd["posterior_average"] is None
  assert langevin["posterior_average"]["test_accuracy"]["mean"] == pytest.approx(0.6)
  assert langevin["posterior_average"]["snapshots"]["mean"] == 5
  json.dumps(summary, allow_nan=False)


def test_summarize_epochs_to_threshold(runs):
  sgd = report.summarize(runs, thresholds=(0.3, 0.5, 0.9))["optimizers"]["sgd"]
  std = np.std([2, 1, 2], ddof=1)
  expected = {"mean": pytest.approx(5 / 3), "std": pytest.approx(std),
              "se": pytest.approx(std / np.sqrt(3)), "n": 3}  # fmt: skip
  assert sgd["epochs_to"]["0.3"] == {**expected, "not_reached": 0}
  # Only seed 2 reaches 50 %, at epoch 3.
  assert sgd["epochs_to"]["0.5"]["mean"] == 3.0 and sgd["epochs_to"]["0.5"]["not_reached"] == 2
  assert sgd["epochs_to"]["0.9"] == {"mean": None, "std": None, "se": None, "n": 0,
                                     "not_reached": 3}  # fmt: skip
  # Per seed, for the paired claims; None where a seed never reached the threshold.
  assert sgd["per_seed"]["epochs_to"]["0.5"] == [None, None, 3]


def test_summarize_treats_nan_of_diverged_runs_as_missing(runs):
  nan = float("nan")
  runs = runs + [make_run("langevin", 3, [0.1, nan], diffusion=1e-4, status="diverged")]
  runs[-1]["last_epoch_loss_std"] = float("inf")
  langevin = report.summarize(runs)["optimizers"]["langevin"]
  assert langevin["runs"] == 4 and langevin["diverged"] == 1
  assert langevin["final_test_accuracy"]["n"] == 3
  assert langevin["final_test_accuracy"]["mean"] == pytest.approx((0.5 + 0.52 + 0.29) / 3)
  assert langevin["last_epoch_loss_std"]["n"] == 3
  assert langevin["best_test_accuracy"]["n"] == 4
  assert langevin["epochs_to"]["0.3"]["not_reached"] == 2
  json.dumps(report.summarize(runs), allow_nan=False)


def test_summarize_without_sgd_has_no_ratio_and_rejects_mixed_settings(runs):
  langevin_only = [run for run in runs if run["method"] == "langevin"]
  assert report.summarize(langevin_only)["optimizers"]["langevin"]["step_time_vs_sgd"] is None
  langevin_only[0] = {**langevin_only[0], "learning_rate": 0.1}
  with pytest.raises(ValueError, match="learning_rate"):
    report.summarize(langevin_only)


@pytest.fixture
def sweep_runs():
  """sgd over 3 lrs; langevin over 2 lrs × D in {0, 1e-4, 1e-3}, 2 seeds; one cell diverged."""
  runs = []
  for seed, shift in ((0, -0.01), (1, 0.01)):
    for lr, acc in ((0.01, 0.3), (0.03, 0.5), (0.1, 0.4)):
      runs.append(make_run("sgd", seed, [acc + shift], lr=lr))
    for lr, base in ((0.01, 0.4), (0.03, 0.45)):
      for d, bonus in ((0.0, 0.0), (1e-4, 0.05)):
        runs.append(make_run("langevin", seed, [base + bonus + shift], lr=lr, diffusion=d))
      runs.append(
        make_run("langevin", seed, [float("nan")], lr=lr, diffusion=1e-3, status="diverged")
      )
  return runs


def test_summarize_sweep_grid_and_spread(sweep_runs):
  sweep = report.summarize_sweep(sweep_runs)["optimizers"]
  sgd, langevin = sweep["sgd"], sweep["langevin"]
  assert sgd["learning_rates"] == [0.01, 0.03, 0.1] and sgd["diffusions"] == [None]
  assert np.allclose(np.array(sgd["accuracy"], float).ravel(), [0.3, 0.5, 0.4])
  assert sgd["sensitivity"]["spread"] == pytest.approx(0.2)
  assert sgd["sensitivity"]["lr_spread"] == pytest.approx(0.2)
  assert sgd["sensitivity"]["std"] == pytest.approx(np.std([0.3, 0.5, 0.4]))
  # Two seeds at ±0.01 about each cell's mean: sample std 0.01·√2.
  assert sgd["sensitivity"]["seed_std"] == pytest.approx(0.01 * np.sqrt(2))
  # Each seed's own spread over the learning rates (the seeds' shift cancels out of it).
  assert sgd["sensitivity"]["seeds"] == [0, 1]
  assert sgd["sensitivity"]["lr_spread_by_seed"] == pytest.approx([0.2, 0.2])
  assert sgd["best"] == {"learning_rate": 0.03, "diffusion": None, "accuracy": pytest.approx(0.5)}
  assert sgd["noise_effect"] is None

  assert langevin["diffusions"] == [0.0, 1e-4, 1e-3]
  assert langevin["accuracy"][0][2] is None and langevin["n"][0] == [2, 2, 0]
  assert langevin["diverged"] == 4
  assert langevin["sensitivity"]["missing_cells"] == 2
  assert langevin["sensitivity"]["spread"] == pytest.approx(0.5 - 0.4)
  assert langevin["sensitivity"]["lr_spread"] == pytest.approx(0.5 - 0.45)
  assert langevin["best"]["diffusion"] == 1e-4
  assert langevin["sensitivity"]["lr_spread_by_seed"] == pytest.approx([0.05, 0.05])
  effect = langevin["noise_effect"]
  assert effect["best_at_zero"]["accuracy"] == pytest.approx(0.45)
  assert effect["best_positive"]["accuracy"] == pytest.approx(0.5)
  json.dumps(sweep, allow_nan=False)


@pytest.mark.parametrize(
  ("better_is", "langevin", "baseline", "verdict"),
  [
    ("lower", [1.0, 1.1, 0.9], [2.0, 2.3, 1.8], "supported"),
    ("lower", [2.0, 2.3, 1.8], [1.0, 1.1, 0.9], "not supported"),
    ("higher", [0.6, 0.62, 0.59], [0.5, 0.51, 0.5], "supported"),
    ("higher", [0.5, 0.51, 0.5], [0.6, 0.62, 0.59], "not supported"),
    # Differences of both signs: no decision.
    ("lower", [1.0, 1.5, 0.9], [1.1, 1.2, 1.0], "inconclusive"),
    # One seed, or one seed measured on both sides, measures no spread.
    ("lower", [1.0], [2.0], "inconclusive"),
    ("lower", [1.0, None, 3.0], [2.0, 2.5, None], "inconclusive"),
    ("higher", [float("nan"), 0.5], [0.5, 0.4], "inconclusive"),
  ],
)
def test_judge(better_is, langevin, baseline, verdict):
  assert report.judge(better_is, langevin, baseline) == verdict


def test_judge_pairs_the_seeds_where_an_unpaired_comparison_cannot_decide():
  # The seeds differ a lot (std 1.0 of either side) but Langevin is lower by 0.1 on every one:
  # the paired differences' t is about 19, beyond t(0.975, 2) = 4.30.
  langevin, baseline = [1.0, 2.0, 3.0], [1.1, 2.12, 3.11]
  assert max(np.std(langevin, ddof=1), np.std(baseline, ddof=1)) > 0.5
  assert report.judge("lower", langevin, baseline) == "supported"
  # Reordered, the same values are no longer the same seeds: the differences spread out.
  assert report.judge("lower", langevin, baseline[::-1]) == "inconclusive"


def test_judge_does_not_decide_what_two_paired_seeds_cannot_show():
  # Means 1.15 and 1.55, population stds 0.15 and 0.05: better by more than the larger std, the
  # unpaired rule's "supported". Paired, the differences −0.5 and −0.3 have t = 4 on one degree
  # of freedom, below t(0.975, 1) = 12.7.
  assert report.judge("lower", [1.0, 1.3], [1.5, 1.6]) == "inconclusive"


def test_judge_rejects_an_unknown_direction():
  with pytest.raises(ValueError):
    report.judge("sideways", [1.0, 2.0], [2.0, 3.0])


CONFIG = {
  "epochs": 3,
  "batch_size": 128,
  "seeds": [0, 1, 2],
  "train_size": 50_000,
  "learning_rates": {"sgd": 0.01, "langevin": 0.01},
  "notes": ["Adam runs at lr 1e-3: it diverges at the SGD rate."],
}
ENVIRONMENT = {"device_kind": "cpu", "device_count": 4, "versions": {"jax": "0.10.2"}}
COMMAND = "python experiments/cifar.py --data 'my data/cifar.tar.gz' --out runs/c --seeds 3"


def make_result(runs, sweep_runs=None, data_label="CIFAR-10", command=COMMAND):
  """What report.json holds for ``runs`` (and a sweep of ``sweep_runs``)."""
  return {
    "config": CONFIG,
    "command": command,
    "environment": ENVIRONMENT,
    "data_label": data_label,
    "summary": report.summarize(runs),
    "sweep": None if sweep_runs is None else report.summarize_sweep(sweep_runs),
    "cold_posterior": None,
    "runs": runs,
  }


def _claims(text):
  return [line for line in text.splitlines() if line[:3] in {f"{i}. " for i in range(1, 6)}]


def test_render_markdown_states_data_temperature_and_claims(runs, sweep_runs):
  label = "CIFAR-10 (JPEG copy)"
  text = report.render_markdown(make_result(runs, sweep_runs, data_label=label))
  assert text.count(label) >= 3  # title, setup, Table 1 caption
  assert "lossy" in text and "Adam runs at lr 1e-3" in text and "jax 0.10.2" in text
  assert "T = N·D = 5" in text and "D = 1/N = 2e-05" in text
  assert "| sgd | 0.01 | — | 48.0 ± 3.0 |" in text  # the sample std
  assert "Table 2" in text and "60.0 ± 0.0 vs" in text
  assert "| lr | D = 0 | D = 0.0001 | D = 0.001 |" in text
  claims = _claims(text)
  assert len(claims) == 5
  for claim, topic in zip(
    claims, ("Convergence", "Stability", "Overfitting", "Sensitivity", "Cost")
  ):
    assert topic in claim
    assert claim.endswith(("— supported.", "— not supported.", "— inconclusive."))
  # langevin reaches 40 % sooner on average, but one of its runs never does and all of sgd's do.
  assert "langevin 2.0 ± 0.0 (1✗) vs sgd" in claims[0] and claims[0].endswith("— not supported.")
  # Loss std 0.100 vs 0.120 ± 0.020: the unpaired rule (better by more than the larger
  # population std, 0.016) said supported; the paired differences 0, −0.02, −0.04 have t = 1.7.
  assert "paired difference -0.020 ± 0.012 (SE, 3 seeds)" in claims[1]
  assert claims[1].endswith("— inconclusive.")
  # Gap 1 pp vs 5 pp, smaller on every seed by about 4 pp.
  assert "paired difference -4.0 ± 0.1 (SE, 3 seeds)" in claims[2]
  assert claims[2].endswith("— supported.")
  # Step time 1.04 × SGD; at the ends of the calls' middle halves 1.04 to 1.06 ×, within 1.1 ×.
  assert "langevin 1.04×, 1.04× to 1.06×" in claims[4] and claims[4].endswith("— supported.")


def test_the_report_states_its_command_how_to_resume_and_its_figures(runs, sweep_runs):
  text = report.render_markdown(make_result(runs, sweep_runs))
  assert f"```bash\n{COMMAND}\n```" in text and "with `--resume` to continue" in text
  assert "[curves.png](curves.png)" in text and "[sweep.png](sweep.png)" in text
  assert "cold_posterior.png" not in text  # no temperatures: no such figure
  assert "![curves](curves.png)" in text and "![sweep](sweep.png)" in text


def test_render_markdown_without_sweep_says_sensitivity_was_not_measured(runs):
  text = report.render_markdown(make_result(runs))
  assert "Data: CIFAR-10." in text and "lossy" not in text
  assert "not measured in this run (use --sweep) — inconclusive." in text


def _cost_claim(runs):
  return _claims(report.render_markdown(make_result(runs)))[4]


def test_the_cost_claim_needs_two_seeds(runs):
  # The quick run's case: one seed, and SGD's step slower than the Langevin one's.
  one_seed = [run for run in runs if run["seed"] == 0]
  one_seed[0] = {**one_seed[0], "step_time_s": 0.0167, "step_times_s": [0.03, 0.0167]}
  claim = _cost_claim(one_seed)
  assert "fewer than 2 seeds" in claim and claim.endswith("— inconclusive.")


def test_the_cost_claim_needs_two_timed_epochs(runs):
  # One epoch: its only call includes the warm-up, so there is no spread to trust the ratio by.
  runs = [{**run, "step_times_s": run["step_times_s"][:2]} for run in runs]
  claim = _cost_claim(runs)
  assert "fewer than 2 timed epochs" in claim and claim.endswith("— inconclusive.")


@pytest.mark.parametrize(
  ("langevin_times", "verdict"),
  [
    ([0.02, 0.0100, 0.0102, 0.0104], "supported"),  # 1.00× to 1.04×
    ([0.02, 0.0120, 0.0125, 0.0130], "not supported"),  # 1.22× to 1.28×
    # The same median 1.02× as the first, but spread so widely (0.90× to 1.21×) that 1.1× lies
    # inside.
    ([0.02, 0.0080, 0.0090, 0.0102, 0.0120, 0.0140], "inconclusive"),
  ],
)
def test_the_cost_claim_trusts_a_ratio_only_beyond_the_timings_spread(runs, langevin_times,
                                                                     verdict):  # fmt: skip
  sgd_times = [0.02, 0.0099, 0.0100, 0.0101]
  runs = [
    {**run, "step_times_s": sgd_times if run["method"] == "sgd" else langevin_times,
     "step_time_s": float(np.median((sgd_times if run["method"] == "sgd" else langevin_times)[1:]))}
    for run in runs
  ]  # fmt: skip
  assert _cost_claim(runs).endswith(f"— {verdict}.")


def test_a_run_whose_loss_blows_up_is_reported_exploded(runs):
  # The quick run's psgld: finite, so not diverged, but a loss of 236.5 and an NLL of 24.2 where
  # a uniform guess over 10 classes costs log 10 = 2.30.
  exploded = make_run("langevin", 3, [0.1, 0.1], diffusion=1e-4, train_loss=236.5, nll=24.2)
  nll_only = make_run("langevin", 4, [0.1, 0.1], diffusion=1e-4, nll=24.2)
  assert report.outcome(exploded, 10) == report.outcome(nll_only, 10) == "exploded"
  assert all(report.outcome(run, 10) == "ok" for run in runs)
  assert report.outcome(make_run("sgd", 0, [0.1], status="diverged"), 10) == "diverged"
  # 5 · log 10 = 11.5: a loss of 11 is not exploded.
  assert report.outcome(make_run("sgd", 0, [0.1], train_loss=11.0, nll=11.0), 10) == "ok"
  result = make_result(runs + [exploded])
  entry = result["summary"]["optimizers"]["langevin"]
  assert (entry["diverged"], entry["exploded"]) == (0, 1)
  assert entry["exploded_runs"] == [{"seed": 3, "train_loss": 236.5, "test_nll": 24.2}]
  text = report.render_markdown(result)
  assert "| 0 / 1 of 4 |" in text and "| 0 / 0 of 3 |" in text
  assert "Exploded: langevin seed 3 (last-epoch training loss 236.5, test NLL 24.2)." in text
  assert "5 × log C = 11.5" in text  # the rule, stated
  json.dumps(result["summary"], allow_nan=False)


def test_plots_write_png_files(runs, sweep_runs, tmp_path):
  runs = runs + [make_run("langevin", 3, [0.1, float("nan")], diffusion=1e-4, status="diverged")]
  plots.plot_curves(runs, tmp_path / "curves.png")
  plots.plot_sweep(report.summarize_sweep(sweep_runs), tmp_path / "sweep.png")
  for name in ("curves.png", "sweep.png"):
    data = (tmp_path / name).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
  assert sorted(os.listdir(tmp_path)) == ["curves.png", "sweep.png"]


def test_one_seed_has_no_std_and_decides_nothing(runs):
  one_seed = [run for run in runs if run["seed"] == 0]
  summary = report.summarize(one_seed)
  assert summary["optimizers"]["sgd"]["final_test_accuracy"] == {"mean": 0.45, "std": None,
                                                                 "se": None, "n": 1}  # fmt: skip
  assert report.judge("higher", [0.9], [0.1]) == "inconclusive"
  claims = _claims(report.render_markdown(make_result(one_seed)))
  assert len(claims) == 5 and all(claim.endswith("— inconclusive.") for claim in claims)
