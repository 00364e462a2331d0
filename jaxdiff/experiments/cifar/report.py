"""The comparison's report: statistics over seeds, the article's claims judged, report.md.

Everything here works on the JSON-serialisable run records of
:func:`jaxdiff.experiments.cifar.experiment.run_comparison` (one
:class:`~jaxdiff.experiments.cifar.experiment.ComparisonRecord` per optimizer × setting × seed:
the test set's :class:`~jaxdiff.classification.Scores` per epoch, final and averaged, and the
final parameters' on the training images), so a report can be rebuilt from a saved report.json
without JAX.

Statistics over seeds treat NaN, ±inf and None as missing (a diverged run) and say how many
runs count (``n``). Summaries hold None instead of NaN so they stay valid JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdiff.experiments.cifar.registry import OPTIMIZERS, is_langevin

# "Little cost" is read as at most 10 % slower per step than SGD.
COST_TOLERANCE = 1.10
Stat = dict[str, Any]


def judge(better_is: str, langevin: tuple, baseline: tuple) -> str:
  """Decides one claim from two ``(mean, std)`` pairs over seeds.

  Args:
    better_is: ``"lower"`` or ``"higher"``: which direction of the metric is better.
    langevin: ``(mean, std)`` of the Langevin optimizer; None entries mean unmeasured.
    baseline: ``(mean, std)`` of the optimizer it is compared with.

  Returns:
    ``"supported"`` if Langevin is better by more than the larger of the two stds,
    ``"not supported"`` if worse by more than that, else ``"inconclusive"``
    (always when a std is None: one seed gives no measure of the noise).
  """
  if better_is not in ("lower", "higher"):
    raise ValueError(f"better_is must be 'lower' or 'higher', got {better_is!r}")
  (l_mean, l_std), (b_mean, b_std) = langevin, baseline
  # Without a spread on both sides (a single seed) no difference can be judged.
  if l_mean is None or b_mean is None or l_std is None or b_std is None:
    return "inconclusive"
  margin = max(l_std, b_std)
  advantage = (b_mean - l_mean) if better_is == "lower" else (l_mean - b_mean)
  if advantage > margin:
    return "supported"
  if advantage < -margin:
    return "not supported"
  return "inconclusive"


def number(value: Any) -> float:
  """A record's value as a float; None (a diverged or unmeasured run) is NaN."""
  return np.nan if value is None else float(value)


def score(scores: dict | None, metric: str) -> float:
  """One metric of a :class:`~jaxdiff.classification.Scores`, NaN without it (no average)."""
  return number(None if scores is None else scores.get(metric))


def _stat(values: Sequence[Any]) -> Stat:
  arr = np.array([number(v) for v in values], dtype=np.float64)
  finite = arr[np.isfinite(arr)]
  if finite.size == 0:
    return {"mean": None, "std": None, "n": 0}
  # One value has no spread to measure: its std is unknown, not zero.
  std = float(finite.std()) if finite.size >= 2 else None
  return {"mean": float(finite.mean()), "std": std, "n": int(finite.size)}


def group_by_optimizer(runs: Sequence[dict]) -> dict[str, list[dict]]:
  """Runs by optimizer, in order of first appearance."""
  groups: dict[str, list[dict]] = {}
  for run in runs:
    groups.setdefault(run["method"], []).append(run)
  return groups


def _single(name: str, group: list[dict], key: str) -> Any:
  values = list(dict.fromkeys(run.get(key) for run in group))
  if len(values) > 1:
    raise ValueError(f"{name} runs mix {key} values {values}; use summarize_sweep for grids")
  return values[0]


def _threshold_key(threshold: float) -> str:
  return f"{threshold:g}"


def _epochs_to(curve: list[dict], threshold: float) -> int | None:
  for record in curve:
    if score(record["current"], "accuracy") >= threshold:
      return int(record["epoch"])
  return None


def _best(curve: list[dict]) -> float:
  accuracies = np.array([score(record["current"], "accuracy") for record in curve])
  finite = accuracies[np.isfinite(accuracies)]
  return float(finite.max()) if finite.size else np.nan


def _is_baseline(name: str) -> bool:
  return name in OPTIMIZERS and not OPTIMIZERS[name].langevin


def _noiseless_pairs() -> list[tuple[str, str]]:
  """Each Langevin optimizer with its noiseless twin: the same update without the noise."""
  return [(name, spec.baseline) for name, spec in OPTIMIZERS.items() if spec.baseline]


def summarize(runs: list[dict], thresholds: Sequence[float] = (0.3, 0.4, 0.5)) -> dict:
  """Aggregates runs over seeds, per optimizer in order of first appearance.

  Args:
    runs: run records (keys ``method``, ``seed``, ``learning_rate``, ``diffusion``,
      ``temperature``, ``status``, ``epochs``, ``last_epoch_loss_std``, ``final``,
      ``final_train``, ``averaged``, ``snapshots``, ``step_time_s``), one hyper-parameter
      setting per optimizer.
    thresholds: test accuracies whose first-reaching epoch is reported.

  Returns:
    ``{"thresholds": [...], "optimizers": {name: entry}}``. Each metric in an entry is a
    stat ``{"mean", "std", "n"}`` over the runs where it is finite; ``epochs_to`` maps
    ``"0.4"`` to a stat plus ``not_reached`` (runs that never reached it, left out of the
    mean); ``posterior_average`` is None or a stat per metric of the runs that have one.

  Raises:
    ValueError: if one optimizer's runs mix learning rates, diffusions or temperatures.
  """
  groups = group_by_optimizer(runs)
  sgd_time = (
    _stat([r.get("step_time_s") for r in groups["sgd"]])["mean"] if "sgd" in groups else None
  )
  optimizers = {}
  for name, group in groups.items():
    finals = [run["final"] for run in group]
    trains = [run["final_train"] for run in group]
    curves = [run.get("epochs") or [] for run in group]
    entry: dict[str, Any] = {
      "runs": len(group),
      "seeds": [run.get("seed") for run in group],
      "diverged": sum(run.get("status") == "diverged" for run in group),
      **{key: _single(name, group, key) for key in ("learning_rate", "diffusion", "temperature")},
    }
    entry["final_test_accuracy"] = _stat([score(final, "accuracy") for final in finals])
    entry["final_train_accuracy"] = _stat([score(train, "accuracy") for train in trains])
    entry["test_nll"] = _stat([score(final, "nll") for final in finals])
    entry["test_ece"] = _stat([score(final, "ece") for final in finals])
    entry["best_test_accuracy"] = _stat([_best(curve) for curve in curves])
    entry["generalization_gap"] = _stat(
      [score(t, "accuracy") - score(f, "accuracy") for t, f in zip(trains, finals)]
    )
    entry["last_epoch_loss_std"] = _stat([run.get("last_epoch_loss_std") for run in group])
    entry["step_time_s"] = _stat([run.get("step_time_s") for run in group])
    step_time = entry["step_time_s"]["mean"]
    entry["step_time_vs_sgd"] = step_time / sgd_time if sgd_time and step_time else None
    entry["epochs_to"] = {}
    for threshold in thresholds:
      reached = [_epochs_to(curve, threshold) for curve in curves]
      entry["epochs_to"][_threshold_key(threshold)] = {
        **_stat([epoch for epoch in reached if epoch is not None]),
        "not_reached": sum(epoch is None for epoch in reached),
      }
    averaged = [run for run in group if run["averaged"]]
    entry["posterior_average"] = None
    if averaged:
      entry["posterior_average"] = {
        key: _stat([score(run["averaged"], metric) for run in averaged])
        for key, metric in (("test_accuracy", "accuracy"), ("test_nll", "nll"), ("test_ece", "ece"))
      }
      entry["posterior_average"]["snapshots"] = _stat([run["snapshots"] for run in averaged])
    optimizers[name] = entry
  return {"thresholds": [float(t) for t in thresholds], "optimizers": optimizers}


def _cell(accuracy: float | None, lr: float, diffusion: float | None) -> dict:
  return {"learning_rate": lr, "diffusion": diffusion, "accuracy": accuracy}


def summarize_sweep(runs: list[dict]) -> dict:
  """Aggregates a learning-rate × diffusion sweep into one accuracy grid per optimizer.

  Args:
    runs: run records as for :func:`summarize`, any number of (lr, D, seed) per optimizer.

  Returns:
    ``{"optimizers": {name: entry}}`` where an entry holds ``learning_rates`` (sorted, the
    rows), ``diffusions`` (sorted, the columns; ``[None]`` without noise), ``accuracy``
    (mean final test accuracy per cell, None where no run finished), ``n`` (finite runs per
    cell), ``diverged`` (runs), ``sensitivity`` (``max``, ``min``, ``spread``, ``std`` over
    the cells; ``lr_spread``: max − min over lr in the best cell's D column; ``seed_std``:
    mean std over seeds within a cell, the noise level to compare spreads against;
    ``cells``, ``missing_cells``), ``best`` (a cell) and ``noise_effect`` (Langevin only:
    best cell at D = 0 and at D > 0, either None if not swept).
  """
  optimizers = {}
  for name, group in group_by_optimizer(runs).items():
    lrs = sorted({float(run["learning_rate"]) for run in group})
    diffusions = sorted({run.get("diffusion") for run in group}, key=lambda d: (d is not None, d))
    cells: dict[tuple, list[float]] = {}
    for run in group:
      key = (float(run["learning_rate"]), run.get("diffusion"))
      cells.setdefault(key, []).append(score(run["final"], "accuracy"))
    stats = [[_stat(cells.get((lr, d), [])) for d in diffusions] for lr in lrs]
    grid = [[stat["mean"] for stat in row] for row in stats]
    seed_stds = [stat["std"] for row in stats for stat in row if stat["n"] >= 2]
    filled = [
      (acc, lr, d)
      for lr, row in zip(lrs, grid)
      for d, acc in zip(diffusions, row)
      if acc is not None
    ]
    sensitivity: dict[str, Any] = dict.fromkeys(("max", "min", "spread", "std", "lr_spread"))
    best = None
    if filled:
      accs = np.array([acc for acc, _, _ in filled])
      best = _cell(*max(filled, key=lambda cell: cell[0]))
      column = [row[diffusions.index(best["diffusion"])] for row in grid]
      column = [acc for acc in column if acc is not None]
      sensitivity.update(
        max=float(accs.max()),
        min=float(accs.min()),
        spread=float(accs.max() - accs.min()),
        std=float(accs.std()),
        lr_spread=max(column) - min(column),
      )
    sensitivity.update(
      seed_std=float(np.mean(seed_stds)) if seed_stds else None,
      cells=len(lrs) * len(diffusions),
      missing_cells=len(lrs) * len(diffusions) - len(filled),
    )
    entry = {"learning_rates": lrs, "diffusions": diffusions, "accuracy": grid}
    entry.update(n=[[stat["n"] for stat in row] for row in stats], sensitivity=sensitivity)
    entry.update(diverged=sum(run.get("status") == "diverged" for run in group), best=best)
    entry["noise_effect"] = None
    if is_langevin(name):
      zero = [cell for cell in filled if cell[2] == 0]
      positive = [cell for cell in filled if cell[2] is not None and cell[2] > 0]
      entry["noise_effect"] = {
        "best_at_zero": _cell(*max(zero, key=lambda c: c[0])) if zero else None,
        "best_positive": _cell(*max(positive, key=lambda c: c[0])) if positive else None,
      }
    optimizers[name] = entry
  return {"optimizers": optimizers}


def summarize_temperatures(runs: list[dict]) -> dict:
  """The cold-posterior curve: each Langevin optimizer's test error and NLL against T.

  Args:
    runs: run records as for :func:`summarize`, the Langevin ones at several temperatures.

  Returns:
    ``{"optimizers": {name: [entry, ...]}}``, one entry per temperature, ascending:
    ``temperature``, ``diffusion``, ``runs`` and stats over seeds (``{"mean", "std", "n"}``)
    of ``posterior_error``, ``posterior_nll`` (the posterior average's) and ``final_error``,
    ``final_nll`` (the final iterate's).
  """
  optimizers = {}
  for name, group in group_by_optimizer(runs).items():
    if not is_langevin(name):
      continue
    by_temperature: dict[float, list[dict]] = {}
    for run in group:
      by_temperature.setdefault(float(run["temperature"]), []).append(run)
    entries = []
    for temperature in sorted(by_temperature):
      cell = by_temperature[temperature]
      averages = [run["averaged"] for run in cell]
      finals = [run["final"] for run in cell]
      entries.append({
        "temperature": temperature,
        "diffusion": cell[0]["diffusion"],
        "runs": len(cell),
        "posterior_error": _stat([score(a, "error") for a in averages]),
        "posterior_nll": _stat([score(a, "nll") for a in averages]),
        "final_error": _stat([score(f, "error") for f in finals]),
        "final_nll": _stat([score(f, "nll") for f in finals]),
      })  # fmt: skip
    optimizers[name] = entries
  return {"optimizers": optimizers}


def _cold_posterior_lines(cold_posterior: dict) -> list[str]:
  lines = [
    "Test error and NLL against the posterior temperature T = N·D (T = 1: the Bayesian "
    "posterior; T < 1: colder), mean ± std over seeds; the posterior average of the last "
    "half's epochs (cyclical samplers: the cycles' last epochs) and the final iterate.",
    "",
  ]
  header = ["optimizer", "T", "D", "average error %", "average NLL", "final error %", "final NLL"]
  rows = [
    [
      name,
      f"{e['temperature']:g}",
      f"{e['diffusion']:.3g}",
      _fmt(e["posterior_error"], 100),
      _fmt(e["posterior_nll"], 1, ".3f"),
      _fmt(e["final_error"], 100),
      _fmt(e["final_nll"], 1, ".3f"),
    ]  # fmt: skip
    for name, entries in cold_posterior["optimizers"].items()
    for e in entries
  ]
  return [*lines, *_table(header, rows), "", "![cold posterior](cold_posterior.png)", ""]


def _fmt(stat: Stat | None, scale: float = 1.0, spec: str = ".1f") -> str:
  if not stat:
    return "—"
  text = "—" if stat["mean"] is None else f"{stat['mean'] * scale:{spec}}"
  if stat["mean"] is not None and stat.get("std") is not None:
    text += f" ± {stat['std'] * scale:{spec}}"
  return text + (f" ({stat['not_reached']}✗)" if stat.get("not_reached") else "")


def _versus(
  lang: str, base: str, l_stat: Stat, b_stat: Stat, scale: float = 1.0, spec: str = ".1f"
) -> tuple[str, str]:
  text = f"{lang} {_fmt(l_stat, scale, spec)} vs {base} {_fmt(b_stat, scale, spec)}"
  l_pair, b_pair = (l_stat["mean"], l_stat["std"]), (b_stat["mean"], b_stat["std"])
  return text, judge("lower", l_pair, b_pair)


def _claim(title: str, items: list[tuple[str, str]], why_empty: str) -> str:
  if not items:
    return f"{title}: {why_empty} — inconclusive."
  verdicts = {verdict for _, verdict in items}
  overall = verdicts.pop() if len(verdicts) == 1 else "inconclusive"
  return f"{title}: " + "; ".join(f"{text} ({v})" for text, v in items) + f" — {overall}."


def _speed_claim(summary: dict) -> str:
  opts = summary["optimizers"]
  reached = [
    t
    for t in summary["thresholds"]
    if any(e["epochs_to"][_threshold_key(t)]["mean"] is not None for e in opts.values())
  ]
  if not reached:
    return _claim("Convergence speed", [], "no optimizer reached any accuracy threshold")
  threshold = 0.4 if 0.4 in reached else max(reached)
  key = _threshold_key(threshold)

  def rank(name: str) -> tuple:
    # Runs that never get there count against an optimizer before a slow mean does.
    stat = opts[name]["epochs_to"][key]
    mean = np.inf if stat["mean"] is None else stat["mean"]
    return stat["not_reached"] / opts[name]["runs"], mean

  lang = min((n for n in opts if is_langevin(n)), key=rank, default=None)
  base = min((n for n in opts if _is_baseline(n)), key=rank, default=None)
  title = f"Convergence speed (epochs to {threshold:.0%} test accuracy, fastest of each kind)"
  if lang is None or base is None:
    return _claim(title, [], "needs a Langevin optimizer and one of sgd/momentum/adam")
  text, verdict = _versus(lang, base, opts[lang]["epochs_to"][key], opts[base]["epochs_to"][key])
  if rank(lang)[0] != rank(base)[0]:
    verdict = "supported" if rank(lang)[0] < rank(base)[0] else "not supported"
  return _claim(title, [(text, verdict)], "")


def _claims(summary: dict, sweep: dict | None) -> list[str]:
  opts = summary["optimizers"]
  pairs = [(lang, base) for lang, base in _noiseless_pairs() if lang in opts and base in opts]
  no_pair = "no Langevin optimizer ran beside its noiseless counterpart"
  claims = [_speed_claim(summary)]
  for title, key, scale, spec in (
    ("Stability (last-epoch minibatch-loss std)", "last_epoch_loss_std", 1, ".3f"),
    ("Overfitting (train − test accuracy gap, pp)", "generalization_gap", 100, ".1f"),
  ):
    items = [_versus(l, b, opts[l][key], opts[b][key], scale, spec) for l, b in pairs]
    claims.append(_claim(title, items, no_pair))
  title = "Sensitivity (test-accuracy spread over learning rates at the best D, pp)"
  if sweep is None:
    claims.append(_claim(title, [], "not measured in this run (use --sweep)"))
  else:
    spreads = {
      name: {"mean": e["sensitivity"]["lr_spread"], "std": e["sensitivity"]["seed_std"]}
      for name, e in sweep["optimizers"].items()
      if e["sensitivity"]["lr_spread"] is not None
    }
    bases = [name for name in spreads if _is_baseline(name)]
    items = []
    for lang in (n for n in sweep["optimizers"] if n in spreads and is_langevin(n)):
      # Without its noiseless twin, the least sensitive baseline is the fair opponent.
      base = OPTIMIZERS[lang].baseline
      if base not in spreads:
        base = min(bases, key=lambda n: spreads[n]["mean"], default=None)
      if base is not None:
        items.append(_versus(lang, base, spreads[lang], spreads[base], 100))
    claims.append(_claim(title, items, "the sweep lacks a Langevin optimizer or a baseline"))
  items = []
  for lang in (n for n in opts if is_langevin(n)):
    if opts[lang]["step_time_vs_sgd"] is not None:
      # One timing per optimizer (its seeds share the measurement), so this is a
      # threshold test of the ratio, with no spread to compare against.
      relative = {"mean": opts[lang]["step_time_vs_sgd"], "std": 0.0}
      allowed = {"mean": COST_TOLERANCE, "std": 0.0}
      items.append(_versus(lang, "allowed", relative, allowed, 1, ".2f"))
  title = f"Cost (step time × SGD; little cost read as ≤ {COST_TOLERANCE:g}×)"
  claims.append(_claim(title, items, "needs sgd and a Langevin optimizer"))
  return claims


def _value(value: Any) -> str:
  if isinstance(value, dict):
    return ", ".join(f"{key} {_value(item)}" for key, item in value.items())
  if isinstance(value, list | tuple):
    return ", ".join(_value(item) for item in value)
  return f"{value:g}" if isinstance(value, float) else str(value)


def _cell_text(cell: dict | None) -> str:
  if cell is None:
    return "not swept"
  noise = "no noise" if cell["diffusion"] is None else f"D = {cell['diffusion']:g}"
  return f"{cell['accuracy'] * 100:.1f} % at lr {cell['learning_rate']:g}, {noise}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _setup_lines(summary: dict, config: dict, environment: dict, data_label: str) -> list[str]:
  lossy = " — lossy re-encoding; accuracies may sit slightly below published CIFAR-10 numbers"
  lines = [f"- Data: {data_label}{lossy if 'JPEG' in data_label else ''}."]
  lines += [f"- {k.replace('_', ' ')}: {_value(v)}" for k, v in config.items() if k != "notes"]
  lines += [f"- Note: {note}" for note in config.get("notes", [])]
  versions = environment.get("versions", {})
  facts = [f"{k.replace('_', ' ')} {_value(v)}" for k, v in environment.items() if k != "versions"]
  facts += [f"{k} {v}" for k, v in versions.items()]
  lines += ["- Environment: " + "; ".join(facts)] if facts else []
  n_train = config.get("train_size")
  temperatures = [
    f"{name} D = {e['diffusion']:g}, T = N·D = "
    + _value(n_train * e["diffusion"] if n_train else e["temperature"])
    for name, e in summary["optimizers"].items()
    if e["diffusion"] is not None
  ]
  if temperatures:
    posterior = f"D = 1/N = {1 / n_train:.3g}" if n_train else "D = 1/N"
    lines.append(
      f"- Temperature (N = {n_train or '?'} training images): " + "; ".join(temperatures) + ". "
      f"{posterior} samples the Bayesian posterior (T = 1); larger T is a hotter posterior."
    )
  return lines


def _results_lines(summary: dict, data_label: str) -> list[str]:
  thresholds = "/".join(f"{t * 100:g}" for t in summary["thresholds"])
  header = ["optimizer", "lr", "D (T)", "final test acc %", "best test acc %"]
  header += ["final train acc %", "gap pp", "test NLL", "ECE %", f"epochs to {thresholds} %"]
  header += ["loss std (last epoch)", "step time ms", "× SGD", "diverged"]
  rows = []
  for name, e in summary["optimizers"].items():
    final = _fmt(e["final_test_accuracy"], 100)
    if e["final_test_accuracy"]["n"] < e["runs"]:
      final += f" (n={e['final_test_accuracy']['n']})"
    epochs = " / ".join(_fmt(stat) for stat in e["epochs_to"].values())
    noise = "—" if e["diffusion"] is None else f"{e['diffusion']:g} ({_value(e['temperature'])})"
    ratio = e["step_time_vs_sgd"]
    rows.append(
      [name, _value(e["learning_rate"]), noise, final, _fmt(e["best_test_accuracy"], 100)]
      + [_fmt(e["final_train_accuracy"], 100), _fmt(e["generalization_gap"], 100)]
      + [_fmt(e["test_nll"], 1, ".3f"), _fmt(e["test_ece"], 100), epochs]
      + [_fmt(e["last_epoch_loss_std"], 1, ".3f"), _fmt(e["step_time_s"], 1000, ".2f")]
      + ["—" if ratio is None else f"{ratio:.2f}", f"{e['diverged']}/{e['runs']}"]
    )
  lines = [
    (
      f"Table 1: {data_label}, final parameters, mean ± std over seeds (n = runs counted when "
      "fewer than all). Epochs to a threshold average the runs that reached it; (k✗) counts "
      "runs that never did, — means none did."
    ),
    "",
    *_table(header, rows),
    "",
  ]
  averaged = {name: e for name, e in summary["optimizers"].items() if e["posterior_average"]}
  if averaged:
    rows = [
      [name, _fmt(e["posterior_average"]["snapshots"], 1, ".0f")]
      + [
        f"{_fmt(e['posterior_average'][key], scale, spec)} vs {_fmt(e[final], scale, spec)}"
        for key, final, scale, spec in (
          ("test_accuracy", "final_test_accuracy", 100, ".1f"),
          ("test_nll", "test_nll", 1, ".3f"),
          ("test_ece", "test_ece", 100, ".1f"),
        )
      ]
      for name, e in averaged.items()
    ]
    lines += ["Table 2: posterior average (mean prediction over snapshots) vs final iterate.", ""]
    lines += [*_table(["optimizer", "snapshots", "test acc %", "test NLL", "ECE %"], rows), ""]
  return lines


def _sweep_lines(sweep: dict) -> list[str]:
  lines = []
  for name, e in sweep["optimizers"].items():
    lines += [f"{name}: mean final test accuracy % by learning rate (rows) × D (columns).", ""]
    columns = ["no noise" if d is None else f"D = {d:g}" for d in e["diffusions"]]
    rows = [
      [f"{lr:g}"] + ["—" if a is None else f"{a * 100:.1f}" for a in row]
      for lr, row in zip(e["learning_rates"], e["accuracy"])
    ]
    lines += [*_table(["lr", *columns], rows), ""]
    sens = e["sensitivity"]
    if e["best"] is not None:
      lines.append(
        f"Spread (max − min) {sens['spread'] * 100:.1f} pp, std {sens['std'] * 100:.1f} pp "
        f"over {sens['cells'] - sens['missing_cells']} of {sens['cells']} cells (the rest "
        f"diverged or did not run); over lr at the best D {sens['lr_spread'] * 100:.1f} pp. "
        f"Best: {_cell_text(e['best'])}."
      )
    if e["noise_effect"] is not None:
      zero, positive = e["noise_effect"]["best_at_zero"], e["noise_effect"]["best_positive"]
      lines.append(
        f"Does any D help? Best at D = 0: {_cell_text(zero)}; at D > 0: {_cell_text(positive)}."
      )
    lines.append("")
  return lines


def render_markdown(
  summary: dict,
  config: dict,
  environment: dict,
  sweep: dict | None = None,
  data_label: str = "CIFAR-10",
  cold_posterior: dict | None = None,
) -> str:
  """Renders the human-readable report (report.md) of one experiment.

  Args:
    summary: output of :func:`summarize`.
    config: run configuration (``epochs``, ``batch_size``, ``seeds``, ``train_size``,
      ``optimizers``, ``learning_rates``, ``diffusion``, ``data``, ``notes``, ...); every
      key is listed, ``notes`` as free-text bullets. ``train_size`` is N in ``T = N·D``.
    environment: device and software facts (e.g. ``device_kind``, ``versions``), listed.
    sweep: output of :func:`summarize_sweep`, if a sweep ran.
    data_label: name of the data, e.g. ``"CIFAR-10 (JPEG copy)"``, shown in the setup and
      in Table 1's caption.
    cold_posterior: output of :func:`summarize_temperatures`, if temperatures were swept.

  Returns:
    The report as Markdown.
  """
  lines = [f"# Langevin noise vs SGD, momentum and Adam on {data_label}", "", "## Setup", ""]
  lines += _setup_lines(summary, config, environment, data_label)
  lines += ["", "## Results", "", *_results_lines(summary, data_label)]
  if sweep is not None:
    lines += ["## Hyper-parameter sweep", "", *_sweep_lines(sweep)]
  if cold_posterior is not None:
    lines += ["## Cold posterior", "", *_cold_posterior_lines(cold_posterior)]
  lines += [
    "## Claims",
    "",
    (
      "Each claim is supported if the Langevin optimizer is better by more than the larger "
      "seed std of the two compared, not supported if worse by more than that, else "
      "inconclusive; a claim tested on several pairs is decided only when all of them agree."
    ),
    "",
  ]
  lines += [f"{i}. {claim}" for i, claim in enumerate(_claims(summary, sweep), 1)]
  return "\n".join(lines) + "\n"
