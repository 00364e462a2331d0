"""The comparison's figures: curves.png, sweep.png and cold_posterior.png.

curves.png has the loss and accuracy per epoch, sweep.png one lr × D accuracy heat map per
optimizer, cold_posterior.png the test error and NLL against the posterior temperature.
"""

from __future__ import annotations

import os

import numpy as np

from jaxdiff.experiments.cifar.report import group_by_optimizer, number, score
from jaxdiff.files import pyplot, save_figure


def _mean_std(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  # Column mean and sample std (ddof = 1, as the report's) over finite entries, without a
  # warning: NaN mean for a column with none, NaN std (no band) for one with fewer than two.
  finite = np.isfinite(matrix)
  count = finite.sum(axis=0)
  values = np.where(finite, matrix, 0.0)
  mean = values.sum(axis=0) / np.maximum(count, 1)
  var = (np.where(finite, matrix - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count - 1, 1)
  return np.where(count > 0, mean, np.nan), np.where(count > 1, np.sqrt(var), np.nan)


def plot_curves(runs: list[dict], path: str | os.PathLike) -> None:
  """Saves a PNG of training loss and test accuracy per epoch, mean ± sample std over seeds."""
  plt = pyplot()
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, group in group_by_optimizer(runs).items():
    length = max((len(run.get("epochs") or []) for run in group), default=0)
    if length == 0:
      continue
    for ax, value, scale in (
      (loss_ax, lambda epoch: score(epoch["train"], "loss"), 1.0),
      (acc_ax, lambda epoch: score(epoch["current"], "accuracy"), 100.0),
    ):
      # Runs that stopped early (diverged) are padded with NaN: missing, not zero.
      matrix = np.full((len(group), length), np.nan)
      for i, run in enumerate(group):
        values = [value(epoch) for epoch in run.get("epochs") or []]
        matrix[i, : len(values)] = values
      mean, std = _mean_std(matrix * scale)
      epochs = np.arange(1, length + 1)
      (line,) = ax.plot(epochs, mean, marker=".", label=name)
      ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  loss_ax.set(xlabel="epoch", ylabel="training loss", title="Training loss", yscale="log")
  acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
  for ax in (loss_ax, acc_ax):
    ax.grid(alpha=0.3)
  # One legend below both panels, where it hides no curve.
  handles, labels = loss_ax.get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False)
  fig.suptitle("Mean ± sample std over seeds")
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  save_figure(fig, path)


def plot_sweep(sweep: dict, path: str | os.PathLike) -> None:
  """Saves a PNG of one lr × D accuracy heat map per optimizer and their accuracy spreads."""
  plt = pyplot()
  opts = sweep["optimizers"]
  panels = len(opts) + 1
  cols = min(panels, 3)
  rows = -(-panels // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.8 * rows), squeeze=False)
  axes = axes.ravel()
  for ax, (name, entry) in zip(axes, opts.items()):
    grid = np.array([[np.nan if a is None else a * 100 for a in row] for row in entry["accuracy"]])
    ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
      text = "—" if np.isnan(value) else f"{value:.1f}"
      # Viridis turns light above the middle (and a missing cell is blank), where white vanishes.
      dark = np.isnan(value) or value > 50
      ax.text(j, i, text, ha="center", va="center", color="k" if dark else "w")
    ax.set_xticks(range(len(entry["diffusions"])))
    ax.set_xticklabels(["none" if d is None else f"{d:g}" for d in entry["diffusions"]])
    ax.set_yticks(range(len(entry["learning_rates"])))
    ax.set_yticklabels([f"{lr:g}" for lr in entry["learning_rates"]])
    ax.set(xlabel="diffusion D", ylabel="learning rate", title=f"{name}: test accuracy (%)")
  bar_ax, positions = axes[len(opts)], np.arange(len(opts))
  for offset, key, label in ((-0.2, "spread", "whole grid"), (0.2, "lr_spread", "lr at best D")):
    spreads = [(e["sensitivity"][key] or 0.0) * 100 for e in opts.values()]
    bar_ax.bar(positions + offset, spreads, width=0.4, label=label)
  bar_ax.set_xticks(positions, list(opts), rotation=30)
  bar_ax.set(ylabel="max − min test accuracy (pp)", title="Sensitivity: accuracy spread")
  bar_ax.legend()
  for ax in axes[panels:]:
    ax.axis("off")
  fig.tight_layout()
  save_figure(fig, path)


def plot_cold_posterior(cold_posterior: dict, path: str | os.PathLike) -> None:
  """Saves a PNG of the test error and NLL against T: the posterior average's and final's."""
  plt = pyplot()
  fig, (error_ax, nll_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, entries in cold_posterior["optimizers"].items():
    temperatures = [entry["temperature"] for entry in entries]
    for ax, key, scale in ((error_ax, "error", 100.0), (nll_ax, "nll", 1.0)):
      for kind, style in (("posterior", "-o"), ("final", ":x")):
        means = [number(entry[f"{kind}_{key}"]["mean"]) * scale for entry in entries]
        label = f"{name} ({'posterior average' if kind == 'posterior' else 'final iterate'})"
        ax.plot(temperatures, means, style, label=label)
  error_ax.set(xlabel="temperature T", ylabel="test error (%)", title="Test error", xscale="log")
  nll_ax.set(xlabel="temperature T", ylabel="test NLL", title="Test NLL", xscale="log")
  for ax in (error_ax, nll_ax):
    ax.grid(alpha=0.3)
  error_ax.legend(fontsize="small")
  fig.suptitle("Cold posterior: mean over seeds")
  fig.tight_layout()
  save_figure(fig, path)
