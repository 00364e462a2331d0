"""What every experiment CLI shares: flags, platform selection, one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from jaxdiff.parallel import PLATFORMS

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
  """argparse, but a bad flag prints one line (no usage block) and exits with 2."""

  def error(self, message: str) -> NoReturn:
    self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_common_flags(parser: argparse.ArgumentParser, default_out: str) -> None:
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


def use_compilation_cache() -> None:
  """Keeps compiled programs on disk, in ``xla/`` under jaxdiff's cache (``$JAXDIFF_CACHE``).

  JAX's persistent compilation cache: a rerun of an experiment with the same shapes loads its
  programs instead of compiling them again, which is most of a short run's time.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from jaxdiff.data import default_cache_dir  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", str(default_cache_dir() / "xla"))


def positive_int(text: str) -> int:
  value = int(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def positive_float(text: str) -> float:
  value = float(text)
  if not value > 0 or value == float("inf"):
    raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
  return value


def float_list(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(item) for item in text.split(",") if item.strip())
  except ValueError as error:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error


def run_main(
  main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None
) -> int:
  """Runs ``main``; a user error becomes one line on stderr and exit code 2."""
  from jaxdiff.data import DataError  # pylint: disable=g-import-not-at-top
  from jaxdiff.parallel import BatchShardingError, PlatformError  # pylint: disable=g-import-not-at-top
  from jaxdiff.train import CheckpointsExistError  # pylint: disable=g-import-not-at-top

  try:
    main(argv)
  except (DataError, PlatformError, BatchShardingError, CheckpointsExistError) as error:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE
  return 0
