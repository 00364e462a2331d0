"""The comparison with the SG-MCMC samplers: SGHMC and the cyclical ones, their snapshots."""

import numpy as np
import pytest
from behaviour_data import cifar_like

from jaxdiff import summaries
from jaxdiff.config import ConfigError
from jaxdiff.experiments.cifar import plots, report
from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.experiments.cifar.experiment import main_results, run_comparison
from jaxdiff.experiments.cifar.registry import OPTIMIZERS


def test_sghmc_and_the_cyclical_samplers_train_and_average(tmp_path):
  config = ComparisonConfig(optimizers=("sghmc", "csgld", "csghmc"), seeds=1, epochs=2, cycles=2,
                            train_size=200, batch_size=20, diffusion=1e-5)  # fmt: skip
  records = run_comparison(config, cifar_like(train=200, test=40), tmp_path, quiet=True,
                           summaries=False)  # fmt: skip
  assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoints"]  # no summaries
  by_name = {record["method"]: record for record in records}
  assert set(by_name) == {"sghmc", "csgld", "csghmc"}
  assert all(record["status"] == "ok" for record in records)
  # Burn-in of half the epochs for SGHMC; the cyclical ones snapshot every cycle's last epoch.
  assert by_name["sghmc"]["snapshots"] == 1 and by_name["sghmc"]["averaged"] is not None
  assert by_name["csgld"]["snapshots"] == 2
  assert by_name["csghmc"]["snapshots"] == 2
  assert OPTIMIZERS["sghmc"].baseline == "momentum"


def test_cyclical_samplers_need_whole_cycles_of_epochs():
  with pytest.raises(ConfigError, match="divisible by the cycles"):
    ComparisonConfig(optimizers=("csgld",), epochs=10, cycles=3)
  ComparisonConfig(optimizers=("sgd",), epochs=10, cycles=3)  # no cyclical optimizer: fine


def test_a_temperature_sweep_gives_the_cold_posterior_curve(tmp_path):
  config = ComparisonConfig(optimizers=("sgd", "langevin"), seeds=2, epochs=2, train_size=200,
                            batch_size=20, temperatures=(1.0, 0.01))  # fmt: skip
  records = run_comparison(config, cifar_like(train=200, test=40), tmp_path, quiet=True)
  langevin = [record for record in records if record["method"] == "langevin"]
  assert sorted({record["temperature"] for record in langevin}) == pytest.approx([0.01, 1.0])
  assert sorted({record["diffusion"] for record in langevin}) == pytest.approx(
    [0.01 / 200, 1 / 200]
  )
  # Every run's training series and epoch scores, in TensorBoard's event files and JSON lines.
  runs_dir = tmp_path / "summaries" / "langevin"
  assert len(list(runs_dir.iterdir())) == 4  # 2 temperatures × 2 seeds
  for record in langevin:
    name = f"seed {record['seed']}, lr {record['learning_rate']:g}, D {record['diffusion']:g}"
    directory = runs_dir / summaries.run_directory_name(name)
    series = summaries.read_scalars(directory)
    # 200 images in batches of 20: 10 steps an epoch, the loss averaged over each 50 steps or
    # less at a call's end.
    assert [step for step, _ in series["train/loss"]] == [10, 20]
    errors = [value for _, value in series["test/error"]]
    assert errors == pytest.approx([epoch["current"]["error"] for epoch in record["epochs"]])
    assert [step for step, _ in series["test_averaged/nll"]] == [20]  # the last half's snapshot
    lines = (directory / summaries.SCALARS_FILE).read_text().splitlines()
    assert sum("train/loss" in line for line in lines) == 2
  assert len(list((tmp_path / "summaries" / "sgd").iterdir())) == 2
  curve = report.summarize_temperatures(records)
  assert list(curve["optimizers"]) == ["langevin"]  # sgd has no temperature
  cold, warm = curve["optimizers"]["langevin"]
  assert (cold["temperature"], warm["temperature"]) == pytest.approx((0.01, 1.0))
  assert cold["runs"] == warm["runs"] == 2 and warm["posterior_error"]["n"] == 2
  by_seed = [r for r in langevin if r["temperature"] == pytest.approx(1.0)]
  expected = np.mean([r["averaged"]["error"] for r in by_seed])
  assert warm["posterior_error"]["mean"] == pytest.approx(expected)
  # The main results take T = 1.
  main = main_results(records)
  assert {r["method"] for r in main} == {"sgd", "langevin"}
  assert all(r["temperature"] in (None, pytest.approx(1.0)) for r in main)
  result = {"config": {"train_size": 200}, "command": "python experiments/cifar.py",
            "environment": {}, "data_label": "synthetic", "summary": report.summarize(main),
            "sweep": None, "cold_posterior": curve}  # fmt: skip
  markdown = report.render_markdown(result)
  assert "## Cold posterior" in markdown and "| langevin | 0.01 |" in markdown
  assert "[cold_posterior.png](cold_posterior.png)" in markdown
  plots.plot_cold_posterior(curve, tmp_path / "cold.png")
  assert (tmp_path / "cold.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_temperatures_and_the_grid_sweep_do_not_mix():
  with pytest.raises(ConfigError, match="not both"):
    ComparisonConfig(sweep=True, temperatures=(1.0,))
