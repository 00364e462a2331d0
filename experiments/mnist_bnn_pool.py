"""Pools runs that each trained some of a protocol's seeds (``--first-seed``) into one report.

  python experiments/mnist_bnn_pool.py runs/seeds_0-4 runs/seeds_5-9 --out runs/pooled

Writes to --out the report.json, report.md and figures that one run of all their seeds would
have written. The runs must share every flag of the configuration but --first-seed, --seeds
and --note, and the data (read from any path).
"""

import sys

from jaxdiff import cli
from jaxdiff.experiments.mnist_bnn.pool import PoolError, pool_experiment

if __name__ == "__main__":
  parser = cli.ArgumentParser(description=__doc__.split("\n")[1])
  parser.add_argument("runs", nargs="+", help="the runs' output folders (each with report.json)")
  parser.add_argument("--out", required=True, help="the pooled report's folder")
  parser.add_argument("--note", action="append", default=[],
                      help="a line for the pooled report's setup (repeatable; the runs' own "
                      "notes stay in report.json's parts)")  # fmt: skip
  flags = parser.parse_args()
  try:
    pool_experiment(flags.runs, flags.out, flags.note)
  except PoolError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(cli.EXIT_USAGE)
