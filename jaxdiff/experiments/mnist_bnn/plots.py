"""The benchmark's figures, from the summaries of :mod:`.report` and the run records."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from jaxdiff.experiments.mnist_bnn.report import PREDICTIVES
from jaxdiff.files import pyplot, save_figure


def _mean(stat) -> float:
  return np.nan if stat["mean"] is None else stat["mean"]


def _error_bar(stat) -> float:
  return 0.0 if stat["se"] is None else stat["se"]


def plot_scores(summary: dict[str, dict], path: str | os.PathLike) -> None:
  """Test error, NLL and ECE per method, averaged and final, ± the seeds' standard error."""
  plt = pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
  names = [name for name, entry in summary.items() if entry["learning_rate"] is not None]
  positions = np.arange(len(names))
  width = 0.38
  for ax, metric, scale, label in zip(
    axes, ("error", "nll", "ece"), (100, 1, 100), ("test error (%)", "test NLL", "test ECE (%)")
  ):
    for offset, predictive in ((-width / 2, "averaged"), (width / 2, "final")):
      stats = [summary[name][predictive][metric] for name in names]
      ax.bar(positions + offset, [_mean(s) * scale for s in stats], width,
             yerr=[_error_bar(s) * scale for s in stats], capsize=3, label=predictive)  # fmt: skip
    ax.set(xticks=positions, xticklabels=names, ylabel=label)
    ax.grid(alpha=0.3, axis="y")
  axes[0].legend()
  fig.suptitle("Test scores, mean ± standard error over seeds")
  fig.tight_layout()
  save_figure(fig, path)


def plot_tuning(table: dict[str, list[dict]], path: str | os.PathLike) -> None:
  """Each method's validation NLL (averaged predictive) over the learning-rate grid."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  finite = False
  for name, cells in table.items():
    rates = [cell["learning_rate"] for cell in cells]
    nll = [np.nan if not cell["averaged"] or cell["averaged"]["nll"] is None
           else cell["averaged"]["nll"] for cell in cells]  # fmt: skip
    finite = finite or bool(np.isfinite(nll).any())
    ax.plot(rates, nll, marker="o", label=name)
  # Where every run diverged there is nothing to put on a log scale.
  ax.set(
    xscale="log",
    yscale="log" if finite else "linear",
    xlabel="learning rate",
    ylabel="validation NLL (averaged)",
    title="Learning-rate tuning on the held-out images",
  )
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  save_figure(fig, path)


def plot_curves(seed_runs: Sequence[dict], path: str | os.PathLike) -> None:
  """Per epoch (seed means): the training loss, the current parameters' test NLL, and the test
  error of the posterior average so far, which shows what a longer chain buys."""
  plt = pyplot()
  fig, (loss_ax, nll_ax, average_ax) = plt.subplots(1, 3, figsize=(17, 4.5))
  groups: dict[str, list[dict]] = {}
  for run in seed_runs:
    groups.setdefault(run["method"], []).append(run)

  def series(runs, value):
    length = min(len(run["epochs"]) for run in runs)
    matrix = np.array([[value(e) for e in run["epochs"][:length]] for run in runs], np.float64)
    with warnings.catch_warnings():  # the burn-in's epochs have no average: NaN, not plotted
      warnings.simplefilter("ignore", RuntimeWarning)
      return np.arange(1, length + 1), np.nanmean(matrix, axis=0) if length else matrix

  for name, runs in groups.items():
    if not min(len(run["epochs"]) for run in runs):
      continue
    panels = (
      (loss_ax, lambda e: _or_nan(e["train"].get("loss"))),
      (nll_ax, lambda e: _or_nan(e["current"]["nll"])),
      (average_ax, lambda e: np.nan if e["averaged"] is None else _or_nan(e["averaged"]["error"])),
    )
    for ax, value in panels:
      epochs, values = series(runs, value)
      scale = 100 if ax is average_ax else 1
      ax.plot(epochs, values * scale, label=name)
  loss_ax.set(xlabel="epoch", ylabel="training loss (with prior)", yscale="log",
              title="Training loss")  # fmt: skip
  nll_ax.set(xlabel="epoch", ylabel="test NLL", yscale="log", title="Test NLL, current parameters")
  average_ax.set(xlabel="epoch", ylabel="test error (%)", title="Posterior average so far")
  for ax in (loss_ax, nll_ax, average_ax):
    ax.grid(alpha=0.3)
  nll_ax.legend()
  fig.suptitle("Mean over seeds")
  fig.tight_layout()
  save_figure(fig, path)


def _or_nan(value) -> float:
  return np.nan if value is None else value


def plot_cold_posterior(curve: dict[str, list[dict]], path: str | os.PathLike) -> None:
  """Test error and NLL against the temperature, averaged and final, ± standard error."""
  plt = pyplot()
  fig, (error_ax, nll_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, points in curve.items():
    temperatures = [point["temperature"] for point in points]
    for predictive, style in zip(PREDICTIVES, ("-", "--")):
      for ax, metric, scale in ((error_ax, "error", 100), (nll_ax, "nll", 1)):
        stats = [point[predictive][metric] for point in points]
        ax.errorbar(temperatures, [_mean(s) * scale for s in stats],
                    yerr=[_error_bar(s) * scale for s in stats], linestyle=style, marker="o",
                    capsize=3, label=f"{name} ({predictive})")  # fmt: skip
  error_ax.set(xscale="log", xlabel="temperature T", ylabel="test error (%)")
  nll_ax.set(xscale="log", xlabel="temperature T", ylabel="test NLL", yscale="log")
  for ax in (error_ax, nll_ax):
    ax.grid(alpha=0.3)
    ax.invert_xaxis()  # colder to the right
  nll_ax.legend(fontsize=8)
  fig.suptitle("The cold-posterior curve: T = 1 is the Bayesian posterior")
  fig.tight_layout()
  save_figure(fig, path)


def plot_shift(shift: dict[str, dict], path: str | os.PathLike) -> None:
  """Test error and ECE against the rotation of the test images, a line per method."""
  plt = pyplot()
  fig, (error_ax, ece_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
  for index, (name, entry) in enumerate(shift.items()):
    colour = f"C{index}"
    for predictive, style in zip(PREDICTIVES, ("-", "--")):
      if entry[predictive] is None:
        continue
      for ax, metric in ((error_ax, "error"), (ece_ax, "ece")):
        values = [_mean(s) * 100 for s in entry[predictive][metric]]
        ax.plot(entry["angles"], values, style, color=colour, marker=".",
                label=f"{name} ({predictive})")  # fmt: skip
  error_ax.set(xlabel="rotation (degrees)", ylabel="test error (%)")
  ece_ax.set(xlabel="rotation (degrees)", ylabel="test ECE (%)")
  for ax in (error_ax, ece_ax):
    ax.grid(alpha=0.3)
  ece_ax.legend(fontsize=8)
  fig.suptitle("Rotated MNIST test images (Ovadia et al. 2019), mean over seeds")
  fig.tight_layout()
  save_figure(fig, path)
