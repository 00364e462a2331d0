"""Which DDPM recipe learns most per CPU second: MNIST runs at one wall-time budget, scored.

Each recipe is ``experiments/ddpm_mnist.py`` with a few flags, trained for ``--train-minutes``
of wall time (compilation included, the same for every recipe) in its own process, one after
another so that none shares the CPU, then sampled with DDIM and scored by the project's MNIST
classifier (``jaxdiff.sample_quality``). The table lists the steps each budget reached, the
classifier FD, the confident share, the smallest class share and the test bits/dim (a rough
estimate here: 64 test images, 25 sampled timesteps each).

  python -m benchmarks.ddpm_recipe --data ../shared/data/mnist.npz --train-minutes 4
  python -m benchmarks.ddpm_recipe --data ../shared/data/mnist.npz --recipes small,width16
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import common

ROOT = Path(__file__).resolve().parent.parent
# The committed run's recipe (experiments/results/ddpm_mnist before this study), then one
# change at a time from the narrower U-Net. Every recipe spells out the flags it depends on,
# so that it stays the same run when the experiment's defaults change.
BASELINE = {"model-size": "small", "batch-size": 32, "lr": 5e-4, "schedule": "linear",
            "prediction": "eps", "loss-weighting": "uniform"}  # fmt: skip
NARROW = {**BASELINE, "base-channels": 16, "num-res-blocks": 1}  # the "narrow" preset
KEPT = {**NARROW, "prediction": "v", "schedule": "cosine", "lr": 1e-3}
KEPT_LR2E3 = {**KEPT, "lr": 2e-3}  # bbdafe8's defaults
RECIPES = {
  "small": BASELINE,
  "tiny": {**BASELINE, "model-size": "tiny"},
  "width16": NARROW,
  "width16-v": {**NARROW, "prediction": "v"},
  "width16-x0": {**NARROW, "prediction": "x0"},
  "width16-minsnr": {**NARROW, "loss-weighting": "min_snr"},
  "width16-v-minsnr": {**NARROW, "prediction": "v", "loss-weighting": "min_snr"},
  "width16-v-cosine": {**NARROW, "prediction": "v", "schedule": "cosine"},
  "width16-v-lr1e-3": {**NARROW, "prediction": "v", "lr": 1e-3},
  "width24-v": {**NARROW, "base-channels": 24, "prediction": "v"},
  # From the combination the study above kept (70862eb's defaults), one change at a time.
  "width16-v-cosine-lr1e-3": KEPT,
  "width16-v-cosine-lr2e-3": KEPT_LR2E3,
  "width16-v-cosine-lr2e-3-batch64": {**KEPT_LR2E3, "batch-size": 64},
  "width24-v-cosine-lr1e-3": {**KEPT, "base-channels": 24},
  "width16-v-cosine-lr1e-3-minsnr": {**KEPT, "loss-weighting": "min_snr"},
  # From bbdafe8's defaults: smaller batches, which on a 2-core CPU cost few images/s and so
  # multiply the updates per second.
  "width16-v-cosine-lr2e-3-batch16": {**KEPT_LR2E3, "batch-size": 16},
  "width16-v-cosine-lr2e-3-batch8": {**KEPT_LR2E3, "batch-size": 8},
  "width16-v-cosine-lr1e-3-batch8": {**KEPT, "batch-size": 8},
  "width16-v-cosine-lr2e-3-batch8-ema0.999": {**KEPT_LR2E3, "batch-size": 8, "ema-decay": 0.999},
  "defaults": {},  # the experiment's defaults: what the committed run uses
}


def _flags(recipe: dict) -> list[str]:
  return [text for name, value in recipe.items() for text in (f"--{name}", str(value))]


def _changes(recipe: dict) -> str:
  """The recipe's flags that differ from the baseline's, for the table."""
  changed = {name: value for name, value in recipe.items() if BASELINE.get(name) != value}
  if not recipe:
    return "(the experiment's defaults)"
  return " ".join(_flags(changed)) or "(the baseline)"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="MNIST: an .npz file or tfds")
  parser.add_argument("--train-minutes", type=float, default=4.0, help="each recipe's budget")
  parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names")
  parser.add_argument("--out", default="runs/ddpm_recipe", help="one folder per recipe")
  flags = parser.parse_args()
  names = flags.recipes.split(",")
  unknown = sorted(set(names) - set(RECIPES))
  if unknown:
    parser.error(f"unknown recipes {unknown}; choose from {', '.join(RECIPES)}")
  if not flags.train_minutes > 0:
    parser.error("--train-minutes must be positive")
  print(common.header(), flush=True)
  print(
    f"budget {flags.train_minutes:g} min of training per recipe; DDIM 100 steps, 256 samples; "
    "bits/dim from 64 test images x 25 timesteps"
  )
  rows = []
  for name in names:
    out = Path(flags.out) / name
    command = [sys.executable, str(ROOT / "experiments" / "ddpm_mnist.py"), "--data", flags.data,
               "--out", str(out), "--train-minutes", str(flags.train_minutes), "--sampler", "ddim",
               "--eval-images", "64", "--bpd-timesteps", "25", "--quiet", *_flags(RECIPES[name])]  # fmt: skip
    watch = common.MachineWatch()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"{name}: ", end="")
    quiet = watch.report()
    report = json.loads((out / "report.json").read_text())
    scores = report["sample_quality"]["samples"]
    floor = report["sample_quality"]["real_test_floor"]["classifier_fd"]
    min_share = min(scores["class_histogram"]) / sum(scores["class_histogram"])
    rows.append(
      f"| {name} | `{_changes(RECIPES[name])}` | {report['train']['steps']} | "
      f"{report['train']['images_per_second']:.0f} | {scores['classifier_fd']:.1f} "
      f"({scores['classifier_fd'] / floor:.2f}× floor) | {scores['confident_share']:.1%} | "
      f"{min_share:.1%} | {report['test_bits_per_dim']['total']:.3f} |"
      + ("" if quiet else " NOT TRUSTED (busy machine) |")
    )
  print(
    "| recipe | flags beside small's | steps | images/s | classifier FD | confident | min class | bits/dim |"
  )
  print("|---|---|---|---|---|---|---|---|")
  print("\n".join(rows), flush=True)


if __name__ == "__main__":
  main()
