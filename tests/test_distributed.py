"""Runs over several processes (jax.distributed, loopback) against the same run in one process.

2 processes x 2 CPU devices and 1 process x 4 devices run the same mesh of 4 devices. Across
processes the gradients' all-reduce sums in another order than inside one, so the two agree to
float32 rounding, not bit for bit: after these runs' 30 steps the observed relative differences
are at most 3e-6, and the tolerance below, 1e-4 relative, is 30 times that (a wrong
split of the batch or of the keys over processes changes losses in their second digit).
"""

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from behaviour_data import checkpoint_leaves, save_tiny_cifar_npz
from multiprocess import ROOT, free_port, run, started, wait_all
from PIL import Image

from jaxdiff import distributed

CIFAR = ROOT / "experiments" / "cifar.py"
DDPM = ROOT / "experiments" / "ddpm_mnist.py"
# 200 images in batches of 20: 10 steps an epoch, 30 in all. Langevin alone: its noise keys,
# per-epoch test scores and posterior average are what could go wrong across processes.
CIFAR_RUN = ["--train-size", 200, "--epochs", 3, "--seeds", 1, "--optimizers", "langevin",
             "--batch-size", 20, "--quiet"]  # fmt: skip
DDPM_RUN = ["--steps", 12, "--model-size", "tiny", "--batch-size", 8, "--num-samples", 8,
            "--eval-images", 4, "--bpd-timesteps", 2, "--sampler", "ddim", "--sample-steps", 3,
            "--num-timesteps", 50, "--quiet"]  # fmt: skip
RTOL = 1e-4  # module docstring


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "tiny_cifar.npz"
  save_tiny_cifar_npz(path)
  return path


def _run_ok(cli, args, *, processes, devices, cache):
  finished = run(cli, args, processes=processes, devices=devices, cache=cache)
  for process_id, result in enumerate(finished):
    assert result.returncode == 0, f"process {process_id}: {result.stderr[-3000:]}"
  return finished


@pytest.fixture(scope="module")
def cifar_runs(tmp_path_factory, tiny_cifar, cache):
  """The output folders of the CIFAR run in 1 process x 4 devices and 2 processes x 2."""
  outs = {}
  for processes in (1, 2):
    outs[processes] = tmp_path_factory.mktemp(f"cifar_{processes}")
    _run_ok(CIFAR, ["--data", tiny_cifar, "--out", outs[processes], *CIFAR_RUN],
            processes=processes, devices=4 // processes, cache=cache)  # fmt: skip
  return outs


def _report(out: Path) -> dict:
  return json.loads((out / "report.json").read_text())


def _assert_close(one, two):
  assert len(one) == len(two) > 0
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * max(1.0, float(np.abs(a).max())))


def _scores(report: dict) -> dict[str, float | None]:
  """Every score of every run by its path in the record (per epoch, final, averaged, snapshots)."""

  def leaves(value, path):
    if isinstance(value, dict):
      for name, inner in value.items():
        yield from leaves(inner, f"{path}/{name}")
    elif isinstance(value, list):
      for index, inner in enumerate(value):
        yield from leaves(inner, f"{path}/{index}")
    elif value is None or isinstance(value, (int, float)):
      yield path, value

  scored = ("epochs", "final", "averaged", "final_train", "snapshots")
  return {path: value
          for index, run in enumerate(report["runs"])
          for name in scored
          for path, value in leaves(run[name], f"{index}/{name}")}  # fmt: skip


def test_two_processes_train_what_one_process_trains(cifar_runs):
  one, two = _report(cifar_runs[1]), _report(cifar_runs[2])
  assert two["environment"]["process_count"] == 2 and one["environment"]["process_count"] == 1
  assert one["environment"]["device_count"] == two["environment"]["device_count"] == 4
  scores_one, scores_two = _scores(one), _scores(two)
  assert scores_two.keys() == scores_one.keys()
  assert [path for path, value in scores_two.items() if value is None] == [
    path for path, value in scores_one.items() if value is None]  # fmt: skip
  assert scores_one["0/snapshots"] > 0 and scores_one["0/averaged/nll"] is not None
  numbers = [path for path, value in scores_one.items() if value is not None]
  np.testing.assert_allclose([scores_two[path] for path in numbers],
                             [scores_one[path] for path in numbers], rtol=RTOL)  # fmt: skip
  _assert_close(checkpoint_leaves(cifar_runs[1] / "checkpoints" / "langevin" / "30"),
                checkpoint_leaves(cifar_runs[2] / "checkpoints" / "langevin" / "30"))  # fmt: skip


def test_a_killed_process_stops_the_others_and_resume_completes(tmp_path, tiny_cifar, cache,
                                                                 cifar_runs):  # fmt: skip
  out = tmp_path / "killed"
  args = ["--data", tiny_cifar, "--out", out, *CIFAR_RUN]
  with started(CIFAR, args, processes=2, devices=2, cache=cache) as children:
    first_checkpoint = out / "checkpoints" / "langevin" / "10"
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and time.monotonic() < deadline:
      assert all(child.poll() is None for child in children), "a process ended before the kill"
      time.sleep(0.02)
    children[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    # Bounded: the survivor's next collective fails at once; JAX's heartbeat would end it too.
    survivor = wait_all(children[:1], timeout_s=120)[0]
    assert time.monotonic() - killed_at < 120
  assert survivor.returncode != 0
  assert not (out / "report.json").exists()

  _run_ok(CIFAR, [*args, "--resume"], processes=2, devices=2, cache=cache)
  # The same processes and devices as the uninterrupted run: the same reductions, bit for bit.
  resumed = checkpoint_leaves(out / "checkpoints" / "langevin" / "30")
  straight = checkpoint_leaves(cifar_runs[2] / "checkpoints" / "langevin" / "30")
  for a, b in zip(resumed, straight, strict=True):
    np.testing.assert_array_equal(a, b)
  assert [run["final"] for run in _report(out)["runs"]] == [
    run["final"] for run in _report(cifar_runs[2])["runs"]
  ]


def test_ddpm_in_two_processes_matches_one(tmp_path, cache):
  # 16x16 images: the run trains, samples and bounds as on MNIST, but skips the sample scores'
  # classifier (28x28 only), most of a tiny run's compilation.
  rng = np.random.default_rng(1)
  data = tmp_path / "tiny_16x16.npz"
  np.savez(data, x_train=rng.integers(0, 256, (64, 16, 16, 1), dtype=np.uint8),
           y_train=np.arange(64) % 10, x_test=rng.integers(0, 256, (16, 16, 16, 1), dtype=np.uint8),
           y_test=np.arange(16) % 10)  # fmt: skip
  reports, leaves = {}, {}
  for processes in (1, 2):
    out = tmp_path / f"ddpm_{processes}"
    _run_ok(DDPM, ["--data", data, "--out", out, *DDPM_RUN], processes=processes,
            devices=4 // processes, cache=cache)  # fmt: skip
    reports[processes] = _report(out)
    leaves[processes] = checkpoint_leaves(out / "checkpoints" / "12")
  _assert_close(leaves[1], leaves[2])
  one, two = reports[1], reports[2]
  np.testing.assert_allclose(two["train"]["final_loss"], one["train"]["final_loss"], rtol=RTOL)
  for name, value in one["test_bits_per_dim"].items():
    np.testing.assert_allclose(two["test_bits_per_dim"][name], value, rtol=RTOL)
  assert one["sample_quality"] is None and two["sample_quality"] is None
  # The samples, drawn from the two runs' EMA parameters: uint8 pixels, so float32 rounding
  # moves a pixel by at most one level, and only where it lay on a rounding boundary.
  grids = [np.asarray(Image.open(tmp_path / f"ddpm_{n}" / "samples.png").convert("L"), np.int16)
           for n in (1, 2)]  # fmt: skip
  differ = np.abs(grids[0] - grids[1])
  assert differ.max() <= 1 and np.mean(differ > 0) < 0.01


def _one_line_exit_2(*flags, timeout_s=60):
  finished = run(CIFAR, ["--data", "unused.npz", *flags], processes=1, devices=1,
                 cache=Path("/nonexistent"), timeout_s=timeout_s)  # fmt: skip
  result = finished[0]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2 is not one of the 2 processes' ids 0..1"),
    (["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2"], "go together"),
    (["--distributed", "--process-id", "0"], "--distributed lets JAX detect the cluster"),
    (["--coordinator-address", "localhost", "--num-processes", "2", "--process-id", "0"],
     "must be HOST:PORT"),
  ],
)  # fmt: skip
def test_bad_process_flags_give_one_line_and_exit_2(flags, message):
  assert message in _one_line_exit_2(*flags)


def test_unreachable_coordinator_gives_one_line_and_exit_2():
  started_at = time.monotonic()
  line = _one_line_exit_2("--coordinator-address", f"127.0.0.1:{free_port()}",
                          "--num-processes", 2, "--process-id", 1,
                          "--initialization-timeout", 2)  # fmt: skip
  assert "no coordinator answered" in line and time.monotonic() - started_at < 60


def test_a_process_group_is_checked_when_built():
  with pytest.raises(distributed.DistributedError, match="initialization timeout"):
    distributed.ProcessGroup("127.0.0.1:1", 2, 0, initialization_timeout=0)
  assert distributed.host_port("[::1]:8476") == ("::1", 8476)
  assert distributed.is_main_process()  # no joined run in the test process
