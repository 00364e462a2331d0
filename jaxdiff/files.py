"""Atomic writers for every file jaxdiff produces: JSON, text (Markdown), PNG figures, ``.npz``.

Each writer goes through :func:`atomic_write`: the bytes go to a temporary file in the
destination's folder, are flushed and fsync'ed, and the temporary file is then renamed over
the destination with ``os.replace``. A reader, or a crash, therefore sees the old file or the
new one, never half of one, and a write that fails leaves the old file as it was and no
temporary file behind.

In a run of several processes (:mod:`jaxdiff.distributed`) only process 0 writes: every
process computes the same content, and one writer keeps timings of another process out of
reports and spares a shared file system concurrent writes.

Matplotlib is imported lazily, with the Agg backend, by :func:`pyplot`, so importing this
module does not pull it in.

Example:
  >>> write_json("out/report.json", {"accuracy": np.float32(0.5)})  # folders made as needed
  >>> from pathlib import Path
  >>> print(Path("out/report.json").read_text(), end="")
  {
    "accuracy": 0.5
  }
  >>> write_npz("cache/tree.npz", x_train=np.zeros((4, 2, 2, 1), np.uint8), y_train=np.arange(4))
  >>> sorted(np.load("cache/tree.npz"))
  ['x_train', 'y_train']
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from jaxdiff.distributed import is_main_process


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str) -> None:
  """Writes ``path`` atomically: ``write(handle)`` fills a temporary file that replaces it.

  The parent folder is created if missing. The file ends up with mode ``0o644`` (``mkstemp``
  creates ``0o600``, which would hide reports from other users of a shared machine).

  Args:
    path: the destination.
    write: called once with the open temporary file; it writes the whole content.
    mode: ``"w"`` for text or ``"wb"`` for bytes, as for ``open``.

  Raises:
    Exception: whatever ``write`` raises; the destination is then untouched and the temporary file gone.
  """
  if not is_main_process():
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as handle:
      write(handle)
      handle.flush()
      os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    # Same folder, same file system: the rename is atomic.
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def _json_default(value: Any) -> Any:
  if isinstance(value, np.generic | np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes ``obj`` as indented JSON, atomically.

  Numpy scalars and arrays are written as numbers and lists.

  Raises:
    ValueError: ``obj`` holds NaN or ±inf, which strict JSON cannot express (pass None).
    TypeError: ``obj`` holds something else JSON cannot express.
  """

  def dump(handle: IO) -> None:
    json.dump(obj, handle, indent=2, allow_nan=False, default=_json_default)
    handle.write("\n")

  atomic_write(path, dump, "w")


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` (plain text or Markdown) to ``path`` atomically."""
  atomic_write(path, lambda handle: handle.write(text), "w")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
  """Writes ``arrays`` as an uncompressed ``.npz`` (as ``np.savez``), atomically.

  Unlike ``np.savez`` given a name, nothing is appended to ``path``: the file is written
  under exactly that name.
  """
  atomic_write(path, lambda handle: np.savez(handle, **arrays), "wb")


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def save_figure(fig, path: str | os.PathLike) -> None:
  """Writes the matplotlib figure ``fig`` as a PNG atomically, then closes it (even on error)."""
  try:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=120), "wb")
  finally:
    pyplot().close(fig)
