"""Configurations as the one source of flags: every field reachable, bad values one line, exit 2."""

import argparse
import dataclasses
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jaxdiff import cli, config
from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.experiments.ddpm_mnist.config import DDPMConfig


@dataclasses.dataclass(frozen=True)
class Example:
  count: int = config.option(3, "a count", greater_than=0)
  rate: float = config.option(0.5, "a rate", flag="lr", at_least=0, below=1)
  mode: str = config.option("a", "a mode", choices=("a", "b"), noun="mode")
  switch: bool = config.option(False, "a switch")
  limit: int | None = config.option(None, "an optional limit", greater_than=0)
  values: tuple[float, ...] = config.option((1.0, 2.0), "some values", at_least=0)
  names: tuple[str, ...] = config.option((), "repeatable names", flag="name", repeatable=True)

  def __post_init__(self):
    config.validate(self)


def _parse(config_type, argv):
  parser = cli.ArgumentParser()
  config.add_flags(parser, config_type)
  return config.from_flags(config_type, parser.parse_args(argv))


def test_no_flags_give_the_defaults():
  assert _parse(Example, []) == Example()
  assert _parse(ComparisonConfig, []) == ComparisonConfig()
  assert _parse(DDPMConfig, []) == DDPMConfig()


def test_every_kind_of_field_parses():
  parsed = _parse(Example, ["--count", "7", "--lr", "0.25", "--mode", "b", "--switch",
                            "--limit", "4", "--values", "3,4.5", "--name", "x", "--name", "y,z"])  # fmt: skip
  assert parsed == Example(7, 0.25, "b", True, 4, (3.0, 4.5), ("x", "y,z"))


@pytest.mark.parametrize("config_type", [ComparisonConfig, DDPMConfig])
def test_every_field_of_the_experiments_is_a_flag_with_help(config_type):
  parser = cli.ArgumentParser()
  config.add_flags(parser, config_type)
  flags = {option for action in parser._actions for option in action.option_strings}
  for field in dataclasses.fields(config_type):
    assert config.flag_name(field) in flags, field.name
    assert field.metadata["help"], field.name


@pytest.mark.parametrize(
  "argv, field, message",
  [
    (["--count", "0"], "count", "must be greater than 0, got 0"),
    (["--lr", "1"], "rate", "must be below 1, got 1"),
    (["--lr", "nan"], "rate", "must be finite"),
    (["--mode", "c"], "mode", "unknown mode c; choose from a, b"),
    (["--values", "1,-2"], "values", "must be at least 0, got -2"),
    (["--limit", "-1"], "limit", "must be greater than 0"),
  ],
)
def test_bad_values_name_their_field(argv, field, message):
  with pytest.raises(config.ConfigError) as error:
    _parse(Example, argv)
  assert error.value.field == field and message in error.value.message


def test_the_same_checks_run_in_python():
  with pytest.raises(config.ConfigError, match="count: must be greater than 0"):
    Example(count=0)
  with pytest.raises(config.ConfigError, match="unknown optimizer rmsprop"):
    ComparisonConfig(optimizers=("sgd", "rmsprop"))
  with pytest.raises(config.ConfigError, match="bpd_timesteps: must be at most T - 1 = 99"):
    DDPMConfig(num_timesteps=100, bpd_timesteps=100)
  with pytest.raises(config.ConfigError, match="base_channels: must be a multiple of the 4"):
    DDPMConfig(model_size="tiny", base_channels=6)


def test_ddpm_width_and_depth_override_the_size():
  model = DDPMConfig(model_size="small", base_channels=16, num_res_blocks=1).make_model()
  assert (model.base_channels, model.num_res_blocks, model.channel_multipliers) == (
    16,
    1,
    (1, 2, 2),
  )
  assert DDPMConfig(model_size="tiny").make_model().base_channels == 8


@pytest.mark.parametrize(
  "argv, expected",
  [
    (["--count", "0"], "argument --count: must be greater than 0, got 0"),
    (["--lr", "2"], "argument --lr: must be below 1, got 2"),
    (["--count", "many"], "argument --count: invalid int value: 'many'"),
    (["--values", "1,x"], "argument --values: expected comma-separated float values"),
  ],
)
def test_a_cli_prints_one_line_and_exits_2(capsys, argv, expected):
  with pytest.raises(SystemExit) as exit_info:
    cli.parse(Example, argv, description="test", default_out="out")
  assert exit_info.value.code == cli.EXIT_USAGE
  lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(lines) == 1 and expected in lines[0], lines


def test_cli_parse_returns_config_run_options_and_platform():
  parsed, options, platform = cli.parse(
    DDPMConfig, ["--seed", "3", "--num-timesteps", "200", "--out", "x", "--resume",
                 "--platform", "cpu"], description="d", default_out="runs/d",
  )  # fmt: skip
  assert parsed == DDPMConfig(seed=3, num_timesteps=200)
  assert options == cli.RunOptions(data="tfds", out="x", resume=True, quiet=False)
  assert platform == "cpu"


def test_a_saved_config_reads_back_with_tuples_and_overrides():
  made = Example(count=7, values=(3.0, 4.5), names=("x",))
  saved = json.loads(json.dumps({**dataclasses.asdict(made), "retired": 1}))  # lists, a gone name
  assert config.from_saved(Example, saved) == made
  assert config.from_saved(Example, saved, count=2) == dataclasses.replace(made, count=2)
  with pytest.raises(config.ConfigError, match="count"):
    config.from_saved(Example, saved, count=0)


def test_the_rerun_command_parses_back_to_the_same_config():
  made = ComparisonConfig(optimizers=("sgd", "langevin"), seeds=1, train_size=2000,
                          notes=("a note", "another"))  # fmt: skip
  command = config.rerun_command("experiments/cifar.py", made, "my data/c.tar.gz", "runs/q")
  words = shlex.split(command)
  assert words[:6] == ["python", "experiments/cifar.py", "--data", "my data/c.tar.gz", "--out",
                       "runs/q"]  # fmt: skip
  parsed, options, _ = cli.parse(ComparisonConfig, words[2:], description="d", default_out="x")
  assert parsed == made and (options.data, options.out) == ("my data/c.tar.gz", "runs/q")
  # Only what differs from the defaults is spelt out.
  assert "--epochs" not in words and words.count("--note") == 2


def test_a_switch_must_default_to_off():
  @dataclasses.dataclass(frozen=True)
  class On:
    flag: bool = config.option(True, "on by default")

  with pytest.raises(TypeError, match="must default to False"):
    config.add_flags(argparse.ArgumentParser(), On)


RUN_FLAGS = {"--help", "--platform", "--data", "--out", "--resume", "--quiet", "--no-summaries",
             "--coordinator-address", "--num-processes", "--process-id", "--distributed",
             "--initialization-timeout"}  # fmt: skip


@pytest.mark.parametrize(
  "script, config_type",
  [("experiments/cifar.py", ComparisonConfig), ("experiments/ddpm_mnist.py", DDPMConfig)],
)
def test_every_config_field_is_a_flag_of_its_cli(script, config_type):
  root = Path(__file__).resolve().parents[1]
  result = subprocess.run([sys.executable, str(root / script), "--help"], capture_output=True,
                          text=True, timeout=300, cwd=root, check=False)  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  # Option lines are indented by two spaces; wrapped help text is indented further.
  listed = set(re.findall(r"^  (?:-\w, )?(--[\w-]+)", result.stdout, re.MULTILINE))
  flags = {config.flag_name(field) for field in dataclasses.fields(config_type)}
  assert len(flags) == len(dataclasses.fields(config_type))  # no two fields share a flag
  assert listed - flags == RUN_FLAGS


@pytest.mark.parametrize("config_type", [ComparisonConfig, DDPMConfig])
def test_the_seed_reaches_the_config(config_type):
  parsed, options, platform = cli.parse(config_type, ["--seed", "3"], description="d",
                                        default_out="runs/d")  # fmt: skip
  assert parsed == dataclasses.replace(config_type(), seed=3)
  assert options == cli.RunOptions("tfds", "runs/d", False, False) and platform is None


def _main(tmp_path, argv, run):
  return cli.main(Example, run, ["--out", str(tmp_path / "out"), *argv], description="d",
                  default_out="out")  # fmt: skip


def test_an_out_that_is_a_file_is_one_line_and_exit_2(tmp_path, capsys):
  (tmp_path / "out").write_text("not a folder")
  code = _main(tmp_path, [], run=lambda *args, **kwargs: pytest.fail("must not run"))
  lines = capsys.readouterr().err.splitlines()
  assert code == cli.EXIT_USAGE and len(lines) == 1 and "is a file, not a folder" in lines[0]


def test_ctrl_c_is_one_line_that_says_how_to_resume_and_exit_130(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(sys, "argv", ["experiments/x.py"])

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  code = _main(tmp_path, ["--count", "4"], run=interrupted)
  lines = capsys.readouterr().err.splitlines()
  assert code == cli.EXIT_INTERRUPTED == 130 and len(lines) == 1, lines
  assert lines[0].endswith(f"python experiments/x.py --out {tmp_path / 'out'} --count 4 --resume")


def test_resume_without_checkpoints_says_it_trains_from_scratch(tmp_path, capsys):
  calls = []
  assert _main(tmp_path, ["--resume"], run=lambda *args, **kwargs: calls.append(kwargs)) == 0
  assert calls == [{"resume": True, "quiet": False, "summaries": True}]
  assert "holds no checkpoints yet; training from scratch" in capsys.readouterr().err
  (tmp_path / "out" / "checkpoints" / "1").mkdir(parents=True)
  _main(tmp_path, ["--resume"], run=lambda *args, **kwargs: None)
  assert capsys.readouterr().err == ""


def test_no_summaries_reaches_the_experiment(tmp_path):
  calls = []
  assert _main(tmp_path, ["--no-summaries"], run=lambda *args, **kwargs: calls.append(kwargs)) == 0
  assert calls == [{"resume": False, "quiet": False, "summaries": False}]
