"""What separates SGLD on the MNIST MLP from Korattikara et al.'s 1.271 %: one ingredient at a time.

Every row is the ``korattikara2015`` preset of ``experiments/mnist_bnn.py`` shortened to
``--epochs`` (the chain length is the one ingredient this leaves out: the preset's own run
gives the test error of its posterior average at every epoch), with one setting changed, and
the ``li2016`` protocol's SGLD for comparison. Each row trains ``--seeds`` seeds and reports
the averaged predictive's test error, mean ± standard error; the runs' reports go under
``--out``/<row>, and a resumed invocation (``--resume``) skips rows already done.

  python -m benchmarks.sgld_gap --data ../shared/data/mnist.npz --out runs/sgld_gap
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import common
from jaxdiff.experiments.mnist_bnn.config import BnnConfig
from jaxdiff.experiments.mnist_bnn.experiment import run_experiment

# The rows: a name, what changes, and the protocol's fields it changes.
ROWS = (
  ("preset", "the preset, shortened", {}),
  ("lr 0.03", "a smaller constant learning rate", {"learning_rates": (0.03,)}),
  ("lr 0.3", "a larger constant learning rate", {"learning_rates": (0.3,)}),
  ("halving from 0.3", "li2016's schedule: 0.3 halved every fifth of the run",
   {"learning_rates": (0.3,), "lr_schedule": "halving"}),
  ("one sample an epoch", "li2016's thinning", {"thin_steps": 500}),
  ("burn-in half", "li2016's burn-in", {"burn_in": 0.5}),
  ("pixels ÷ 255", "li2016's input scale, pixels in [0, 1]", {"input_scale": 1.0}),
  ("prior σ² 0.1", "a tighter prior", {"prior_variance": 0.1}),
  ("prior σ² 10", "a wider prior", {"prior_variance": 10.0}),
  ("T 0.1", "a colder posterior", {"temperature": 0.1}),
  ("li2016", "li2016's SGLD: its grid tuned on held-out images, halving, burn-in half, one "
   "sample an epoch, pixels in [0, 1]", {"protocol": "li2016"}),
)  # fmt: skip


def row_config(fields: dict, epochs: int, seeds: int) -> BnnConfig:
  """The preset at ``epochs`` with ``fields`` changed (halving, if asked, every fifth of the
  run), or another protocol's SGLD at ``epochs``."""
  length = {"epochs": epochs, "seeds": seeds, "lr_halving_epochs": max(1, epochs // 5)}
  if "protocol" in fields:
    return BnnConfig.preset(fields["protocol"], methods=("sgld",), temperatures=(),
                            shift_angles=(), **length)  # fmt: skip
  return BnnConfig.preset("korattikara2015", **{**length, **fields})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="a local mnist.npz, or tfds")
  parser.add_argument("--out", required=True, help="a folder for the rows' runs")
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--rows", default=",".join(name for name, _, _ in ROWS),
                      help="comma-separated names of the rows to run, in this order")  # fmt: skip
  parser.add_argument("--resume", action="store_true")
  flags = parser.parse_args()
  common.positive(parser, flags, "epochs", "seeds")
  rows = {name: (change, fields) for name, change, fields in ROWS}
  wanted = flags.rows.split(",")
  unknown = [name for name in wanted if name not in rows]
  if unknown:
    parser.error(f"--rows: unknown rows {unknown}; the rows are {list(rows)}")
  print(common.header())
  results = {}
  for name in wanted:
    change, fields = rows[name]
    out = Path(flags.out) / name.replace(" ", "_").replace("/", "-")
    report_file = out / "report.json"
    if flags.resume and report_file.exists():
      report = json.loads(report_file.read_text())
    else:
      report = run_experiment(row_config(fields, flags.epochs, flags.seeds), flags.data, out,
                              resume=flags.resume, quiet=True)  # fmt: skip
    error = report["summary"]["sgld"]["averaged"]["error"]
    results[name] = error
    se = "" if error["se"] is None else f" ± {100 * error['se']:.3f}"
    print(f"{name:22s} {100 * error['mean']:.3f}{se} % ({change}; n = {error['n']})", flush=True)
  (Path(flags.out) / "summary.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
  main()
