"""One report of a protocol's seeds that several runs trained, each some of them (``--first-seed``).

A long protocol (the korattikara2015 preset's ten 2 000-epoch chains) need not train in one
sitting: each run trains a slice of the seeds, on any machine, and :func:`pool_reports` joins
their records into the report that one run of every seed would have written. Seed ``s``'s keys
are the same in every run (:func:`jaxdiff.keys.seed_key`), so the pooled records are that run's
records; only the timings (wall time, seconds per step) are each part's own, and the report
lists every part's machine.

Reads and writes reports only: no training, no JAX computation.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxdiff import config as config_lib
from jaxdiff.experiments.mnist_bnn import report
from jaxdiff.experiments.mnist_bnn.config import BnnConfig
from jaxdiff.experiments.mnist_bnn.experiment import rerun_command, write_reports

# The configuration's fields the parts of one run may differ in: which seeds each trained, and
# the notes on its report (the pooled report has its own).
PART_FIELDS = ("first_seed", "seeds", "notes")
PHASES = ("tuning", "seeds", "temperatures")
# What a part's report.json must hold: a finished run's report, not a pooled one.
REPORT_KEYS = ("config", "command", "summaries", "data", "environment", "tuning", "runs")


class PoolError(ValueError):
  """The reports are not parts of one run's seeds; the message says what differs."""


def pool_reports(
  parts: Sequence[dict[str, Any]], out_dir: str | Path, notes: Sequence[str] = ()
) -> dict[str, Any]:
  """The report one run of every seed of ``parts`` would have written to ``out_dir``.

  Args:
    parts: the ``report.json`` contents of runs of one configuration (flags and data) but
      their seeds, which must not overlap and together must be consecutive, and their notes.
    out_dir: where the pooled report goes; its command names it.
    notes: the pooled report's lines for its setup (each part's stay in ``parts``).

  Returns:
    The pooled report: the configuration of one run of all the seeds (its command trains them
    in one go, on the ``--data`` of the part with the lowest seeds), the tuning of that part
    (every part tunes alike and must pick alike), every part's seed and temperature runs in the
    order one run records them, the scores of them all, and ``parts``, by their seeds: each
    part's seeds, notes, command and environment (``environment`` is None).

  Raises:
    PoolError: fewer than two parts, a pooled report among them, parts of different
      configurations, data or picked learning rates, a seed in two parts, or seeds with a gap.
  """
  if len(parts) < 2:
    raise PoolError("give the folders of two or more runs to pool")
  if any("parts" in part for part in parts):
    raise PoolError("a report is pooled already: pool the folders of its parts instead")
  parts = sorted(parts, key=lambda part: report.seed_range(part["config"])[0])
  first = parts[0]
  shared = _without(first["config"], PART_FIELDS)
  for part in parts[1:]:
    config = _without(part["config"], PART_FIELDS)
    differing = sorted(key for key in shared.keys() | config.keys()
                       if shared.get(key) != config.get(key))  # fmt: skip
    if differing:
      raise PoolError(f"the runs differ in {', '.join(differing)}: pool the seeds of one "
                      "configuration")  # fmt: skip
    # The same images read from another path (another machine) are the same data.
    if _without(part["data"], ("source",)) != _without(first["data"], ("source",)):
      raise PoolError("the runs trained on different data: pool runs of one data set")
    if part["tuning"]["picked"] != first["tuning"]["picked"]:
      raise PoolError("the runs' tuning picked different learning rates: pool runs whose "
                      "tuning agrees (rerun the disagreeing one on the first's machine)")  # fmt: skip
  seeds = sorted(seed for part in parts for seed in report.seed_range(part["config"]))
  repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
  if repeated:
    raise PoolError(f"seed {repeated[0]} is in two of the runs: pool each seed once")
  missing = sorted(set(range(seeds[0], seeds[-1] + 1)) - set(seeds))
  if missing:
    raise PoolError(f"the runs leave out seed {missing[0]}: pool consecutive seeds, so that "
                    "the pooled report's command trains them")  # fmt: skip
  config = config_lib.from_saved(BnnConfig, shared, first_seed=seeds[0], seeds=len(seeds),
                                 notes=tuple(notes))  # fmt: skip
  runs = [run for run in first["runs"] if run["phase"] == "tuning"]
  runs += [run for part in parts for run in part["runs"] if run["phase"] != "tuning"]
  runs.sort(key=lambda run: _recording_order(config, run))
  return {
    **first,
    "config": dataclasses.asdict(config),
    "command": rerun_command(
      config, _data_flag(first["command"]), out_dir, summaries=first["summaries"] is not None
    ),
    "summaries": None,  # each part's live series stay in its own folder
    "environment": None,
    "parts": [
      {
        "seeds": report.seed_range(part["config"]),
        "notes": part["config"]["notes"],
        "command": part["command"],
        "environment": part["environment"],
      }
      for part in parts
    ],
    **report.score_runs(runs, first["tuning"]["picked"]),
    "runs": runs,
  }


def pool_experiment(
  run_dirs: Sequence[str | Path], out_dir: str | Path, notes: Sequence[str] = ()
) -> dict[str, Any]:
  """Pools the reports in ``run_dirs`` (:func:`pool_reports`) and writes them to ``out_dir``.

  Writes ``report.json``, ``report.md`` and the figures, each atomically.

  Raises:
    PoolError: a folder holds no report of a finished run of ``experiments/mnist_bnn.py``,
      ``out_dir`` is a file or one of ``run_dirs``, or :func:`pool_reports`'s.
  """
  out = Path(out_dir)
  if out.exists() and not out.is_dir():
    raise PoolError(f"--out {out_dir} is a file, not a folder: name another")
  if out.resolve() in {Path(folder).resolve() for folder in run_dirs}:
    raise PoolError(f"--out {out_dir} is one of the runs: name another folder, so that its "
                    "report stays")  # fmt: skip
  pooled = pool_reports([_read_report(Path(folder)) for folder in run_dirs], out_dir, notes)
  write_reports(pooled, out_dir)
  return pooled


def _read_report(folder: Path) -> dict[str, Any]:
  path = folder / "report.json"
  what = "name the output folder of a finished run of experiments/mnist_bnn.py"
  if not path.is_file():
    raise PoolError(f"{folder} holds no report.json: {what}")
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise PoolError(f"{path} is not JSON ({error.msg}, line {error.lineno}): {what}") from error
  if not isinstance(saved, dict) or not all(key in saved for key in REPORT_KEYS):
    raise PoolError(f"{path} is not the report of a run of experiments/mnist_bnn.py: {what}")
  return saved


def _without(mapping: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
  return {key: value for key, value in mapping.items() if key not in keys}


def _data_flag(command: str) -> str:
  """The ``--data`` of a report's command (the report's ``data`` holds the resolved source)."""
  words = shlex.split(command)
  return words[words.index("--data") + 1]


def _recording_order(config: BnnConfig, run: dict[str, Any]) -> tuple:
  """Where one run of ``config`` records ``run``: each method's tuning then its seeds, then the
  cold-posterior curve per method, temperature and seed (tuning keeps its grid's order)."""
  method = config.methods.index(run["method"])
  if run["phase"] == "temperatures":
    return (1, method, config.temperatures.index(run["temperature"]), run["seed"])
  return (0, method, PHASES.index(run["phase"]), run["seed"] if run["seed"] is not None else -1)
