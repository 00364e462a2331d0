"""experiments/ddpm_mnist.py end to end on a tiny MNIST-shaped set: outputs, resume, flags."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from behaviour_data import checkpoint_leaves, mnist_like, save_mnist_npz
from tensorboard.backend.event_processing import event_accumulator

from jaxdiff import summaries

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "experiments" / "ddpm_mnist.py"
# T = 50 instead of 1000: the forward process's length is a flag, and the denoising figure's
# ancestral trajectory takes T U-Net calls.
TINY_RUN = ["--model-size", "tiny", "--batch-size", 8, "--num-samples", 8, "--eval-images", 4,
            "--bpd-timesteps", 2, "--sampler", "ddim", "--sample-steps", 3, "--num-timesteps", 50,
            "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
  """64 train and 16 test 28x28 uint8 images: blobs whose position is the label."""
  path = tmp_path_factory.mktemp("data") / "tiny_mnist.npz"
  save_mnist_npz(mnist_like(train=64, test=16), path)
  return path


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
  return {**os.environ, "JAXDIFF_CACHE": str(tmp_path_factory.mktemp("cache"))}


def _cli(env, *args):
  return subprocess.run([sys.executable, str(CLI), *map(str, args)], capture_output=True,
                        text=True, timeout=900, cwd=ROOT, env=env, check=False)  # fmt: skip


def test_outputs_and_resume(tmp_path, tiny_mnist, cache_env):
  resumed = tmp_path / "resumed"
  first = _cli(cache_env, "--data", tiny_mnist, "--out", resumed, "--steps", 6, *TINY_RUN)
  assert first.returncode == 0, first.stderr[-3000:]
  # 6 steps end inside the second epoch (8 steps each): resume from there.
  second = _cli(cache_env, "--data", tiny_mnist, "--out", resumed, "--steps", 12, "--resume",
                "--sampler-table", *TINY_RUN)  # fmt: skip
  assert second.returncode == 0, second.stderr[-3000:]
  straight = tmp_path / "straight"
  whole = _cli(cache_env, "--data", tiny_mnist, "--out", straight, "--steps", 12, *TINY_RUN)
  assert whole.returncode == 0, whole.stderr[-3000:]

  for name in ("samples.png", "loss.png", "denoise.png", "samplers.png"):
    assert (resumed / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  report = json.loads((resumed / "report.json").read_text())
  assert report["train"]["steps"] == 12
  assert report["config"]["num_timesteps"] == 50
  assert np.isfinite(report["test_bits_per_dim"]["total"])
  assert sum(report["sample_quality"]["samples"]["class_histogram"]) == 8
  markdown = (resumed / "report.md").read_text()
  assert "bits/dim" in markdown and "not comparable to published FIDs" in markdown
  # The sampler table: every sampler that fits T = 50 (DDIM 100 does not; the PC rows' DDIM
  # predictor takes the 50 steps there are), from one model.
  table = report["sample_quality"]["sampler_table"]
  assert [(row["sampler"], row["ddim_steps"], row["solver_steps"], row["corrector_steps"])
          for row in table] == [
    ("ddpm", None, None, 0), ("ddim", 25, None, 0), ("ddim", 50, None, 0),
    ("dpm_solver", None, 10, 0), ("dpm_solver", None, 15, 0), ("dpm_solver", None, 20, 0),
    ("dpm_solver", None, 25, 0), ("pc", 50, None, 1), ("pc", 50, None, 1), ("pc", 50, None, 2),
    ("pc", 50, None, 2), ("pc", 50, None, 2), ("pc", 50, None, 3), ("pc", 50, None, 3),
  ]  # fmt: skip
  # DPM-Solver's K steps are K model evaluations.
  assert [row["model_evaluations"] for row in table] == [
    50, 25, 50, 10, 15, 20, 25, 100, 100, 150, 150, 150, 200, 200
  ]  # fmt: skip
  assert all(np.isfinite(row["classifier_fd"]) and row["seconds"] > 0 for row in table)
  assert "## Samplers" in markdown and "| DDIM, 25 steps | 25 |" in markdown
  assert "| PC: DDIM 50 + 2 corrector step(s), snr 0.16 | 150 |" in markdown
  assert "| DPM-Solver++(2M), 20 steps | 20 |" in markdown
  assert all(0 <= row["rarest_class_share"] <= 1 / 10 for row in table)
  assert "T = 50;" in markdown

  for resumed_leaf, straight_leaf in zip(checkpoint_leaves(resumed / "checkpoints" / "12"),
                                         checkpoint_leaves(straight / "checkpoints" / "12")):  # fmt: skip
    np.testing.assert_array_equal(resumed_leaf, straight_leaf)
  straight_report = json.loads((straight / "report.json").read_text())
  assert report["test_bits_per_dim"] == straight_report["test_bits_per_dim"]
  # The resumed run's summaries continue its series: each leg's scores at its last step.
  series = summaries.read_scalars(resumed / "summaries" / "ddpm")
  assert [step for step, _ in series["samples/classifier_fd"]] == [6, 12]

  # A fresh run into a folder with checkpoints stops before training, and says what to do.
  again = _cli(cache_env, "--data", tiny_mnist, "--out", straight, "--steps", 12, *TINY_RUN)
  assert again.returncode == 2, again.stderr[-3000:]
  lines = [line for line in again.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "--resume" in lines[0], again.stderr
  assert json.loads((straight / "report.json").read_text()) == straight_report


@pytest.mark.parametrize("predictor", ["ddpm", "ddim"])
def test_predictor_corrector_sampling(tmp_path, tiny_mnist, cache_env, predictor):
  out = tmp_path / predictor
  run = _cli(cache_env, "--data", tiny_mnist, "--out", out, "--steps", 2, *TINY_RUN,
             "--sampler", "pc", "--pc-predictor", predictor, "--corrector-steps", 1,
             "--no-summaries")  # fmt: skip
  assert run.returncode == 0, run.stderr[-3000:]
  assert not (out / "summaries").exists()
  assert "ddpm:" not in run.stdout  # --quiet: no phase lines
  assert "No summaries were written (`--no-summaries`)." in (out / "report.md").read_text()
  report = json.loads((out / "report.json").read_text())
  assert report["sampling"]["sampler"] == "pc"
  assert sum(report["sample_quality"]["samples"]["class_histogram"]) == 8
  named = {"ddpm": "ancestral predictor", "ddim": "DDIM 3-step predictor"}[predictor]
  assert (
    f"sampler pc ({named}, 1 Langevin corrector steps per level" in (out / "report.md").read_text()
  )
  assert (out / "denoise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


CONDITIONAL_RUN = [*TINY_RUN, "--conditional", "--guidance", 1.5, "--sampler", "dpm_solver"]


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, tiny_mnist, cache_env):
  """A trained conditional run's output folder (its outputs are checked by
  test_a_conditional_run_with_guidance_and_the_solver, and the tests that sample it again
  leave them as they are)."""
  out = tmp_path_factory.mktemp("runs") / "conditional"
  # Not --quiet: its phase lines are checked.
  loud = [arg for arg in CONDITIONAL_RUN if arg != "--quiet"]
  run = _cli(cache_env, "--data", tiny_mnist, "--out", out, "--steps", 2, *loud,
             "--guidance-scales", "0,1.5")  # fmt: skip
  assert run.returncode == 0, run.stderr[-3000:]
  return out, run.stdout


def test_a_conditional_run_with_guidance_and_the_solver(conditional_run):
  out, stdout = conditional_run
  # After training, each phase says what it does.
  for line in ("ddpm: sampling 8 images: dpm_solver (DPM-Solver++(2M), 3 steps), guidance w = 1.5",
               "ddpm: the MNIST classifier that scores the samples",
               "ddpm: guidance sweep, w = 1.5 (2 of 2)",
               "ddpm: the denoising figure: one ancestral draw of 50 steps",
               "ddpm: the test bound in bits/dim on 4 held-out images (2 t each)",
               f"ddpm: wrote {out / 'report.md'}"):  # fmt: skip
    assert line in stdout, (line, stdout[-3000:])
  report = json.loads((out / "report.json").read_text())
  assert report["config"]["conditional"] and report["config"]["guidance"] == 1.5
  quality = report["sample_quality"]
  samples = quality["samples"]
  assert sum(samples["class_histogram"]) == 8
  # Eight samples, one for each of the digits 0-7: each digit's share is 0 or 1, and one
  # sample a digit is too few for its own FD.
  assert [(row["digit"], row["num_samples"]) for row in samples["per_class"]] == [
    (digit, 1) for digit in range(8)
  ]
  assert all(row["class_accuracy"] in (0.0, 1.0) and row["classifier_fd"] is None
             for row in samples["per_class"])  # fmt: skip
  assert samples["class_accuracy"] == np.mean(
    [row["class_accuracy"] for row in samples["per_class"]]
  )
  assert 0 <= quality["real_test_floor"]["class_accuracy"] <= 1
  # The sweep draws each weight from the same parameters and noise: its w = 1.5 row is the
  # samples' own scores.
  sweep = quality["guidance_sweep"]
  assert [row["guidance"] for row in sweep] == [0.0, 1.5]
  for key in ("classifier_fd", "class_accuracy", "confident_share", "per_class"):
    assert sweep[1][key] == samples[key], key
  for name in ("samples_by_class.png", "guidance.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  markdown = (out / "report.md").read_text()
  assert "class-conditional (labels dropped with probability 0.1)" in markdown
  assert "sampler dpm_solver (DPM-Solver++(2M), 3 steps), guidance w = 1.5 towards every digit" in (
    markdown
  )
  assert "| digit | samples | asked-for share | classifier FD | real digits' FD |" in markdown
  assert "## Guidance" in markdown
  assert "![FD against the asked-for digit's share](guidance.png)" in markdown
  assert "![one row per digit asked for](samples_by_class.png)" in markdown
  # The report says how it was made, resumed and sampled again, and where its summaries are.
  assert f"--out {out} --steps 2 " in markdown and "--guidance 1.5" in markdown
  assert "--resume\n" in markdown and "--sampler dpm_solver --sample-steps 20" in markdown
  assert f"tensorboard --logdir {out / 'summaries'}" in markdown
  assert "[summaries/](summaries/)" in markdown

  # The summaries hold the training series and, at the last step, the scores and the grid.
  series = summaries.read_scalars(out / "summaries" / "ddpm")
  assert [step for step, _ in series["train/loss"]] == [2]
  for tag, value in (("test/bits_per_dim", report["test_bits_per_dim"]["total"]),
                     ("samples/class_accuracy", samples["class_accuracy"]),
                     ("samples/classifier_fd", samples["classifier_fd"]),
                     ("samples_w0/class_accuracy", sweep[0]["class_accuracy"])):  # fmt: skip
    ((step, logged),) = series[tag]
    assert step == 2 and logged == pytest.approx(value, rel=1e-6), tag  # float32 in the events
  events = event_accumulator.EventAccumulator(str(out / "summaries" / "ddpm"))
  events.Reload()
  assert events.Tags()["images"] == ["samples"]
  # jsonl has the same scalars, at full precision.
  lines = [json.loads(line) for line in (out / "summaries" / "ddpm" / "scalars.jsonl").open()]
  assert any(line.get("samples/class_accuracy") == samples["class_accuracy"] for line in lines)
  # The conditional U-Net's label embedding, 11 labels with the null one, is in the checkpoint.
  shapes = [leaf.shape for leaf in checkpoint_leaves(out / "checkpoints" / "2")]
  assert (1, 11, 32) in shapes  # a leading run axis


def _one_line(result) -> str:
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  return lines[0]


def test_sample_only_writes_beside_the_training_report(conditional_run, tiny_mnist, cache_env):
  out, _ = conditional_run
  before = {name: (out / name).read_bytes() for name in ("report.json", "report.md", "samples.png")}
  # --steps is not the run's 2: a training flag, which --sample-only takes from the run.
  again = _cli(cache_env, "--data", tiny_mnist, "--out", out, "--sample-only", "--steps", 50,
               *CONDITIONAL_RUN, "--sample-steps", 5, "--guidance", 3, "--class-labels", "3,7")  # fmt: skip
  assert again.returncode == 0, again.stderr[-3000:]
  tag = "dpm_solver-5-w3-digits37"
  for name in (f"samples-{tag}.png", f"samples_by_class-{tag}.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert {name: (out / name).read_bytes() for name in before} == before
  report = json.loads((out / f"report-{tag}.json").read_text())
  assert report["checkpoint_step"] == 2 and report["config"]["steps"] == 2
  assert report["config"]["sample_steps"] == 5 and report["config"]["guidance"] == 3
  per_class = report["sample_quality"]["samples"]["per_class"]
  assert [(row["digit"], row["num_samples"]) for row in per_class] == [(3, 4), (7, 4)]
  markdown = (out / f"report-{tag}.md").read_text()
  assert "last checkpoint (step 2" in markdown and "[report.md](report.md)" in markdown
  assert f"![samples](samples-{tag}.png)" in markdown
  assert f"[report-{tag}.json](report-{tag}.json)" in markdown
  # Its scores go to the run's summaries, at the checkpoint's step, under the sampler's name.
  series = summaries.read_scalars(out / "summaries" / "ddpm")
  assert series[f"samples_{tag}/classifier_fd"] == [
    (2, pytest.approx(report["sample_quality"]["samples"]["classifier_fd"], rel=1e-6))
  ]


def test_a_run_sampled_again_or_resumed_must_fit_it(conditional_run, tmp_path, tiny_mnist,
                                                    cache_env):  # fmt: skip
  out, _ = conditional_run
  report = (out / "report.md").read_bytes()
  unconditional = [
    arg for arg in CONDITIONAL_RUN if arg not in ("--conditional", "--guidance", 1.5)
  ]
  other_model = _cli(cache_env, "--data", tiny_mnist, "--out", out, "--sample-only", *unconditional)
  assert other_model.returncode == 2
  assert "trained another model: --conditional True (asked for: False)" in _one_line(other_model)
  nothing = _cli(cache_env, "--data", tiny_mnist, "--out", tmp_path / "empty", "--sample-only",
                 *CONDITIONAL_RUN)  # fmt: skip
  assert nothing.returncode == 2 and "holds no config.json" in _one_line(nothing)
  # A finished run resumed with other sampling flags would train nothing and only replace its
  # samples and report: refused, pointing to --sample-only.
  resumed = _cli(cache_env, "--data", tiny_mnist, "--out", out, "--resume", "--steps", 2,
                 *CONDITIONAL_RUN, "--sample-steps", 4)  # fmt: skip
  assert resumed.returncode == 2
  line = _one_line(resumed)
  assert "has trained its 2 steps" in line and "--sample-steps" in line and "--sample-only" in line
  assert (out / "report.md").read_bytes() == report


def test_the_readme_example_samples_a_trained_run(conditional_run):
  readme = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
  (example,) = [block for block in blocks if "load_run(" in block]
  namespace = {}
  exec(example.replace('"runs/ddpm_conditional"', repr(str(conditional_run[0]))), namespace)  # noqa: S102
  drawn = namespace["drawn"]
  assert drawn.images.shape == (20, 28, 28, 1) and drawn.images.dtype == np.uint8
  np.testing.assert_array_equal(drawn.labels, [3, 7] * 10)
  assert namespace["run"].config.conditional and namespace["run"].image_shape == (28, 28, 1)


T_50 = ["--num-timesteps", "50"]


@pytest.mark.parametrize(
  "args,message",
  [
    (["--schedule", "quadratic"], "argument --schedule: unknown noise schedule quadratic"),
    (["--steps", "0"], "argument --steps: must be greater than 0, got 0"),
    (["--steps", "-3"], "argument --steps: must be greater than 0, got -3"),
    (["--sampler", "euler"], "argument --sampler: unknown sampler euler"),
    (["--model-size", "huge"], "argument --model-size: unknown model size huge"),
    (["--compute-dtype", "float16"], "argument --compute-dtype: unknown compute dtype float16"),
    (["--num-timesteps", "0"], "argument --num-timesteps: must be greater than 0, got 0"),
    (["--warmup-steps", "-1"], "argument --warmup-steps: must be at least 0, got -1"),
    (["--grad-clip", "0"], "argument --grad-clip: must be greater than 0, got 0"),
    (["--ema-decay", "1"], "argument --ema-decay: must be below 1, got 1"),
    (["--train-minutes", "0"], "argument --train-minutes: must be greater than 0, got 0"),
    (
      ["--sampler", "pc", "--corrector-steps", "-1"],
      "argument --corrector-steps: must be at least 0, got -1",
    ),
    (["--sampler", "pc", "--snr", "0"], "argument --snr: must be greater than 0, got 0"),
    # Checks across fields name the flag whose value does not fit T.
    (
      [*T_50, "--sampler", "ddim", "--sample-steps", "51", "--bpd-timesteps", "2"],
      "argument --sample-steps: must be at most T = 50",
    ),
    (
      [*T_50, "--sample-steps", "10", "--bpd-timesteps", "50"],
      "argument --bpd-timesteps: must be at most T - 1 = 49",
    ),
    # The default sampler's DDIM predictor takes 100 steps: a smaller T names the flag to lower.
    (T_50, "argument --sample-steps: must be at most T = 50"),
    (
      [*T_50, "--sampler", "pc", "--pc-predictor", "ddim", "--sample-steps", "51"],
      "argument --sample-steps: must be at most T = 50",
    ),
    (["--prediction", "score"], "argument --prediction: unknown prediction target score"),
    (["--loss-weighting", "snr"], "argument --loss-weighting: unknown loss weighting snr"),
    (["--pc-predictor", "euler"], "argument --pc-predictor: unknown predictor euler"),
    (
      ["--model-size", "tiny", "--base-channels", "6"],
      "argument --base-channels: must be a multiple of the 4 GroupNorm groups",
    ),
    # Guidance and the digits to draw need a conditional model.
    (
      ["--guidance", "2"],
      "argument --guidance: needs a class-conditional model: add --conditional",
    ),
    (["--class-labels", "3,7"], "argument --class-labels: needs a class-conditional model"),
    (["--conditional", "--class-labels", "3,12"], "argument --class-labels: unknown digit 12"),
    (["--conditional", "--guidance", "-1"], "argument --guidance: must be at least 0, got -1"),
    (["--label-dropout", "1"], "argument --label-dropout: must be below 1, got 1"),
    (["--guidance-scales", "0,1"], "argument --guidance-scales: needs a class-conditional model"),
    (
      ["--conditional", "--guidance-scales", "0,-1"],
      "argument --guidance-scales: must be at least 0, got -1",
    ),
    (
      [*T_50, "--sampler", "dpm_solver", "--sample-steps", "51", "--bpd-timesteps", "2"],
      "argument --sample-steps: must be at most T = 50",
    ),
  ],
)
def test_bad_flags_give_one_line_and_exit_2(tmp_path, tiny_mnist, cache_env, args, message):
  result = _cli(cache_env, "--data", tiny_mnist, "--out", tmp_path / "out", *args)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and message in lines[0], result.stderr


def test_wrong_image_shape_for_the_model(tmp_path, cache_env):
  path = tmp_path / "odd.npz"
  images = np.zeros((16, 27, 27, 1), np.uint8)  # 27 does not halve
  np.savez(path, x_train=images, y_train=np.zeros(16), x_test=images, y_test=np.zeros(16))
  result = _cli(cache_env, "--data", path, "--out", tmp_path / "out", "--steps", 2, *TINY_RUN)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "(27, 27, 1)" in lines[0], result.stderr
