"""The comparison's report: statistics over seeds, the article's claims judged, report.md.

Everything here works on the JSON-serialisable run records of
:func:`jaxdiff.experiments.cifar.experiment.run_comparison` (one
:class:`~jaxdiff.experiments.cifar.experiment.ComparisonRecord` per optimizer × setting × seed:
the test set's :class:`~jaxdiff.classification.Scores` per epoch, final and averaged, and the
final parameters' on the training images), so a report can be rebuilt from a saved report.json
without JAX.

Statistics over seeds are :func:`jaxdiff.metrics.seed_statistic`'s: the mean, the sample
standard deviation (``ddof = 1``) and the standard error, over the runs where a value is finite
(NaN, ±inf and None are a diverged or unmeasured run), with how many count (``n``). Every
optimizer trains each seed from the same initial parameters and data order, so claims compare
the Langevin optimizer with its baseline seed by seed (:func:`judge`). Summaries hold None
instead of NaN so they stay valid JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxdiff.experiments.cifar.registry import OPTIMIZERS, is_langevin
from jaxdiff.metrics import (
  SeedStatistic,
  finite_or_none,
  paired_difference,
  seed_statistic,
  significant,
)

# "Little cost" is read as at most 10 % slower per step than SGD.
COST_TOLERANCE = 1.10
# A timing is trusted only with at least this many timed calls of the engine (epochs after the
# first, which includes compilation) per optimizer: fewer measure no spread.
MIN_TIMED_CALLS = 2
# A run "exploded" when its loss blew up without turning non-finite (which stops it: diverged):
# its last epoch's mean training loss or its final test NLL is above this many times log C, the
# cross-entropy of a uniform guess over C classes, where a fresh classifier starts. A network
# that learns, even one that overfits, stays well below it.
EXPLOSION_FACTOR = 5.0


def explosion_threshold(num_classes: int) -> float:
  """The loss above which a run counts as exploded: ``EXPLOSION_FACTOR · log C``."""
  return EXPLOSION_FACTOR * math.log(num_classes)


def outcome(run: dict, num_classes: int) -> str:
  """``"diverged"`` (a non-finite loss or parameters stopped it), ``"exploded"`` (see
  :data:`EXPLOSION_FACTOR`) or ``"ok"``."""
  if run["status"] == "diverged":
    return "diverged"
  limit = explosion_threshold(num_classes)
  if _last_loss(run) > limit or score(run["final"], "nll") > limit:
    return "exploded"
  return "ok"


def _last_loss(run: dict) -> float:
  """The last epoch's mean training loss; NaN without one."""
  return score(run["epochs"][-1]["train"], "loss") if run["epochs"] else np.nan


def judge(
  better_is: str, langevin: Sequence[float | None], baseline: Sequence[float | None]
) -> str:
  """Decides one claim from the two optimizers' values on the same seeds, in the same order.

  The seeds' differences ``langevin − baseline`` are tested by Student's paired two-sided t-test
  at 95 % (:func:`jaxdiff.metrics.paired_difference`, :func:`jaxdiff.metrics.significant`):
  paired, because both optimizers start each seed from the same parameters and see the same
  data order, so what the seeds share cancels out of the differences.

  Args:
    better_is: ``"lower"`` or ``"higher"``: which direction of the metric is better.
    langevin: the Langevin optimizer's value per seed; None or NaN where unmeasured.
    baseline: the value of the optimizer it is compared with, on the same seeds.

  Returns:
    ``"supported"`` if the difference favours Langevin and is significant, ``"not supported"``
    if it favours the baseline and is significant, else ``"inconclusive"`` (always with fewer
    than two seeds measured on both sides, or differences that do not vary).
  """
  if better_is not in ("lower", "higher"):
    raise ValueError(f"better_is must be 'lower' or 'higher', got {better_is!r}")
  difference = paired_difference(_finite(langevin), _finite(baseline))
  if not significant(difference):
    return "inconclusive"
  advantage = -difference["mean"] if better_is == "lower" else difference["mean"]
  return "supported" if advantage > 0 else "not supported"


def _finite(values: Sequence[float | None]) -> list[float | None]:
  return [None if value is None else finite_or_none(value) for value in values]


def number(value: Any) -> float:
  """A record's value as a float; None (a diverged or unmeasured run) is NaN."""
  return np.nan if value is None else float(value)


def score(scores: dict | None, metric: str) -> float:
  """One metric of a :class:`~jaxdiff.classification.Scores`, NaN without it (no average)."""
  return number(None if scores is None else scores.get(metric))


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


def summarize(
  runs: list[dict], thresholds: Sequence[float] = (0.3, 0.4, 0.5), num_classes: int = 10
) -> dict:
  """Aggregates runs over seeds, per optimizer in order of first appearance.

  Args:
    runs: run records (keys ``method``, ``seed``, ``learning_rate``, ``diffusion``,
      ``temperature``, ``status``, ``epochs``, ``last_epoch_loss_std``, ``final``,
      ``final_train``, ``averaged``, ``snapshots``, ``step_time_s``, ``step_times_s``), one
      hyper-parameter setting per optimizer.
    thresholds: test accuracies whose first-reaching epoch is reported.
    num_classes: C, for :func:`outcome`'s rule.

  Returns:
    ``{"thresholds": [...], "exploded_above": loss, "optimizers": {name: entry}}``. An entry
    counts its ``diverged`` and ``exploded`` runs (:func:`outcome`; ``exploded_runs`` lists
    the latter's seed, last-epoch training loss and test NLL) and holds the engine's
    ``step_times_s`` per call, which its runs share. Each metric in an entry is a
    :class:`~jaxdiff.metrics.SeedStatistic` over the runs where it is finite; ``epochs_to``
    maps ``"0.4"`` to one plus ``not_reached`` (runs that never reached it, left out of the
    mean); ``posterior_average`` is None or one per metric of the runs that have one;
    ``per_seed`` holds the claims' metrics per run, in the order of ``seeds`` (None where
    not finite), for the paired comparisons of :func:`judge`.

  Raises:
    ValueError: if one optimizer's runs mix learning rates, diffusions or temperatures.
  """
  groups = group_by_optimizer(runs)
  sgd_time = None
  if "sgd" in groups:
    sgd_time = seed_statistic([run.get("step_time_s") for run in groups["sgd"]])["mean"]
  optimizers = {}
  for name, group in groups.items():
    finals = [run["final"] for run in group]
    trains = [run["final_train"] for run in group]
    curves = [run.get("epochs") or [] for run in group]
    outcomes = [outcome(run, num_classes) for run in group]
    entry: dict[str, Any] = {
      "runs": len(group),
      "seeds": [run.get("seed") for run in group],
      "diverged": outcomes.count("diverged"),
      "exploded": outcomes.count("exploded"),
      "exploded_runs": [
        {
          "seed": run["seed"],
          "train_loss": finite_or_none(_last_loss(run)),
          "test_nll": run["final"]["nll"],
        }
        for run, kind in zip(group, outcomes)
        if kind == "exploded"
      ],
      **{key: _single(name, group, key) for key in ("learning_rate", "diffusion", "temperature")},
      "step_times_s": group[0].get("step_times_s") or [],
    }
    per_seed = {
      "generalization_gap": [score(t, "accuracy") - score(f, "accuracy")
                             for t, f in zip(trains, finals)],
      "last_epoch_loss_std": [number(run.get("last_epoch_loss_std")) for run in group],
      "epochs_to": {},
    }  # fmt: skip
    for key, values in (
      ("final_test_accuracy", [score(final, "accuracy") for final in finals]),
      ("final_train_accuracy", [score(train, "accuracy") for train in trains]),
      ("test_nll", [score(final, "nll") for final in finals]),
      ("test_ece", [score(final, "ece") for final in finals]),
      ("best_test_accuracy", [_best(curve) for curve in curves]),
      ("generalization_gap", per_seed["generalization_gap"]),
      ("last_epoch_loss_std", per_seed["last_epoch_loss_std"]),
      ("step_time_s", [run.get("step_time_s") for run in group]),
    ):
      entry[key] = seed_statistic(values)
    step_time = entry["step_time_s"]["mean"]
    entry["step_time_vs_sgd"] = step_time / sgd_time if sgd_time and step_time else None
    entry["epochs_to"] = {}
    for threshold in thresholds:
      reached = [_epochs_to(curve, threshold) for curve in curves]
      entry["epochs_to"][_threshold_key(threshold)] = {
        **seed_statistic(reached),
        "not_reached": sum(epoch is None for epoch in reached),
      }
      per_seed["epochs_to"][_threshold_key(threshold)] = reached
    averaged = [run for run in group if run["averaged"]]
    entry["posterior_average"] = None
    if averaged:
      entry["posterior_average"] = {
        key: seed_statistic([score(run["averaged"], metric) for run in averaged])
        for key, metric in (("test_accuracy", "accuracy"), ("test_nll", "nll"), ("test_ece", "ece"))
      }
      entry["posterior_average"]["snapshots"] = seed_statistic([r["snapshots"] for r in averaged])
    per_seed["generalization_gap"] = _finite(per_seed["generalization_gap"])
    per_seed["last_epoch_loss_std"] = _finite(per_seed["last_epoch_loss_std"])
    entry["per_seed"] = per_seed
    optimizers[name] = entry
  return {
    "thresholds": [float(t) for t in thresholds],
    "exploded_above": explosion_threshold(num_classes),
    "optimizers": optimizers,
  }


def _cell(accuracy: float | None, lr: float, diffusion: float | None) -> dict:
  return {"learning_rate": lr, "diffusion": diffusion, "accuracy": accuracy}


def _lr_spread_by_seed(runs: list[dict], diffusion: float | None, lrs: list[float]) -> dict:
  """Each seed's max − min final test accuracy over ``lrs`` at ``diffusion``; None where one of
  those runs has no accuracy (it diverged)."""
  by_seed: dict[int, dict[float, float]] = {}
  for run in runs:
    if run.get("diffusion") == diffusion:
      accuracy = score(run["final"], "accuracy")
      by_seed.setdefault(run["seed"], {})[float(run["learning_rate"])] = accuracy
  seeds = sorted(by_seed)
  spreads = []
  for seed in seeds:
    values = np.array([by_seed[seed].get(lr, np.nan) for lr in lrs])
    spreads.append(float(values.max() - values.min()) if np.isfinite(values).all() else None)
  return {"seeds": seeds, "lr_spread_by_seed": spreads}


def summarize_sweep(runs: list[dict]) -> dict:
  """Aggregates a learning-rate × diffusion sweep into one accuracy grid per optimizer.

  Args:
    runs: run records as for :func:`summarize`, any number of (lr, D, seed) per optimizer.

  Returns:
    ``{"optimizers": {name: entry}}`` where an entry holds ``learning_rates`` (sorted, the
    rows), ``diffusions`` (sorted, the columns; ``[None]`` without noise), ``accuracy``
    (mean final test accuracy per cell, None where no run finished), ``n`` (finite runs per
    cell), ``diverged`` (runs), ``sensitivity`` (``max``, ``min``, ``spread``, ``std`` over
    the cells; ``lr_spread``: max − min over lr in the best cell's D column; ``seeds`` and
    ``lr_spread_by_seed``: that spread of each seed's own runs, None where one of them did
    not finish; ``seed_std``: mean sample std over seeds within a cell, the noise level to
    compare spreads against; ``cells``, ``missing_cells``), ``best`` (a cell) and
    ``noise_effect`` (Langevin only: best cell at D = 0 and at D > 0, either None if not
    swept).
  """
  optimizers = {}
  for name, group in group_by_optimizer(runs).items():
    lrs = sorted({float(run["learning_rate"]) for run in group})
    diffusions = sorted({run.get("diffusion") for run in group}, key=lambda d: (d is not None, d))
    cells: dict[tuple, list[float]] = {}
    for run in group:
      key = (float(run["learning_rate"]), run.get("diffusion"))
      cells.setdefault(key, []).append(score(run["final"], "accuracy"))
    stats = [[seed_statistic(cells.get((lr, d), [])) for d in diffusions] for lr in lrs]
    grid = [[stat["mean"] for stat in row] for row in stats]
    seed_stds = [stat["std"] for row in stats for stat in row if stat["n"] >= 2]
    filled = [
      (acc, lr, d)
      for lr, row in zip(lrs, grid)
      for d, acc in zip(diffusions, row)
      if acc is not None
    ]
    sensitivity: dict[str, Any] = dict.fromkeys(("max", "min", "spread", "std", "lr_spread"))
    sensitivity.update(seeds=[], lr_spread_by_seed=[])
    best = None
    if filled:
      accs = np.array([acc for acc, _, _ in filled])
      best = _cell(*max(filled, key=lambda cell: cell[0]))
      column = {lr: row[diffusions.index(best["diffusion"])] for lr, row in zip(lrs, grid)}
      column = {lr: acc for lr, acc in column.items() if acc is not None}
      sensitivity.update(
        max=float(accs.max()),
        min=float(accs.min()),
        spread=float(accs.max() - accs.min()),
        std=float(accs.std()),
        lr_spread=max(column.values()) - min(column.values()),
        **_lr_spread_by_seed(group, best["diffusion"], list(column)),
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
        "posterior_error": seed_statistic([score(a, "error") for a in averages]),
        "posterior_nll": seed_statistic([score(a, "nll") for a in averages]),
        "final_error": seed_statistic([score(f, "error") for f in finals]),
        "final_nll": seed_statistic([score(f, "nll") for f in finals]),
      })  # fmt: skip
    optimizers[name] = entries
  return {"optimizers": optimizers}


def _cold_posterior_lines(cold_posterior: dict) -> list[str]:
  lines = [
    "Test error and NLL against the posterior temperature T = N·D (T = 1: the Bayesian "
    "posterior; T < 1: colder), mean ± sample std over seeds; the posterior average of the last "
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
    ]
    for name, entries in cold_posterior["optimizers"].items()
    for e in entries
  ]
  return [*lines, *_table(header, rows), "", "![cold posterior](cold_posterior.png)", ""]


def _fmt(stat: SeedStatistic | None, scale: float = 1.0, spec: str = ".1f") -> str:
  if not stat:
    return "—"
  text = "—" if stat["mean"] is None else f"{stat['mean'] * scale:{spec}}"
  if stat["mean"] is not None and stat.get("std") is not None:
    text += f" ± {stat['std'] * scale:{spec}}"
  return text + (f" ({stat['not_reached']}✗)" if stat.get("not_reached") else "")


def _paired(
  langevin: tuple[Sequence, Sequence], baseline: tuple[Sequence, Sequence]
) -> tuple[list, list]:
  """Two optimizers' values on the seeds both ran, in seed order, from ``(seeds, values)``."""
  l_by_seed, b_by_seed = dict(zip(*langevin)), dict(zip(*baseline))
  seeds = sorted(set(l_by_seed) & set(b_by_seed))
  return [l_by_seed[seed] for seed in seeds], [b_by_seed[seed] for seed in seeds]


def _paired_metric(
  opts: dict, lang: str, base: str, pick: Callable[[dict], Sequence]
) -> tuple[list, list]:
  """One metric of two summary entries (``pick`` of their ``per_seed``), paired by seed."""
  return _paired(*((opts[name]["seeds"], pick(opts[name]["per_seed"])) for name in (lang, base)))


def _versus(
  lang: str,
  base: str,
  stats: tuple[SeedStatistic, SeedStatistic],
  values: tuple[Sequence, Sequence],
  scale: float = 1.0,
  spec: str = ".1f",
) -> tuple[str, str]:
  """One comparison's text and :func:`judge`'s verdict; ``values`` are paired by seed."""
  l_stat, b_stat = stats
  text = f"{lang} {_fmt(l_stat, scale, spec)} vs {base} {_fmt(b_stat, scale, spec)}"
  difference = paired_difference(*(_finite(side) for side in values))
  if difference["se"] is not None:
    text += (
      f", paired difference {difference['mean'] * scale:+{spec}} ± "
      f"{difference['se'] * scale:{spec}} (SE, {difference['n']} seeds)"
    )
  return text, judge("lower", *values)


def _claim(title: str, items: list[tuple[str, str]], why_empty: str) -> str:
  if not items:
    return f"{title}: {why_empty} — inconclusive."
  verdicts = {verdict for _, verdict in items}
  overall = verdicts.pop() if len(verdicts) == 1 else "inconclusive"
  return f"{title}: " + "; ".join(f"{text} ({v})" for text, v in items) + f" — {overall}."


# A claim needs at least this many seeds on each side: one seed measures no spread.
MIN_SEEDS = 2


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
  stats = (opts[lang]["epochs_to"][key], opts[base]["epochs_to"][key])
  values = _paired_metric(opts, lang, base, lambda per_seed: per_seed["epochs_to"][key])
  text, verdict = _versus(lang, base, stats, values)
  enough_seeds = min(opts[lang]["runs"], opts[base]["runs"]) >= MIN_SEEDS
  if enough_seeds and rank(lang)[0] != rank(base)[0]:
    verdict = "supported" if rank(lang)[0] < rank(base)[0] else "not supported"
    missed = [
      f"{opts[n]['epochs_to'][key]['not_reached']} of {opts[n]['runs']}" for n in (lang, base)
    ]
    text += f"; decided by the runs that never reach it, {missed[0]} against {missed[1]}"
  return _claim(title, [(text, verdict)], "")


def _sensitivity_claim(sweep: dict | None) -> str:
  title = (
    "Sensitivity (test-accuracy spread over learning rates at the best D, each seed's own, pp)"
  )
  if sweep is None:
    return _claim(title, [], "not measured in this run (use --sweep)")
  spreads = {
    name: (e["sensitivity"]["seeds"], e["sensitivity"]["lr_spread_by_seed"])
    for name, e in sweep["optimizers"].items()
    if e["sensitivity"]["lr_spread"] is not None
  }
  stats = {name: seed_statistic(values) for name, (_, values) in spreads.items()}
  bases = [name for name in spreads if _is_baseline(name) and stats[name]["mean"] is not None]
  items = []
  for lang in (n for n in sweep["optimizers"] if n in spreads and is_langevin(n)):
    # Without its noiseless twin, the least sensitive baseline is the fair opponent.
    base = OPTIMIZERS[lang].baseline
    if base not in spreads:
      base = min(bases, key=lambda n: stats[n]["mean"], default=None)
    if base is not None:
      values = _paired(spreads[lang], spreads[base])
      items.append(_versus(lang, base, (stats[lang], stats[base]), values, 100))
  return _claim(title, items, "the sweep lacks a Langevin optimizer or a baseline")


def _timing_quartiles(step_times: Sequence[float]) -> tuple[float, float] | None:
  """The first and third quartiles of the timed calls' step times (the first call left out),
  or None with fewer than :data:`MIN_TIMED_CALLS` of them."""
  timed = list(step_times)[1:]
  if len(timed) < MIN_TIMED_CALLS:
    return None
  low, high = np.percentile(timed, [25, 75])
  return float(low), float(high)


def _cost_claim(summary: dict) -> str:
  """Each Langevin optimizer's step time against SGD's and :data:`COST_TOLERANCE`.

  One timing per optimizer (its seeds share the program): the ratio is trusted where it lies on
  one side of the tolerance even at the unfavourable ends of both optimizers' middle halves of
  their calls' step times (``Q1/Q3`` to ``Q3/Q1``); else, with too few calls or seeds, it is
  inconclusive.
  """
  opts = summary["optimizers"]
  title = f"Cost (step time × SGD; little cost read as ≤ {COST_TOLERANCE:g}×)"
  items = []
  for lang in (n for n in opts if is_langevin(n)):
    ratio = opts[lang]["step_time_vs_sgd"]
    if ratio is None:
      continue
    text = f"{lang} {ratio:.2f}×"
    quartiles = [_timing_quartiles(opts[n]["step_times_s"]) for n in (lang, "sgd")]
    if min(opts[lang]["runs"], opts["sgd"]["runs"]) < MIN_SEEDS:
      items.append((f"{text} from fewer than {MIN_SEEDS} seeds", "inconclusive"))
    elif None in quartiles:
      few = f"fewer than {MIN_TIMED_CALLS} timed epochs (the first, with compilation, left out)"
      items.append((f"{text} from {few}: no spread to trust it by", "inconclusive"))
    else:
      (l_q1, l_q3), (s_q1, s_q3) = quartiles
      low, high = l_q1 / s_q3, l_q3 / s_q1
      text += f", {low:.2f}× to {high:.2f}× over the middle half of the epochs' step times"
      if high <= COST_TOLERANCE:
        items.append((text, "supported"))
      elif low > COST_TOLERANCE:
        items.append((text, "not supported"))
      else:
        items.append((text, "inconclusive"))
  return _claim(title, items, "needs sgd and a Langevin optimizer")


def _claims(summary: dict, sweep: dict | None) -> list[str]:
  opts = summary["optimizers"]
  pairs = [(lang, base) for lang, base in _noiseless_pairs() if lang in opts and base in opts]
  no_pair = "no Langevin optimizer ran beside its noiseless counterpart"
  claims = [_speed_claim(summary)]
  for title, key, scale, spec in (
    ("Stability (last-epoch minibatch-loss std)", "last_epoch_loss_std", 1, ".3f"),
    ("Overfitting (train − test accuracy gap, pp)", "generalization_gap", 100, ".1f"),
  ):
    items = []
    for lang, base in pairs:
      stats = (opts[lang][key], opts[base][key])
      values = _paired_metric(opts, lang, base, lambda per_seed, key=key: per_seed[key])
      items.append(_versus(lang, base, stats, values, scale, spec))
    claims.append(_claim(title, items, no_pair))
  return [*claims, _sensitivity_claim(sweep), _cost_claim(summary)]


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


def _step_time_cell(entry: dict) -> str:
  """The median step time of the timed calls and, with enough of them, their quartiles (ms)."""
  median = entry["step_time_s"]["mean"]
  if median is None:
    return "—"
  quartiles = _timing_quartiles(entry["step_times_s"])
  spread = "" if quartiles is None else f" ({quartiles[0] * 1e3:.2f}–{quartiles[1] * 1e3:.2f})"
  return f"{median * 1e3:.2f}{spread}"


def _results_lines(summary: dict, data_label: str) -> list[str]:
  thresholds = "/".join(f"{t * 100:g}" for t in summary["thresholds"])
  header = ["optimizer", "lr", "D (T)", "final test acc %", "best test acc %"]
  header += ["final train acc %", "gap pp", "test NLL", "ECE %", f"epochs to {thresholds} %"]
  header += ["loss std (last epoch)", "step time ms (Q1–Q3)", "× SGD", "diverged / exploded"]
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
      + [_fmt(e["last_epoch_loss_std"], 1, ".3f"), _step_time_cell(e)]
      + ["—" if ratio is None else f"{ratio:.2f}"]
      + [f"{e['diverged']} / {e['exploded']} of {e['runs']}"]
    )
  lines = [
    (
      f"Table 1: {data_label}, final parameters, mean ± sample std over seeds (n = runs counted "
      "when fewer than all). Epochs to a threshold average the runs that reached it; (k✗) counts "
      "runs that never did, — means none did. A run *diverged* when a non-finite loss or "
      "parameters stopped it; it *exploded* when its loss blew up without that: its last "
      f"epoch's mean training loss or its final test NLL above {EXPLOSION_FACTOR:g} × log C = "
      f"{summary['exploded_above']:.1f}, {EXPLOSION_FACTOR:g} times the loss of a uniform guess."
    ),
    "",
    *_table(header, rows),
    "",
  ]
  exploded = [
    f"{name} seed {run['seed']} (last-epoch training loss {_value(run['train_loss'])}, test "
    f"NLL {_value(run['test_nll'])})"
    for name, e in summary["optimizers"].items()
    for run in e["exploded_runs"]
  ]
  if exploded:
    lines += ["Exploded: " + "; ".join(exploded) + ".", ""]
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


def figures(result: dict) -> dict[str, str]:
  """The figures of a report (``run_experiment``'s result): file name → what it shows."""
  shown = {"curves.png": "training loss and test accuracy per epoch, mean ± sample std"}
  if result.get("sweep") is not None:
    shown["sweep.png"] = "test accuracy over the lr × D grid and its spreads"
  if result.get("cold_posterior") is not None:
    shown["cold_posterior.png"] = "test error and NLL against the temperature T"
  return shown


def render_markdown(result: dict) -> str:
  """Renders the human-readable report (report.md) of one experiment.

  Args:
    result: the contents of report.json: ``config`` (``epochs``, ``batch_size``, ``seeds``,
      ``train_size``, ``optimizers``, ``learning_rates``, ``diffusion``, ``data``, ``notes``,
      ...; every key is listed, ``notes`` as free-text bullets; ``train_size`` is N in
      ``T = N·D``), ``command`` (the command line that made it), ``environment`` (device and
      software facts, listed), ``data_label`` (e.g. ``"CIFAR-10 (JPEG copy)"``),
      ``summary`` (:func:`summarize`), ``sweep`` (:func:`summarize_sweep`) and
      ``cold_posterior`` (:func:`summarize_temperatures`), the last two None where not run,
      and ``summaries`` (the TensorBoard summaries' directory under the report's, or None).

  Returns:
    The report as Markdown.
  """
  summary, sweep, cold_posterior = result["summary"], result["sweep"], result["cold_posterior"]
  data_label = result["data_label"]
  lines = [f"# Langevin noise vs SGD, momentum and Adam on {data_label}", "", "## Setup", ""]
  lines += _setup_lines(summary, result["config"], result["environment"], data_label)
  lines += [
    "",
    "Command (run it again with `--resume` to continue from its checkpoints after an "
    "interruption):",
    "",
    "```bash",
    result["command"],
    "```",
    "",
    "Figures: " + ", ".join(f"[{name}]({name}) ({what})" for name, what in figures(result).items())
    + ".",
  ]  # fmt: skip
  if result.get("summaries"):
    directory = result["summaries"]
    lines += [
      "",
      f"TensorBoard summaries: [{directory}/]({directory}/), one directory per optimizer and "
      f"run (`tensorboard --logdir {directory}`): the training loss and accuracy, the learning "
      "rate and D, and each epoch's test scores, current and averaged; the same series in each "
      "run's `scalars.jsonl`.",
    ]
  lines += ["", "## Results", "", *_results_lines(summary, data_label), "![curves](curves.png)", ""]
  if sweep is not None:
    lines += ["## Hyper-parameter sweep", "", *_sweep_lines(sweep), "![sweep](sweep.png)", ""]
  if cold_posterior is not None:
    lines += ["## Cold posterior", "", *_cold_posterior_lines(cold_posterior)]
  lines += [
    "## Claims",
    "",
    (
      "Every optimizer trains each seed from the same initial parameters and data order, so "
      "each claim compares the Langevin optimizer with its baseline seed by seed: supported if "
      "the seeds' paired difference favours the Langevin optimizer and is significant by a "
      "two-sided paired t-test at 95 %, not supported if it favours the baseline and is "
      f"significant, else inconclusive (always with fewer than {MIN_SEEDS} seeds). The cost "
      "claim has one timing per optimizer: it is decided only where the ratio stays on one "
      "side of the allowance over the middle half of both optimizers' epoch step times, "
      f"timed over at least {MIN_TIMED_CALLS} epochs after the first. A claim tested on "
      "several pairs is decided only when all of them agree."
    ),
    "",
  ]
  lines += [f"{i}. {claim}" for i, claim in enumerate(_claims(summary, sweep), 1)]
  return "\n".join(lines) + "\n"
