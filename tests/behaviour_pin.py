"""What the behaviour pin records: a quick CIFAR comparison and a tiny DDPM run, from the
current code on the synthetic data of :mod:`behaviour_data`.

``tests/test_behaviour_pin.py`` compares these outputs with ``tests/data/behaviour_reference.json``;
``tests/make_behaviour_reference.py`` writes that file from them.
"""

from pathlib import Path

import jax
import numpy as np
from behaviour_data import cifar_like, mnist_like, save_mnist_npz

from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.experiments.cifar.experiment import run_comparison
from jaxdiff.experiments.ddpm_mnist import experiment
from jaxdiff.experiments.ddpm_mnist.config import DDPMConfig

CIFAR_CONFIG = ComparisonConfig(
  optimizers=("sgd", "langevin"), seeds=1, epochs=1, train_size=2000, batch_size=100
)
# The recipe of the reference run spelt out, so that later changes of the defaults keep it.
DDPM_CONFIG = DDPMConfig(
  model_size="tiny", steps=10, batch_size=8, num_samples=8, eval_images=4, bpd_timesteps=2,
  sampler="ddim", sample_steps=3, num_timesteps=100, schedule="linear", prediction="eps",
  loss_weighting="uniform", learning_rate=2e-4, warmup_steps=200, ema_decay=0.995,
)  # fmt: skip


def cifar_outputs(out_dir: Path) -> dict:
  """The comparison's records, without their timings, in the reference's layout."""
  records = run_comparison(CIFAR_CONFIG, cifar_like(), out_dir, quiet=True)
  return {"records": [_pinned_record(record) for record in records]}


def _test_scores(scores: dict) -> dict:
  return {"test_accuracy": scores["accuracy"], "test_nll": scores["nll"],
          "test_ece": scores["ece"]}  # fmt: skip


def _pinned_record(record: dict) -> dict:
  """A run record as the reference stores it: what the comparison measured before it moved
  onto classification.train_and_score, under that record's names (the reference predates the
  shared record type; the numbers are the same)."""
  averaged = record["averaged"]
  return {
    "optimizer": record["method"],
    **{
      key: record[key]
      for key in ("seed", "learning_rate", "diffusion", "temperature", "status", "diverged_at_step")
    },
    "epochs": [
      {
        "epoch": epoch["epoch"],
        "train_loss": epoch["train"]["loss"],
        "train_accuracy": epoch["train"]["accuracy"],
        **_test_scores(epoch["current"]),
      }
      for epoch in record["epochs"]
    ],
    "last_epoch_loss_std": record["last_epoch_loss_std"],
    "final": {**_test_scores(record["final"]), "train_accuracy": record["final_train"]["accuracy"]},
    "posterior_average": None
    if averaged is None
    else {**_test_scores(averaged), "snapshots": record["snapshots"]},
  }


def ddpm_outputs(out_dir: Path) -> dict:
  """The training losses, each EMA leaf's sum and sum of magnitudes, and the report's scores."""
  data = mnist_like()
  setup = experiment.make_setup(DDPM_CONFIG)
  ema, history = experiment.train_ddpm(DDPM_CONFIG, setup, data, out_dir / "train", quiet=True)
  leaves = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(ema)]
  npz = out_dir / "mnist_like.npz"
  save_mnist_npz(data, npz)
  report = experiment.run_experiment(DDPM_CONFIG, str(npz), out_dir / "run", quiet=True)
  return {
    "losses": history["loss"],
    "ema_leaf_sums": [float(leaf.sum()) for leaf in leaves],
    "ema_leaf_magnitudes": [float(np.abs(leaf).sum()) for leaf in leaves],
    "bits_per_dim": report["test_bits_per_dim"],
    "sample_quality": report["sample_quality"],
    "final_loss": report["train"]["final_loss"],
  }
