"""The comparison with the SG-MCMC samplers: SGHMC and the cyclical ones, their snapshots."""

import pytest
from behaviour_data import cifar_like

from jaxdiff.config import ConfigError
from jaxdiff.experiments.cifar.comparison import run_comparison
from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.experiments.cifar.registry import OPTIMIZERS


def test_sghmc_and_the_cyclical_samplers_train_and_average(tmp_path):
  config = ComparisonConfig(optimizers=("sghmc", "csgld", "csghmc"), seeds=1, epochs=2, cycles=2,
                            train_size=200, batch_size=20, diffusion=1e-5)  # fmt: skip
  records = run_comparison(config, cifar_like(train=200, test=40), tmp_path, quiet=True)
  by_name = {record["optimizer"]: record for record in records}
  assert set(by_name) == {"sghmc", "csgld", "csghmc"}
  assert all(record["status"] == "ok" for record in records)
  # Burn-in of half the epochs for SGHMC; the cyclical ones snapshot every cycle's last epoch.
  assert by_name["sghmc"]["posterior_average"]["snapshots"] == 1
  assert by_name["csgld"]["posterior_average"]["snapshots"] == 2
  assert by_name["csghmc"]["posterior_average"]["snapshots"] == 2
  assert OPTIMIZERS["sghmc"].baseline == "momentum"


def test_cyclical_samplers_need_whole_cycles_of_epochs():
  with pytest.raises(ConfigError, match="divisible by the cycles"):
    ComparisonConfig(optimizers=("csgld",), epochs=10, cycles=3)
  ComparisonConfig(optimizers=("sgd",), epochs=10, cycles=3)  # no cyclical optimizer: fine
