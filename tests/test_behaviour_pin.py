"""The toolkit redesign changed no result: a quick CIFAR comparison and a tiny DDPM run.

The references were computed by the pre-redesign code path (``tests/make_behaviour_reference.py``
at commit 0bf3543, calling ac48046's ``jaxdiff.comparison.run_comparison`` and
``jaxdiff.diffusion_experiment``) on the synthetic data of ``tests/behaviour_data.py``, with the
suite's four simulated CPU devices. The float operations are the same now, so the values must be
equal, not close. XLA:CPU compiles differently for different CPUs (an Intel Xeon's results differ
from an AMD EPYC's in the last bits, with the old code as with the new), so there is one reference
per CPU vendor: ``behaviour_reference.json`` from an AMD EPYC (2026-12-01),
``behaviour_reference_intel.json`` from an Intel Xeon with AVX-512 and AMX (2026-12-02: a
worktree of ac48046 with 0bf3543's ``tests/make_behaviour_reference.py`` and
``tests/behaviour_data.py``, run there as that script's docstring says).
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from behaviour_data import cifar_like, mnist_like, save_mnist_npz

from jaxdiff import environment
from jaxdiff.experiments.cifar.comparison import run_comparison
from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.experiments.ddpm_mnist import experiment
from jaxdiff.experiments.ddpm_mnist.config import DDPMConfig
from jaxdiff.models import cpu_ops

# /proc/cpuinfo's vendor_id -> the reference recorded on that vendor's CPU.
REFERENCES = {
  "AuthenticAMD": "behaviour_reference.json",
  "GenuineIntel": "behaviour_reference_intel.json",
}


@pytest.fixture(scope="module")
def reference():
  vendor = environment.cpu_info("vendor_id") or ""
  if vendor not in REFERENCES:
    pytest.fail(
      f"no behaviour reference for this CPU vendor ({vendor or 'unknown'}): record one with the "
      "pre-redesign code as the module docstring says, and add it to REFERENCES"
    )
  return json.loads((Path(__file__).parent / "data" / REFERENCES[vendor]).read_text())


# The recipe of the reference run spelt out, so that later changes of the defaults keep it.
DDPM_CONFIG = DDPMConfig(
  model_size="tiny", steps=10, batch_size=8, num_samples=8, eval_images=4, bpd_timesteps=2,
  sampler="ddim", sample_steps=3, num_timesteps=100, schedule="linear", prediction="eps",
  loss_weighting="uniform", learning_rate=2e-4, warmup_steps=200, ema_decay=0.995,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXDIFF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _kernels_of_the_references(monkeypatch):
  """The compiler options the references were computed with, on every CPU.

  Since then the seed CNN's programs run without YNNPACK on CPUs with AMX (``cpu_ops``): other
  dot kernels, so other last bits, which this pin of the redesign's logic must not see.
  ``tests/test_cpu_ops.py`` checks that those kernels compute the same function.
  """
  monkeypatch.setattr(cpu_ops, "_BANDED_ON_XLA_DOTS_FLAG", "no CPU has this flag")
  cpu_ops.compiler_options.cache_clear()
  yield
  cpu_ops.compiler_options.cache_clear()


def test_cifar_comparison_records_are_unchanged(tmp_path, reference):
  config = ComparisonConfig(
    optimizers=("sgd", "langevin"), seeds=1, epochs=1, train_size=2000, batch_size=100
  )
  records = run_comparison(config, cifar_like(), tmp_path / "cifar", quiet=True)
  for record in records:
    record.pop("step_time_s")  # a timing
  assert json.loads(json.dumps(records)) == reference["cifar_records"]


def test_ddpm_losses_parameters_bound_and_scores_are_unchanged(tmp_path, reference):
  data = mnist_like()
  setup = experiment.make_setup(DDPM_CONFIG)
  ema, history = experiment.train_ddpm(DDPM_CONFIG, setup, data, tmp_path / "train", quiet=True)
  assert history["loss"] == reference["ddpm_losses"]
  sums = [float(np.sum(np.asarray(leaf, np.float64))) for leaf in jax.tree.leaves(ema)]
  assert sums == reference["ddpm_ema_leaf_sums"]

  npz = tmp_path / "mnist_like.npz"
  save_mnist_npz(data, npz)
  report = experiment.run_experiment(DDPM_CONFIG, str(npz), tmp_path / "ddpm", quiet=True)
  assert report["test_bits_per_dim"] == reference["ddpm_bits_per_dim"]
  assert report["sample_quality"] == reference["ddpm_sample_quality"]
  assert report["train"]["final_loss"] == reference["ddpm_final_loss"]
