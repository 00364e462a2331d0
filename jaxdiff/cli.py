"""What every experiment CLI shares: the run flags, the config's flags, one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from jaxdiff import config as config_lib
from jaxdiff.distributed import DistributedError, ProcessGroup
from jaxdiff.parallel import PLATFORMS

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class ArgumentParser(argparse.ArgumentParser):
  """argparse, but a bad flag prints one line (no usage block) and exits with 2."""

  def error(self, message: str) -> NoReturn:
    self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class RunOptions(NamedTuple):
  """How to run an experiment, beside its configuration (the flags every CLI has).

  Attributes:
    data: ``"tfds"`` or a local file or folder for :func:`jaxdiff.data.load_dataset`.
    out: the output folder.
    resume: continue from the last checkpoints in ``out``.
    quiet: no progress bars.
    summaries: write TensorBoard summaries and JSON lines under ``out``/summaries.
    process_group: how this process joins a run of several, or None for a run of one.
  """

  data: str
  out: str
  resume: bool
  quiet: bool
  summaries: bool = True
  process_group: ProcessGroup | None = None


def add_run_flags(parser: argparse.ArgumentParser, default_out: str) -> None:
  """``--platform``, ``--data``, ``--out``, ``--resume``, ``--quiet``, ``--no-summaries`` and
  the process flags."""
  parser.add_argument(
    "--platform", choices=PLATFORMS, default=None, help="JAX backend (default: JAX's choice)"
  )
  parser.add_argument(
    "--data",
    default="tfds",
    help="'tfds' (download with TensorFlow Datasets) or a local .npz, image folder or .tar.gz",
  )
  parser.add_argument(
    "--out", default=default_out, help=f"output directory (default {default_out})"
  )
  parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  parser.add_argument("--no-summaries", dest="summaries", action="store_false",
                      help="write no TensorBoard summaries (nor their JSON lines) under --out")  # fmt: skip
  processes = parser.add_argument_group(
    "many processes", "one run over several hosts: jax.distributed.initialize's arguments"
  )
  processes.add_argument("--coordinator-address", metavar="HOST:PORT",
                         help="process 0's address and a free port for the coordinator")  # fmt: skip
  processes.add_argument("--num-processes", type=int, help="how many processes take part")
  processes.add_argument("--process-id", type=int, help="this process's id, 0 to N-1")
  processes.add_argument(
    "--distributed", action="store_true",
    help="let JAX detect the cluster (Cloud TPU, SLURM, Open MPI, GKE) and join it",
  )  # fmt: skip
  processes.add_argument("--initialization-timeout", type=int, default=300, metavar="SECONDS",
                         help="how long to wait for the coordinator and the other processes")  # fmt: skip


def process_group(flags: argparse.Namespace) -> ProcessGroup | None:
  """The :class:`~jaxdiff.distributed.ProcessGroup` the process flags describe, or None without any of them.

  Raises:
    DistributedError: the flags conflict or are out of range.
  """
  explicit = (flags.coordinator_address, flags.num_processes, flags.process_id)
  if not flags.distributed and all(value is None for value in explicit):
    return None
  return ProcessGroup(*explicit, detect=flags.distributed,
                      initialization_timeout=flags.initialization_timeout)  # fmt: skip


def parse(
  config_type: type, argv: Sequence[str] | None, *, description: str, default_out: str
) -> tuple[Any, RunOptions, str | None]:
  """Parses the run flags and ``config_type``'s flags.

  Returns:
    ``(config, run options, platform)``.

  Raises:
    SystemExit: with code 2 and one line on stderr for a bad flag or value.
  """
  preset = None
  if hasattr(config_type, "PRESETS"):
    # The protocol picks the other flags' defaults, so it is read first.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--protocol", default=None)
    named = first.parse_known_args(argv)[0].protocol
    # An unknown name is refused below, in one line, by the protocol field's own check.
    preset = named if named in config_type.PRESETS else None
  parser = ArgumentParser(description=description)
  add_run_flags(parser, default_out)
  config_lib.add_flags(parser, config_type, preset)
  flags = parser.parse_args(argv)
  try:
    config = config_lib.from_flags(config_type, flags, preset)
  except config_lib.ConfigError as error:
    field = next(f for f in dataclasses.fields(config_type) if f.name == error.field)
    parser.error(f"argument {config_lib.flag_name(field)}: {error.message}")
  try:
    group = process_group(flags)
  except DistributedError as error:
    parser.error(str(error))
  options = RunOptions(flags.data, flags.out, flags.resume, flags.quiet, flags.summaries, group)
  return config, options, flags.platform


def use_compilation_cache() -> None:
  """Keeps compiled programs on disk, in ``xla/`` under jaxdiff's cache (``$JAXDIFF_CACHE``).

  JAX's persistent compilation cache: a rerun of an experiment with the same shapes loads its
  programs instead of compiling them again, which is most of a short run's time.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from jaxdiff.data import default_cache_dir  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", str(default_cache_dir() / "xla"))


def main(
  config_type: type,
  run: Callable[..., Any],
  argv: Sequence[str] | None = None,
  *,
  description: str,
  default_out: str,
) -> int:
  """An experiment's whole CLI: flags, platform, compilation cache, then the experiment.

  ``run(config, data_source, out_dir, resume=, quiet=, summaries=)`` is called with the parsed
  configuration and the run flags.

  With the process flags, the process first joins the others (:mod:`jaxdiff.distributed`).
  A user error (bad flag, data, platform, batch split, an ``--out`` that is a file or holds an
  earlier run, a run to load that has no checkpoint or does not fit the flags, an unreachable
  coordinator) becomes one line on stderr and exit code 2; Ctrl-C
  one line that says how to resume, and exit code 130. ``--resume`` on an output folder
  without checkpoints says in one line that it trains from scratch.

  Returns:
    The exit code.
  """
  from jaxdiff.checkpoint import (  # pylint: disable=g-import-not-at-top
    CheckpointsExistError,
    NoCheckpointError,
    RunMismatchError,
  )
  from jaxdiff.data import DataError  # pylint: disable=g-import-not-at-top
  from jaxdiff.distributed import initialize  # pylint: disable=g-import-not-at-top
  from jaxdiff.parallel import BatchShardingError, PlatformError, select_platform  # pylint: disable=g-import-not-at-top

  config, options, platform = parse(
    config_type, argv, description=description, default_out=default_out
  )
  out = Path(options.out)
  if out.exists() and not out.is_dir():
    print(f"error: --out {options.out} is a file, not a folder: name another", file=sys.stderr)
    return EXIT_USAGE
  checkpoints = out / "checkpoints"
  if options.resume and not (checkpoints.is_dir() and any(checkpoints.iterdir())):
    print(f"--resume: {options.out} holds no checkpoints yet; training from scratch",
          file=sys.stderr)  # fmt: skip
  try:
    if options.process_group is not None:
      initialize(options.process_group)  # before select_platform starts the backend
    select_platform(platform)
    use_compilation_cache()
    run(
      config,
      options.data,
      options.out,
      resume=options.resume,
      quiet=options.quiet,
      summaries=options.summaries,
    )
  except (
    DataError,
    PlatformError,
    BatchShardingError,
    CheckpointsExistError,
    NoCheckpointError,
    RunMismatchError,
    DistributedError,
  ) as error:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE
  except KeyboardInterrupt:
    words = sys.argv if argv is None else [sys.argv[0], *argv]
    again = [*words, *([] if "--resume" in words else ["--resume"])]
    print(f"interrupted; the last checkpoint is kept: resume with python {shlex.join(again)}",
          file=sys.stderr)  # fmt: skip
    return EXIT_INTERRUPTED
  return 0
