"""The benchmark's report: statistics over seeds, report.md and the figures.

Everything here works on the JSON-serialisable run records of
:func:`jaxdiff.experiments.mnist_bnn.experiment.run_benchmark`, so a report can be rebuilt
from a saved report.json without JAX. Statistics over seeds treat None (a score that was not
finite) as missing and say how many runs count (``n``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdiff.experiments.mnist_bnn.config import (
  PUBLISHED_EPOCHS,
  PUBLISHED_HALVING_EPOCHS,
  BnnConfig,
)
from jaxdiff.experiments.mnist_bnn.registry import METHODS, SGHMC_MOMENTUM
from jaxdiff.files import pyplot, save_figure

HEADLINE = ("error", "nll", "ece")
PREDICTIVES = ("averaged", "final")
Stat = dict[str, Any]


def stat(values: Sequence[float | None]) -> Stat:
  """Mean, std (None for a single value) and count of the values that are not None."""
  present = np.array([v for v in values if v is not None], np.float64)
  if present.size == 0:
    return {"mean": None, "std": None, "n": 0}
  std = float(present.std()) if present.size >= 2 else None
  return {"mean": float(present.mean()), "std": std, "n": int(present.size)}


def summarize(seed_runs: Sequence[dict]) -> dict[str, dict]:
  """Per method: its learning rate and each predictive's scores, mean ± std over the seeds.

  A diverged seed is counted but left out of the scores: its last finite parameters are
  not a trained model, and its NLL is infinite where its error is not.
  """
  groups: dict[str, list[dict]] = {}
  for run in seed_runs:
    groups.setdefault(run["method"], []).append(run)
  summary = {}
  for name, runs in groups.items():
    summary[name] = {
      "learning_rate": runs[0]["learning_rate"],
      "seeds": len(runs),
      "diverged": sum(run["status"] != "ok" for run in runs),
      "snapshots": runs[0]["snapshots"],
      "epoch_time_s": runs[0]["epoch_time_s"],
      **{
        predictive: {
          metric: stat(
            [(run[predictive] or {}).get(metric) for run in runs if run["status"] == "ok"]
          )
          for metric in ("error", "nll", "ece", "brier")
        }
        for predictive in PREDICTIVES
      },
    }
  return summary


def tuning_table(tuning_runs: Sequence[dict]) -> dict[str, list[dict]]:
  """Per method, per learning rate of the grid: the validation scores and the run's status."""
  table: dict[str, list[dict]] = {}
  for run in tuning_runs:
    table.setdefault(run["method"], []).append(
      {
        "learning_rate": run["learning_rate"],
        "status": run["status"],
        "averaged": run["averaged"],
        "final": run["final"],
      }
    )
  return table


def describe_protocol(config: BnnConfig, num_train: int) -> dict[str, Any]:
  """What each method trained with, in words and numbers, for report.json and report.md."""
  halving = config.lr_halving_epochs
  tuning_halving = config.halving_epochs(config.run_tuning_epochs)
  cycle = config.epochs // config.cycles
  return {
    "published": config.is_published_protocol(),
    "epochs": config.epochs,
    "tuning_epochs": config.run_tuning_epochs,
    "lr_halving_epochs": halving,
    "tuning_lr_halving_epochs": tuning_halving,
    "burn_in_epochs": config.burn_in_epochs(config.epochs),
    "train_images": num_train,
    "diffusion": config.temperature / num_train,
    "methods": {
      name: _method_line(name, config, halving, cycle, num_train) for name in config.methods
    },
  }


def _method_line(name: str, config: BnnConfig, halving: float, cycle: int, num_train: int) -> str:
  spec = METHODS[name]
  noise = f"D = T/N = {config.temperature:g}/{num_train}"
  decay = f"learning rate halved every {halving:g} epochs"
  if spec.cyclical:
    return (
      f"SGLD with the cyclical cosine learning rate, {config.cycles} cycles of {cycle} epochs, "
      f"noiseless for the first {config.exploration:.0%} of each cycle and {noise} after; "
      "snapshots at the epochs inside each cycle's sampling phase"
    )
  if not spec.langevin:
    return f"plain SGD, {decay}; its average is an ensemble of its own trajectory's snapshots"
  kind = {
    "sgld": "SGLD",
    "psgld": "pSGLD (RMSprop preconditioner, adapted during each run's burn-in then frozen)",
    "sghmc": f"SGHMC, momentum {SGHMC_MOMENTUM:g}",
  }[name]
  return f"{kind}, {noise}, {decay}"


def _cell(value: Stat, scale: float, digits: int) -> str:
  if value["mean"] is None:
    return "—"
  spread = "" if value["std"] is None else f" ± {value['std'] * scale:.{digits}f}"
  return f"{value['mean'] * scale:.{digits}f}{spread}"


def headline_table(summary: dict[str, dict]) -> list[str]:
  """Markdown rows: test error (%), NLL and ECE (%) per method, averaged and final."""
  rows = [
    (
      "| method | lr | error % (avg) | error % (final) | NLL (avg) | NLL (final) "
      "| ECE % (avg) | ECE % (final) |"
    ),
    "|---|---|---|---|---|---|---|---|",
  ]
  for name, entry in summary.items():
    cells = []
    for metric, scale, digits in (("error", 100, 2), ("nll", 1, 4), ("ece", 100, 2)):
      cells += [_cell(entry[p][metric], scale, digits) for p in PREDICTIVES]
    count = entry["diverged"]
    diverged = f" ({count} of {entry['seeds']} diverged, left out)" if count else ""
    rows.append(f"| {name}{diverged} | {entry['learning_rate']:g} | " + " | ".join(cells) + " |")
  return rows


def _tuning_rows(tuning: dict) -> list[str]:
  grid = tuning["grid"]
  rows = [
    "| method | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | picked |",
    "|---|" + "---|" * (len(grid) + 1),
  ]
  for name, cells in tuning["table"].items():
    by_lr = {cell["learning_rate"]: cell for cell in cells}
    values = []
    for lr in grid:
      cell = by_lr.get(lr)
      averaged = cell and cell["averaged"]
      text = "—" if not averaged or averaged["nll"] is None else f"{averaged['nll']:.4f}"
      if cell and cell["status"] != "ok":
        text += " (diverged)"
      values.append(text)
    picked = tuning["picked"][name]
    # A pick at the grid's end says the best rate may lie beyond it.
    edge = " (grid edge)" if len(grid) > 1 and picked in (min(grid), max(grid)) else ""
    rows.append(f"| {name} | " + " | ".join(values) + f" | {picked:g}{edge} |")
  return rows


def _published_hours(result: dict) -> float:
  # Every method's tuning runs (one per grid point, this run's length) and its seeds for the
  # published epochs.
  epochs_per_method = (
    len(result["tuning"]["grid"]) * result["tuning"]["epochs"]
    + result["config"]["seeds"] * PUBLISHED_EPOCHS
  )
  epoch_seconds = sum(entry["epoch_time_s"] for entry in result["summary"].values())
  return epoch_seconds * epochs_per_method / 3600


def _tuning_length(protocol: dict) -> str:
  length = (
    f"{protocol['tuning_epochs']} epochs with the learning rate halved every "
    f"{protocol['tuning_lr_halving_epochs']:g}"
  )
  if protocol["tuning_epochs"] < protocol["epochs"]:
    length += f": the seeds' {protocol['epochs']} epochs and cadence scaled down to fit the budget"
  return length


def render_markdown(result: dict) -> str:
  """report.md: the setup (with the command to rerun it), the tuning, the test results."""
  config, protocol, env, data = (
    result["config"], result["protocol"], result["environment"], result["data"]
  )  # fmt: skip
  tuning = result["tuning"]
  lines = ["# Bayesian neural network on MNIST: SGD and SG-MCMC samplers", ""]
  if not protocol["published"]:
    scaled = protocol["lr_halving_epochs"] * PUBLISHED_EPOCHS == (
      PUBLISHED_HALVING_EPOCHS * protocol["epochs"]
    )
    cadence = " (the published cadence scaled to the run's length)" if scaled else ""
    lines += [
      (
        f"**This is a shortened run**, not the published protocol: the seeds trained "
        f"{protocol['epochs']} epochs instead of {PUBLISHED_EPOCHS}, with the learning rate "
        f"halved every {protocol['lr_halving_epochs']:g} epochs instead of every "
        f"{PUBLISHED_HALVING_EPOCHS}{cadence}; each tuning run trained "
        f"{protocol['tuning_epochs']} epochs (halving every "
        f"{protocol['tuning_lr_halving_epochs']:g}), and cSGLD ran {config['cycles']} cycles. "
        "The model, prior, batch, temperature, grid, seeds and held-out split are as "
        f"published. Scores after {protocol['epochs']} epochs are not comparable to published "
        f"{PUBLISHED_EPOCHS}-epoch ones. At this run's seconds per epoch, the published "
        f"protocol's seeds (with this run's tuning) would train for about "
        f"{_published_hours(result):.1f} h on this machine."
      ),
      "",
    ]
  lines += [
    "## Setup",
    "",
    (
      f"- Data: {data['label']} (`{data['source']}`); {data['train_images']} training images, "
      f"the last {data['validation_images']} training images held out for tuning, "
      f"{data['test_images']} test images."
    ),
    (
      "- Model: 784-400-400-10 ReLU MLP, pixels in [0, 1], N(0, "
      f"{config['prior_variance']:g}) prior on every weight and bias: the loss is the mean "
      "cross-entropy plus ½‖θ‖²/(σ²N) with N the training images above."
    ),
    (
      f"- Batch {config['batch_size']}, {protocol['epochs']} epochs, {config['seeds']} seeds "
      f"per method; T = {config['temperature']:g}, so D = T/N = {protocol['diffusion']:.3g}."
    ),
    (
      f"- Averaged predictive: the mean of the predictive probabilities over one snapshot per "
      f"epoch after a burn-in of {protocol['burn_in_epochs']} epochs (cSGLD: see below). "
      "Final: the last parameters alone."
    ),
    (
      f"- Learning-rate tuning: one shared grid {tuning['grid']} for every method; each method "
      f"trains one run per grid point ({_tuning_length(protocol)}; the same initial "
      "parameters, data order and noise for every point) on the training images and is scored "
      f"on the held-out images; the picked rate is the one with the {tuning['criterion']}. The test "
      "set is used only for the seeds' runs at the picked rate."
    ),
    "- Methods:",
    *[f"  - `{name}`: {line}" for name, line in protocol["methods"].items()],
    *[f"- {note}" for note in config["notes"]],
    (
      f"- Machine: {env['cpu_model']}, {env['usable_cores']} usable cores, "
      f"{env['device_count']} {env['platform']} device(s); jax {env['versions'].get('jax')}; "
      f"wall time {env['wall_time_s'] / 60:.1f} min ({env['date']})."
    ),
    "",
    "Command:",
    "",
    "```bash",
    result["command"],
    "```",
    "",
    "## Learning-rate tuning (validation NLL of the averaged predictive)",
    "",
    *_tuning_rows(tuning),
    "",
    "## Test results (mean ± std over seeds)",
    "",
    *headline_table(result["summary"]),
    "",
    "Snapshots averaged per seed run: "
    + ", ".join(f"{name} {entry['snapshots']}" for name, entry in result["summary"].items())
    + ". Seconds per epoch of one run: "
    + ", ".join(f"{name} {entry['epoch_time_s']:.1f}" for name, entry in result["summary"].items())
    + ".",
    "",
    (
      "Figures: `scores.png` (the table's numbers), `tuning.png` (validation NLL over the grid), "
      "`curves.png` (training loss and test NLL of the current parameters per epoch)."
    ),
    "",
  ]
  return "\n".join(lines)


def plot_scores(summary: dict[str, dict], path: str | os.PathLike) -> None:
  """Saves a PNG of test error, NLL and ECE per method, averaged and final, with seed stds."""
  plt = pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
  names = list(summary)
  positions = np.arange(len(names))
  width = 0.38
  for ax, metric, scale, label in zip(
    axes, HEADLINE, (100, 1, 100), ("test error (%)", "test NLL", "test ECE (%)")
  ):
    for offset, predictive in ((-width / 2, "averaged"), (width / 2, "final")):
      stats = [summary[name][predictive][metric] for name in names]
      means = [np.nan if s["mean"] is None else s["mean"] * scale for s in stats]
      stds = [0.0 if s["std"] is None else s["std"] * scale for s in stats]
      ax.bar(positions + offset, means, width, yerr=stds, capsize=3, label=predictive)
    ax.set(xticks=positions, xticklabels=names, ylabel=label)
    ax.grid(alpha=0.3, axis="y")
  axes[0].legend()
  fig.suptitle("Test scores, mean ± std over seeds")
  fig.tight_layout()
  save_figure(fig, path)


def plot_tuning(table: dict[str, list[dict]], path: str | os.PathLike) -> None:
  """Saves a PNG of each method's validation NLL (averaged predictive) over the lr grid."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for name, cells in table.items():
    rates = [cell["learning_rate"] for cell in cells]
    nll = [
      np.nan if not cell["averaged"] or cell["averaged"]["nll"] is None else cell["averaged"]["nll"]
      for cell in cells
    ]
    ax.plot(rates, nll, marker="o", label=name)
  ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="validation NLL (averaged)",
         title="Learning-rate tuning on the held-out images")  # fmt: skip
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  save_figure(fig, path)


def plot_curves(seed_runs: Sequence[dict], path: str | os.PathLike) -> None:
  """Saves a PNG of training loss and the current parameters' test NLL per epoch (seed means)."""
  plt = pyplot()
  fig, (loss_ax, nll_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
  groups: dict[str, list[dict]] = {}
  for run in seed_runs:
    groups.setdefault(run["method"], []).append(run)
  for name, runs in groups.items():
    length = min(len(run["epochs"]) for run in runs)
    if length == 0:
      continue
    epochs = np.arange(1, length + 1)
    for ax, key in ((loss_ax, "train_loss"), (nll_ax, "nll")):
      matrix = np.array(
        [[np.nan if e[key] is None else e[key] for e in run["epochs"][:length]] for run in runs]
      )
      ax.plot(epochs, np.nanmean(matrix, axis=0), marker=".", label=name)
  loss_ax.set(xlabel="epoch", ylabel="training loss (with prior)", yscale="log",
              title="Training loss")  # fmt: skip
  nll_ax.set(xlabel="epoch", ylabel="test NLL", yscale="log", title="Test NLL, current parameters")
  for ax in (loss_ax, nll_ax):
    ax.grid(alpha=0.3)
  nll_ax.legend()
  fig.suptitle("Mean over seeds")
  fig.tight_layout()
  save_figure(fig, path)
