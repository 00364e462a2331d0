"""Writes tests/data/behaviour_reference.json from the pre-redesign code path (commit ac48046).

Run once, before the toolkit redesign, with the test suite's four simulated CPU devices:

  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \
    python tests/make_behaviour_reference.py
"""

import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from behaviour_data import cifar_like, mnist_like  # noqa: E402

from jaxdiff import comparison, diffusion_experiment  # noqa: E402


def leaf_sums(tree):
  return [float(np.sum(np.asarray(leaf, np.float64))) for leaf in jax.tree.leaves(tree)]


def main():
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    config = comparison.ComparisonConfig(
      optimizers=("sgd", "langevin"), seeds=1, epochs=1, train_size=2000, batch_size=100
    )
    records = comparison.run_comparison(config, cifar_like(), Path(tmp) / "cifar", quiet=True)
    for record in records:
      record.pop("step_time_s")
    out["cifar_records"] = records

    ddpm_config = diffusion_experiment.DiffusionConfig(
      model_size="tiny", steps=10, batch_size=8, num_samples=8, eval_images=4, bpd_timesteps=2,
      sampler="ddim", sample_steps=3, num_timesteps=100,
    )  # fmt: skip
    data = mnist_like()
    ema, history = diffusion_experiment.train_diffusion(
      ddpm_config, data, Path(tmp) / "ddpm_train", quiet=True
    )
    out["ddpm_losses"] = history["loss"]
    out["ddpm_ema_leaf_sums"] = leaf_sums(ema)

    npz = Path(tmp) / "mnist_like.npz"
    np.savez(npz, x_train=data.x_train[..., 0], y_train=data.y_train, x_test=data.x_test[..., 0],
             y_test=data.y_test)  # fmt: skip
    report = diffusion_experiment.run_experiment(
      ddpm_config, str(npz), Path(tmp) / "ddpm", quiet=True
    )
    out["ddpm_bits_per_dim"] = report["test_bits_per_dim"]
    out["ddpm_sample_quality"] = report["sample_quality"]
    out["ddpm_final_loss"] = report["train"]["final_loss"]
  path = Path(__file__).parent / "data" / "behaviour_reference.json"
  path.write_text(json.dumps(out, indent=1) + "\n")
  print("wrote", path)


if __name__ == "__main__":
  main()
