"""The benchmark's report: statistics over seeds and report.md.

Everything here works on the JSON-serialisable :class:`jaxdiff.classification.RunRecord`\\ s of
:func:`jaxdiff.experiments.mnist_bnn.experiment.run_benchmark`, so a report can be rebuilt from
a saved report.json without JAX. Statistics over seeds are :func:`jaxdiff.metrics.seed_statistic`
(mean, sample standard deviation, standard error, count; a score that was not finite is
missing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jaxdiff.experiments.mnist_bnn.config import COLD_METHODS, BnnConfig
from jaxdiff.experiments.mnist_bnn.registry import METHODS, SGHMC_MOMENTUM
from jaxdiff.metrics import SeedStatistic, seed_statistic

PREDICTIVES = ("averaged", "final")
METRICS = ("error", "nll", "ece", "brier")


def _by_method(runs: Sequence[dict]) -> dict[str, list[dict]]:
  groups: dict[str, list[dict]] = {}
  for run in runs:
    groups.setdefault(run["method"], []).append(run)
  return groups


def _scores(runs: Sequence[dict]) -> dict[str, dict[str, SeedStatistic]]:
  """Each predictive's metrics over the runs that did not diverge."""
  kept = [run for run in runs if run["status"] == "ok"]
  return {
    predictive: {
      metric: seed_statistic([(run[predictive] or {}).get(metric) for run in kept])
      for metric in METRICS
    }
    for predictive in PREDICTIVES
  }


def summarize(seed_runs: Sequence[dict], picked: dict[str, float | None]) -> dict[str, dict]:
  """Per method: its learning rate and each predictive's scores over the seeds.

  A diverged seed is counted but left out of the scores: its last finite parameters are not a
  trained model, and its NLL is infinite where its error is not. A method whose every tuning
  run diverged has no seeds: its entry says so (``failed``).
  """
  groups = _by_method(seed_runs)
  summary = {}
  for name, rate in picked.items():
    runs = groups.get(name, [])
    if rate is None or not runs:
      summary[name] = {"learning_rate": None, "failed": "every tuning run diverged or took no "
                       "snapshot"}  # fmt: skip
      continue
    summary[name] = {
      "learning_rate": rate,
      "seeds": len(runs),
      "diverged": sum(run["status"] != "ok" for run in runs),
      "snapshots": runs[0]["snapshots"],
      "step_time_s": runs[0]["step_time_s"],
      **_scores(runs),
    }
  return summary


def score_runs(runs: Sequence[dict], picked: dict[str, float | None]) -> dict[str, dict]:
  """The report's scores of a benchmark's ``runs`` (every phase's records): ``summary``,
  ``chain``, ``cold_posterior`` and ``shift``."""
  seed_runs = [run for run in runs if run["phase"] == "seeds"]
  return {
    "summary": summarize(seed_runs, picked),
    "chain": summarize_chain(seed_runs),
    "cold_posterior": summarize_temperatures(
      [run for run in runs if run["phase"] in ("seeds", "temperatures")]
    ),
    "shift": summarize_shift(seed_runs),
  }


def summarize_temperatures(runs: Sequence[dict]) -> dict[str, list[dict]]:
  """The cold-posterior curve: per sampler that ran one, per temperature, the seeds' scores.

  Empty where no method trained at a second temperature.
  """
  curve = {}
  for name, group in _by_method(runs).items():
    temperatures = sorted({run["temperature"] for run in group}, reverse=True)
    if name not in COLD_METHODS or len(temperatures) < 2:
      continue
    curve[name] = [
      {"temperature": t, **_scores([run for run in group if run["temperature"] == t])}
      for t in temperatures
    ]
  return curve


def summarize_shift(seed_runs: Sequence[dict]) -> dict[str, dict]:
  """Per method, per angle of the rotated test images: each predictive's metrics over seeds."""
  shift = {}
  for name, runs in _by_method(seed_runs).items():
    kept = [run for run in runs if run["status"] == "ok" and run.get("shift")]
    if not kept:
      continue
    angles = kept[0]["shift"]["angles"]
    shift[name] = {"angles": angles}
    for predictive in PREDICTIVES:
      if any(run["shift"][predictive] is None for run in kept):
        shift[name][predictive] = None
        continue
      shift[name][predictive] = {
        metric: [
          seed_statistic([run["shift"][predictive][i][metric] for run in kept])
          for i in range(len(angles))
        ]
        for metric in METRICS
      }
  return shift


def chain_milestones(epochs: int) -> list[int]:
  """Epochs 1, 2, 5, 10, 20, 50, … below ``epochs``, then ``epochs`` itself."""
  milestones, scale = [], 1
  while True:
    for factor in (1, 2, 5):
      if factor * scale >= epochs:
        return [*milestones, epochs]
      milestones.append(factor * scale)
    scale *= 10


def summarize_chain(seed_runs: Sequence[dict]) -> dict[str, dict]:
  """What a longer chain buys: per method, at each of :func:`chain_milestones`, the test error
  of the posterior average up to that epoch and of the parameters at it, over the seeds that did
  not diverge (the average's statistics have no values before its first snapshot).
  """
  chain = {}
  for name, runs in _by_method(seed_runs).items():
    kept = [run for run in runs if run["status"] == "ok"]
    length = min((len(run["epochs"]) for run in kept), default=0)
    if not length:
      continue
    epochs = chain_milestones(length)
    entry: dict[str, Any] = {"epochs": epochs}
    for predictive in ("averaged", "current"):
      entry[predictive] = [
        seed_statistic([(run["epochs"][epoch - 1][predictive] or {}).get("error")
                        for run in kept])
        for epoch in epochs
      ]  # fmt: skip
    chain[name] = entry
  return chain


def tuning_table(tuning_runs: Sequence[dict]) -> dict[str, list[dict]]:
  """Per method, per learning rate of the grid: the validation scores and the run's status."""
  return {
    name: [{"learning_rate": run["learning_rate"], "status": run["status"],
            "averaged": run["averaged"], "final": run["final"]} for run in runs]
    for name, runs in _by_method(tuning_runs).items()
  }  # fmt: skip


def describe_protocol(config: BnnConfig, num_train: int) -> dict[str, Any]:
  """What each method trained with, in words and numbers, for report.json and report.md."""
  halving = config.lr_halving_epochs
  return {
    "name": config.protocol,
    "published": config.is_published_protocol(),
    "epochs": config.epochs,
    "tuning_epochs": config.run_tuning_epochs,
    "lr_schedule": config.lr_schedule,
    "lr_halving_epochs": halving,
    "tuning_lr_halving_epochs": config.halving_epochs(config.run_tuning_epochs),
    "burn_in_epochs": config.burn_in_epochs(config.epochs),
    "thin_steps": config.thin_steps,
    "train_images": num_train,
    "diffusion": config.temperature / num_train,
    "methods": {name: _method_line(name, config, num_train) for name in config.methods},
  }


def _method_line(name: str, config: BnnConfig, num_train: int) -> str:
  spec = METHODS[name]
  noise = f"D = T/N = {config.temperature:g}/{num_train}"
  if config.lr_schedule == "constant":
    rate = "a constant learning rate"
  else:
    rate = f"learning rate halved every {config.lr_halving_epochs:g} epochs"
  if spec.cyclical:
    cycle = config.epochs // config.cycles
    return (
      f"SGLD with the cyclical cosine learning rate, {config.cycles} cycles of {cycle} epochs, "
      f"noiseless for the first {config.exploration:.0%} of each cycle and {noise} after; "
      "snapshots at the epochs inside each cycle's sampling phase"
    )
  if not spec.langevin:
    return f"plain SGD, {rate}; its average is an ensemble of its own trajectory's snapshots"
  kind = {
    "sgld": "SGLD",
    "psgld": "pSGLD (preconditioner bounded by 1, adapted during each run's burn-in then frozen)",
    "sghmc": f"SGHMC, momentum {SGHMC_MOMENTUM:g}",
  }[name]
  return f"{kind}, {noise}, {rate}"


def _cell(value: SeedStatistic, scale: float, digits: int) -> str:
  if value["mean"] is None:
    return "—"
  spread = "" if value["se"] is None else f" ± {value['se'] * scale:.{digits}f}"
  return f"{value['mean'] * scale:.{digits}f}{spread}"


def headline_table(summary: dict[str, dict]) -> list[str]:
  """Markdown rows: test error (%), NLL and ECE (%) per method, averaged and final, ± SE."""
  rows = [
    (
      "| method | lr | error % (avg) | error % (final) | NLL (avg) | NLL (final) "
      "| ECE % (avg) | ECE % (final) |"
    ),
    "|---|---|---|---|---|---|---|---|",
  ]
  for name, entry in summary.items():
    if entry["learning_rate"] is None:
      rows.append(f"| {name} ({entry['failed']}) | — |" + " — |" * 6)
      continue
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
    if picked is None:
      choice = "none: every run diverged"
    else:
      # A pick at the grid's end says the best rate may lie beyond it.
      edge = " (grid edge)" if picked in (min(grid), max(grid)) else ""
      choice = f"{picked:g}{edge}"
    rows.append(f"| {name} | " + " | ".join(values) + f" | {choice} |")
  return rows


def _cold_rows(curve: dict[str, list[dict]]) -> list[str]:
  rows = ["| method | T | error % (avg) | error % (final) | NLL (avg) | NLL (final) |",
          "|---|---|---|---|---|---|"]  # fmt: skip
  for name, points in curve.items():
    for point in points:
      cells = [_cell(point[p]["error"], 100, 2) for p in PREDICTIVES]
      cells += [_cell(point[p]["nll"], 1, 4) for p in PREDICTIVES]
      rows.append(f"| {name} | {point['temperature']:g} | " + " | ".join(cells) + " |")
  return rows


def _chain_rows(chain: dict[str, dict]) -> list[str]:
  epochs = sorted({epoch for entry in chain.values() for epoch in entry["epochs"]})
  rows = ["| method | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
          "|---|" + "---|" * len(epochs)]  # fmt: skip
  for name, entry in chain.items():
    for predictive in ("averaged", "current"):
      if all(stat["mean"] is None for stat in entry[predictive]):
        continue  # no snapshot in the run
      cells = dict(zip(entry["epochs"], entry[predictive]))
      rows.append(f"| {name} ({predictive}) | "
                  + " | ".join(_cell(cells[e], 100, 2) if e in cells else "" for e in epochs)
                  + " |")  # fmt: skip
  return rows


def _shift_rows(shift: dict[str, dict], metric: str, scale: float, digits: int) -> list[str]:
  angles = next(iter(shift.values()))["angles"]
  rows = ["| method | " + " | ".join(f"{a:g}°" for a in angles) + " |",
          "|---|" + "---|" * len(angles)]  # fmt: skip
  for name, entry in shift.items():
    for predictive in PREDICTIVES:
      if entry[predictive] is None:
        continue
      values = [s["mean"] for s in entry[predictive][metric]]
      cells = ["—" if v is None else f"{v * scale:.{digits}f}" for v in values]
      rows.append(f"| {name} ({predictive}) | " + " | ".join(cells) + " |")
  return rows


def _duration(seconds: float) -> str:
  return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def _length_note(result: dict) -> list[str]:
  config, protocol = result["config"], result["protocol"]
  if protocol["published"]:
    return []
  preset = dataclasses.asdict(BnnConfig.preset(config["protocol"]))
  names = {"epochs": "epochs", "lr_schedule": "learning-rate schedule",
           "lr_halving_epochs": "epochs between halvings", "burn_in": "burn-in fraction",
           "thin_steps": "steps between snapshots", "input_scale": "input scale"}  # fmt: skip
  changes = [f"{label} {config[key]} (the protocol's: {preset[key]})"
             for key, label in names.items() if config[key] != preset[key]]  # fmt: skip
  return [
    f"**This run changes the {config['protocol']} protocol's length or schedule**: "
    + "; ".join(changes)
    + ". Its scores are not comparable to the protocol's published ones.",
    "",
  ]


def _machines(result: dict) -> list[str]:
  """The setup's machine line, or a run pooled from parts (:mod:`.pool`): a line per part."""
  parts = result.get("parts")
  if not parts:
    return [f"- Machine: {_machine(result['environment'])}."]
  return [
    f"- Pooled from {len(parts)} runs, each of some of the seeds (`experiments/mnist_bnn_pool.py`):",
    *[f"  - {_seed_names(part['seeds'])}: {_machine(part['environment'])}." for part in parts],
  ]  # fmt: skip


def _machine(env: dict) -> str:
  load = env.get("load_average")
  return (
    f"{env['cpu_model']}, {env['usable_cores']} usable cores, {env['device_count']} "
    f"{env['platform']} device(s); jax {env['versions'].get('jax')}; wall time "
    f"{_duration(env['wall_time_s'])} ({env['date']})"
    + (f"; load average at the end {load[0]:g} (1 min), {load[2]:g} (15 min)" if load else "")
  )


def seed_range(config: dict) -> list[int]:
  """The seeds a report's run trained: ``first_seed`` and the next ``seeds`` − 1 (reports from
  before ``first_seed`` existed trained 0, 1, …)."""
  first = config.get("first_seed", 0)
  return list(range(first, first + config["seeds"]))


def _seed_names(seeds: Sequence[int]) -> str:
  return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"


def _seeds(config: dict) -> str:
  """How many seeds, and which where they are not the root's first."""
  seeds = seed_range(config)
  count = f"{len(seeds)} seed" + ("s" if len(seeds) > 1 else "")
  return count if seeds[0] == 0 else f"{count} ({_seed_names(seeds)} of the root's)"


def render_markdown(result: dict) -> str:
  """report.md: the setup and the command that made it, the tuning, the test results, the
  test error along the chain, the cold-posterior curve and the scores under rotation."""
  config, protocol, data = result["config"], result["protocol"], result["data"]
  tuning = result["tuning"]
  scale = config["input_scale"]
  lines = ["# Bayesian neural network on MNIST: SGD and SG-MCMC samplers", ""]
  lines += _length_note(result)
  lines += [
    "## Setup",
    "",
    f"- Protocol: `{config['protocol']}` (see `jaxdiff/experiments/mnist_bnn/config.py`), "
    f"with the flags of the command below on top.",
    (
      f"- Data: {data['label']} (`{data['source']}`); {data['train_images']} training images, "
      f"the last {data['validation_images']} training images held out for tuning, "
      f"{data['test_images']} test images."
    ),
    (
      f"- Model: 784-400-400-10 ReLU MLP, input pixel/255 × {scale:g}, N(0, "
      f"{config['prior_variance']:g}) prior on every weight and bias: the loss is the mean "
      "cross-entropy plus ½‖θ‖²/(σ²N) with N the training images above."
    ),
    (
      f"- Batch {config['batch_size']}, {protocol['epochs']} epochs, {_seeds(config)} per "
      f"method; T = {config['temperature']:g}, so D = T/N = {protocol['diffusion']:.3g}."
    ),
    (
      "- Averaged predictive: the mean of the predictive probabilities over one snapshot "
      + (f"every {protocol['thin_steps']} steps" if protocol["thin_steps"] else "per epoch")
      + f" after a burn-in of {protocol['burn_in_epochs']} epochs (cSGLD: see below). "
      "Final: the last parameters alone."
    ),
    (
      f"- Learning-rate tuning: one shared grid {tuning['grid']} for every method; each method "
      f"trains one run per grid point ({tuning['epochs']} epochs; the same initial parameters, "
      "data order and noise for every point) on the training images and is scored on the "
      f"held-out images; the picked rate is the one with the {tuning['criterion']}. The test "
      "set is used only for the seeds' runs at the picked rate."
      if tuning["tuned"]
      else f"- No tuning: every method trains at the protocol's learning rate {tuning['grid'][0]:g}."
    ),
    "- Methods:",
    *[f"  - `{name}`: {line}" for name, line in protocol["methods"].items()],
    *[f"- {note}" for note in config["notes"]],
    *_machines(result),
    "",
    "Command (one run that trains every seed; each part's own is in report.json's `parts`):"
    if result.get("parts")
    else "Command (add `--resume` to continue it from its checkpoints after an interruption):",
    "",
    "```bash",
    result["command"],
    "```",
    "",
  ]
  if tuning["tuned"]:
    lines += ["## Learning-rate tuning (validation NLL of the averaged predictive)", "",
              *_tuning_rows(tuning), ""]  # fmt: skip
  lines += [
    "## Test results (mean ± standard error over seeds)",
    "",
    *headline_table(result["summary"]),
    "",
    "Snapshots averaged per seed run: "
    + ", ".join(
      f"{name} {entry['snapshots']}"
      for name, entry in result["summary"].items()
      if "seeds" in entry
    )
    + ". Seconds per step of one run (the first call, with compilation, left out): "
    + ", ".join(
      f"{name} {entry['step_time_s'] * 1000:.2f} ms"
      for name, entry in result["summary"].items()
      if entry.get("step_time_s")
    )
    + ".",
    "",
  ]
  if result["chain"]:  # empty where every method's tuning diverged
    lines += [
      "## The chain's length (test error %, mean ± standard error over seeds)",
      "",
      "The posterior average up to each epoch (averaged: its snapshots so far) and the "
      "parameters at that epoch (current); — before the first snapshot.",
      "",
      *_chain_rows(result["chain"]),
      "",
    ]
  if result["cold_posterior"]:
    lines += ["## The cold-posterior curve (test, mean ± standard error over seeds)", "",
              *_cold_rows(result["cold_posterior"]), ""]  # fmt: skip
  if result["shift"]:
    lines += ["## Rotated test images (mean over seeds)", ""]
    for metric, name, scale_, digits in (("error", "error %", 100, 1), ("nll", "NLL", 1, 3),
                                         ("ece", "ECE %", 100, 1), ("brier", "Brier", 1, 3)):  # fmt: skip
      lines += [f"{name} by angle:", "", *_shift_rows(result["shift"], metric, scale_, digits), ""]
  figures = [("scores.png", "the test table"), ("curves.png", "training loss, the current "
             "parameters' test NLL and the averaged predictive's test error per epoch")]  # fmt: skip
  if tuning["tuned"]:
    figures.append(("tuning.png", "validation NLL over the grid"))
  if result["cold_posterior"]:
    figures.append(("cold_posterior.png", "error and NLL against T"))
  if result["shift"]:
    figures.append(("shift.png", "error and ECE against the rotation"))
  lines += ["Figures: " + ", ".join(f"[`{name}`]({name}) ({what})" for name, what in figures)
            + ".", ""]  # fmt: skip
  if result.get("summaries"):
    folder = result["summaries"]
    lines += [f"Live metrics of every run, per step and per epoch: [`{folder}/`]({folder}/), "
              f"`tensorboard --logdir {folder}` from this folder (one TensorBoard run per "
              "phase, method and run), or each run's `scalars.jsonl`.", ""]  # fmt: skip
  return "\n".join(lines)
