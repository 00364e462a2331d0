"""experiments/cifar.py end to end: smoke run, flags, bad flags, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from behaviour_data import checkpoint_leaves, save_tiny_cifar_npz

from jaxdiff import summaries
from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.experiments.cifar.experiment import rerun_command

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "experiments" / "cifar.py"


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "tiny_cifar.npz"
  save_tiny_cifar_npz(path)
  return path


@pytest.fixture(scope="module")
def jaxdiff_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, jaxdiff_cache):
  """The CLIs' caches (compiled programs among them) go to a temporary folder, not ~/.cache."""
  monkeypatch.setenv("JAXDIFF_CACHE", str(jaxdiff_cache))


def test_compiled_programs_are_kept_in_the_cache_folder(tmp_path):
  code = (
    "import jax; from jaxdiff import cli; cli.use_compilation_cache(); "
    "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
    "jax.jit(lambda x: x * 2)(1.0).block_until_ready()"
  )
  env = {**os.environ, "JAXDIFF_CACHE": str(tmp_path)}
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env, check=False)  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  assert any((tmp_path / "xla").iterdir())


def _cli(*args, timeout=600):
  return subprocess.run([sys.executable, str(CLI), *map(str, args)], capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT, check=False)  # fmt: skip


def test_smoke_run_writes_every_output(tmp_path, tiny_cifar):
  out = tmp_path / "out"
  result = _cli("--data", tiny_cifar, "--out", out, "--train-size", 200, "--epochs", 1,
                "--seeds", 2, "--optimizers", "sgd,langevin", "--batch-size", 20, "--quiet")  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert set(report["summary"]["optimizers"]) == {"sgd", "langevin"}
  assert len(report["runs"]) == 4
  langevin = [run for run in report["runs"] if run["method"] == "langevin"]
  assert langevin[0]["temperature"] == pytest.approx(0.01 * 200)
  assert report["config"]["train_size"] == 200
  env = report["environment"]
  phases = env["phase_seconds"]
  assert set(phases) == {"load", "compile", "train", "score", "checkpoint"}
  # Rounded to 0.1 s each; the phases are disjoint parts of the wall time.
  assert all(seconds >= 0 for seconds in phases.values()) and phases["compile"] > 0
  assert sum(phases.values()) <= env["wall_time_s"] + 0.05 * len(phases)
  markdown = (out / "report.md").read_text()
  assert "T = N·D" in markdown and "## Claims" in markdown
  # The command that made it, to rerun or (with --resume) continue it.
  assert f"```bash\npython experiments/cifar.py --data {tiny_cifar} --out {out} " in markdown
  assert "--train-size 200" in markdown and "`--resume`" in markdown
  assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # TensorBoard summaries by default, one directory per optimizer and run, linked from report.md.
  assert report["summaries"] == "summaries" and "[summaries/](summaries/)" in markdown
  for name in ("sgd", "langevin"):
    runs = sorted((out / "summaries" / name).iterdir())
    assert len(runs) == 2 and all(any(run.glob("events.out.tfevents.*")) for run in runs)

  # A fresh run into a folder with checkpoints stops before training, and says what to do.
  again = _cli("--data", tiny_cifar, "--out", out, "--train-size", 200, "--epochs", 1, "--quiet")
  assert again.returncode == 2, again.stderr[-3000:]
  lines = [line for line in again.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "--resume" in lines[0], again.stderr
  assert json.loads((out / "report.json").read_text()) == report


@pytest.mark.parametrize(
  "args,message",
  [
    (["--optimizers", "sgd,rmsprop"], "argument --optimizers: unknown optimizer rmsprop"),
    (["--lr", "0"], "argument --lr: must be greater than 0, got 0"),
    (["--lr", "-1"], "argument --lr: must be greater than 0, got -1"),
    (["--epochs", "0"], "argument --epochs: must be greater than 0, got 0"),
    (["--batch-size", "-5"], "argument --batch-size: must be greater than 0, got -5"),
    (["--batch-size", "10"], "not divisible by the 4 devices"),
    (["--diffusion", "-1"], "argument --diffusion: must be at least 0, got -1"),
    (["--platform", "quantum"], "--platform"),
    (["--platform", "tpu"], "not available here"),
  ],
)
def test_bad_flags_give_one_line_and_exit_2(tmp_path, tiny_cifar, args, message):
  result = _cli("--data", tiny_cifar, "--out", tmp_path / "out", "--epochs", 1, *args)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and message in lines[0], result.stderr


def test_missing_data_gives_one_line_and_exit_2(tmp_path):
  result = _cli("--data", tmp_path / "nowhere.tar.gz", "--out", tmp_path / "out")
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "does not exist" in lines[0], result.stderr


def test_resume_after_sigkill_is_bitwise_equal(tmp_path, tiny_cifar):
  flags = ["--data", tiny_cifar, "--train-size", 200, "--epochs", 6, "--seeds", 1,
           "--optimizers", "langevin", "--batch-size", 20, "--quiet"]  # fmt: skip
  killed_out = tmp_path / "killed"
  process = subprocess.Popen(
    [sys.executable, str(CLI), *map(str, flags), "--out", str(killed_out)],
    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
  )  # fmt: skip
  # Checkpoints are numbered by the step: 200 images in batches of 20 are 10 steps an epoch.
  first_checkpoint = killed_out / "checkpoints" / "langevin" / "10"
  deadline = time.monotonic() + 300
  while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  os.kill(process.pid, signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
  assert not (killed_out / "checkpoints" / "langevin" / "60").exists()

  resumed = _cli(*flags, "--out", killed_out, "--resume")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  straight_out = tmp_path / "straight"
  straight = _cli(*flags, "--out", straight_out)
  assert straight.returncode == 0, straight.stderr[-3000:]

  resumed_leaves = checkpoint_leaves(killed_out / "checkpoints" / "langevin" / "60")
  straight_leaves = checkpoint_leaves(straight_out / "checkpoints" / "langevin" / "60")
  assert len(resumed_leaves) == len(straight_leaves) > 0
  for resumed_leaf, straight_leaf in zip(resumed_leaves, straight_leaves):
    np.testing.assert_array_equal(resumed_leaf, straight_leaf)
  resumed_report = json.loads((killed_out / "report.json").read_text())
  straight_report = json.loads((straight_out / "report.json").read_text())
  assert resumed_report["runs"][0]["final"] == straight_report["runs"][0]["final"]
  # The resumed run's summaries continue its series: the same steps and values as the straight
  # run's, what the killed process wrote after its checkpoint dropped.
  run = "seed_0_lr_0.001_D_0.01"
  resumed_series = summaries.read_scalars(killed_out / "summaries" / "langevin" / run)
  straight_series = summaries.read_scalars(straight_out / "summaries" / "langevin" / run)
  for tag in ("train/loss", "test/error", "test_averaged/nll"):
    assert resumed_series[tag] == straight_series[tag], tag
  assert [step for step, _ in straight_series["test/error"]] == [10, 20, 30, 40, 50, 60]


def test_the_rerun_command_keeps_no_summaries():
  made = ComparisonConfig(seeds=1)
  assert "--no-summaries" in rerun_command(made, "d.npz", "out", summaries=False).split()
  assert "--no-summaries" not in rerun_command(made, "d.npz", "out").split()
