"""Orbax checkpoints of a training run: the train state, extra arrays and a JSON history.

Each save is atomic (orbax writes a temporary directory and renames it), so a run killed at
any moment leaves the previous complete checkpoint. Saves are asynchronous: the blocking part
is the copy to the host, and orbax writes while training goes on.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointsExistError(FileExistsError):
  """A fresh run would write its checkpoints over an earlier run's."""


class NoCheckpointError(FileNotFoundError):
  """A run to load from holds no checkpoint, or not the record of its configuration."""


class RunMismatchError(ValueError):
  """A run on disk does not fit what was asked of it: another model than the flags describe,
  or a resume that would only replace a finished run's outputs."""


def check_no_checkpoints(directory: str | Path) -> None:
  """Raises :class:`CheckpointsExistError` if ``directory`` holds anything.

  Call before a fresh (not resumed) run: its checkpoints would otherwise collide with an
  earlier run's in the middle of training.
  """
  directory = Path(directory)
  if directory.is_dir() and any(directory.iterdir()):
    raise CheckpointsExistError(
      f"{directory} holds an earlier run's checkpoints: resume that run (--resume), or write "
      "to another output folder"
    )


def async_manager(directory: str | Path, max_to_keep: int) -> ocp.CheckpointManager:
  """An orbax manager of numbered checkpoints in ``directory``: asynchronous saves, the latest
  ``max_to_keep`` kept, the folder created if missing."""
  return ocp.CheckpointManager(
    Path(directory).resolve(),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True
    ),
  )


def restore_target(tree: Any) -> Any:
  """What orbax restores into: the shapes, dtypes and shardings of ``tree``'s arrays."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
  """Numbered orbax checkpoints of a state, extra arrays and a JSON history.

  Saves are asynchronous (module docstring): :meth:`save` returns once the arrays are copied
  to the host; the next save and :meth:`close` wait for the writing to finish.

  Args:
    directory: where the numbered checkpoints go.
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str | Path, max_to_keep: int = 2):
    self._manager = async_manager(directory, max_to_keep)

  def latest_step(self) -> int | None:
    """The number of the latest checkpoint (the training step it was taken at), or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, extras: Any, history: dict) -> None:
    """Saves ``state`` and ``extras`` arrays and the JSON ``history`` as checkpoint ``step``.

    Returns before the files are written (the class docstring); ``state`` may then be
    donated, and ``history`` changed (it is copied), but ``extras`` must not be changed in
    place.
    """
    self._manager.save(
      step,
      args=ocp.args.Composite(
        arrays=ocp.args.StandardSave({"state": state, "extras": extras}),
        history=ocp.args.JsonSave(copy.deepcopy(history)),
      ),
      force=True,
    )

  def restore(self, step: int, state: Any, extras: Any) -> tuple[Any, Any, dict]:
    """Restores ``step`` into the shapes, dtypes and shardings of ``state`` and ``extras``."""
    target = restore_target({"state": state, "extras": extras})
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()
      ),
    )
    return restored.arrays["state"], restored.arrays["extras"], restored.history

  def close(self) -> None:
    """Waits for the last save to be written, then releases orbax's threads."""
    self._manager.close()
