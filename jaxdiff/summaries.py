"""Live metrics: TensorBoard summaries of a group of runs, and the same scalars as JSON lines.

A :class:`Summaries` writes one TensorBoard run (a sub-directory) per run of a group, so that
``tensorboard --logdir <out>/summaries`` compares optimizers, methods and seeds side by side
while they train, and appends every scalar to ``scalars.jsonl`` in the same sub-directory for
readers without TensorBoard. :func:`jaxdiff.loop.fit` writes the training metrics through it
(``Reporter(summaries=...)``); experiments add their scores and images. Only process 0 writes.

The event files are written with TensorBoard's own writer (``tensorboard.summary.writer``),
which works without TensorFlow (and goes through TensorFlow's file API where TensorFlow is
installed, as it is beside TFDS). A resumed run appends to the same series:
it first marks, in every run's events, that the steps after the checkpoint it resumed from are
written again (TensorBoard's session-start purge), and drops them from ``scalars.jsonl``.

Example:
  >>> summaries = Summaries("out/summaries", ["sgd seed 0", "sgd seed 1"])
  >>> summaries.scalars(100, {"test/error": [0.031, 0.029]})
  >>> summaries.close()
  >>> series = read_scalars(summaries.directories[1])  # the second run's, as TensorBoard reads it
  >>> [(step, round(value, 3)) for step, value in series["test/error"]]
  [(100, 0.029)]
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from jaxdiff.distributed import is_main_process

SCALARS_FILE = "scalars.jsonl"


def run_directory_name(name: str) -> str:
  """A run's name as a directory: letters, digits, ``.``, ``-`` and ``_``; others become ``_``."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


class Summaries:
  """Event files and a JSON-lines file of scalars per run, under ``root``.

  Args:
    root: the summaries' directory (``--out``/summaries by default in the experiments).
    run_names: one name per run; each gets the sub-directory :func:`run_directory_name` of it.
  """

  def __init__(self, root: str | Path, run_names: Sequence[str]):
    self._names = [run_directory_name(name) for name in run_names]
    if len(set(self._names)) != len(self._names):
      raise ValueError(f"run names must be distinct as directories: {self._names}")
    self._active = is_main_process()
    self._root = Path(root)
    self._writers: list[EventFileWriter] = []
    if self._active:
      for name in self._names:
        (self._root / name).mkdir(parents=True, exist_ok=True)
        self._writers.append(EventFileWriter(str(self._root / name)))

  @property
  def directories(self) -> list[Path]:
    """Each run's directory."""
    return [self._root / name for name in self._names]

  def resume_from(self, step: int) -> None:
    """Continues the series after ``step``: what an interrupted run wrote beyond it is dropped."""
    if not self._active:
      return
    for writer, directory in zip(self._writers, self.directories):
      # TensorBoard drops what earlier files hold from a session start's step on.
      start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
      writer.add_event(event_pb2.Event(wall_time=time.time(), step=step + 1, session_log=start))
      path = directory / SCALARS_FILE
      if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= step]  # fmt: skip
        partial = path.with_suffix(".jsonl.partial")
        partial.write_text("".join(line + "\n" for line in kept))
        partial.replace(path)

  def scalars(self, step: int, values: Mapping[str, Sequence[float] | float],
              runs: Sequence[int] | None = None) -> None:  # fmt: skip
    """Writes each tag's value at ``step``: one value per run (or per run of ``runs``), or one
    number for all of them. Values that are not finite are left out."""
    if not self._active:
      return
    runs = list(range(len(self._names))) if runs is None else list(runs)
    wall_time = time.time()
    for position, run in enumerate(runs):
      row = {}
      for tag, value in values.items():
        number = float(value if np.ndim(value) == 0 else np.asarray(value)[position])
        if np.isfinite(number):
          row[tag] = number
      if not row:
        continue
      summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=number) for tag, number in row.items()]
      )  # fmt: skip
      self._writers[run].add_event(event_pb2.Event(wall_time=wall_time, step=step, summary=summary))
      with open(self.directories[run] / SCALARS_FILE, "a") as lines:
        lines.write(json.dumps({"step": step, "wall_time": wall_time, **row}) + "\n")

  def image(self, step: int, tag: str, image: np.ndarray, run: int = 0) -> None:
    """Writes a uint8 image ``(height, width)`` or ``(height, width, channels)`` as PNG."""
    if not self._active:
      return
    array = np.asarray(image, np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    encoded = io.BytesIO()
    Image.fromarray(array).save(encoded, format="PNG")
    colours = 1 if array.ndim == 2 else array.shape[-1]
    picture = summary_pb2.Summary.Image(height=array.shape[0], width=array.shape[1],
                                        colorspace=colours, encoded_image_string=encoded.getvalue())  # fmt: skip
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=picture)])
    self._writers[run].add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    """Writes what is queued and closes the event files."""
    for writer in self._writers:
      writer.close()
    self._writers = []
    self._active = False


def read_scalars(directory: str | Path) -> dict[str, list[tuple[int, float]]]:
  """Every scalar series of one run's event files, tag → ``[(step, value), ...]``, honouring the
  session-start purges of resumed runs (as TensorBoard shows them)."""
  from tensorboard.backend.event_processing import event_accumulator  # only readers need it

  accumulator = event_accumulator.EventAccumulator(str(directory), purge_orphaned_data=True)
  accumulator.Reload()
  return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}  # fmt: skip
