"""Atomic writers: the content, no temporary file left, the old file kept when a write fails."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxdiff import files


def _only(folder):
  # Every entry, hidden temporary files included.
  return sorted(path.name for path in folder.iterdir())


def test_importing_files_does_not_import_matplotlib():
  # A fresh interpreter: this one may already have matplotlib from another test.
  code = "import sys, jaxdiff.files; print('matplotlib' in sys.modules)"
  result = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
  )
  assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_write_json_content_and_numpy_values(tmp_path):
  path = tmp_path / "nested" / "report.json"
  files.write_json(path, {"a": np.float32(0.5), "b": np.arange(3), "c": None})
  assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": None}
  assert path.read_text().endswith("\n")
  assert _only(path.parent) == ["report.json"]
  assert path.stat().st_mode & 0o777 == 0o644  # readable by others, unlike mkstemp's 0o600


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.float64("-inf")])
def test_write_json_refuses_nan_and_keeps_the_old_file(tmp_path, bad):
  path = tmp_path / "report.json"
  files.write_json(path, {"accuracy": 0.9})
  with pytest.raises(ValueError):
    files.write_json(path, {"accuracy": bad})
  assert json.loads(path.read_text()) == {"accuracy": 0.9}
  assert _only(tmp_path) == ["report.json"]


def test_write_json_refuses_what_json_cannot_hold(tmp_path):
  with pytest.raises(TypeError, match="not JSON serialisable: object"):
    files.write_json(tmp_path / "report.json", {"value": object()})
  assert _only(tmp_path) == []


def test_write_text_replaces_the_old_content(tmp_path):
  path = tmp_path / "report.md"
  files.write_text(path, "# old\n")
  files.write_text(path, "# new ✓\n")
  assert path.read_text() == "# new ✓\n"
  assert _only(tmp_path) == ["report.md"]


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "data.bin"
  files.atomic_write(path, lambda handle: handle.write(b"old"), "wb")

  def half_then_fail(handle):
    handle.write(b"half of the new")
    raise RuntimeError("disk on fire")

  with pytest.raises(RuntimeError, match="disk on fire"):
    files.atomic_write(path, half_then_fail, "wb")
  assert path.read_bytes() == b"old"
  assert _only(tmp_path) == ["data.bin"]


def test_an_interrupted_first_write_leaves_nothing(tmp_path):
  def interrupted(handle):
    handle.write("partial")
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    files.atomic_write(tmp_path / "new.txt", interrupted, "w")
  assert _only(tmp_path) == []


def test_write_npz_round_trips_under_the_exact_name(tmp_path):
  path = tmp_path / "cache" / "tree-0123"  # no .npz suffix: np.savez would append one
  images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  files.write_npz(path, x_train=images, class_names=np.asarray(["cat", "dog"]), lossy=True)
  with np.load(path, allow_pickle=False) as arrays:
    np.testing.assert_array_equal(arrays["x_train"], images)
    assert tuple(arrays["class_names"]) == ("cat", "dog")
    assert bool(arrays["lossy"])
  assert _only(path.parent) == ["tree-0123"]


class _Unsaveable:
  """Fails when ``np.savez`` turns it into an array, after earlier arrays are written."""

  def __array__(self, dtype=None, copy=None):
    raise RuntimeError("cannot become an array")


def test_write_npz_failure_keeps_the_old_file(tmp_path):
  path = tmp_path / "arrays.npz"
  files.write_npz(path, x=np.zeros(3))
  with pytest.raises(RuntimeError, match="cannot become an array"):
    files.write_npz(path, x=np.ones(3), bad=_Unsaveable())
  with np.load(path) as arrays:
    assert arrays.files == ["x"]
    np.testing.assert_array_equal(arrays["x"], np.zeros(3))
  assert _only(tmp_path) == ["arrays.npz"]


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
  plt = files.pyplot()
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  path = tmp_path / "plots" / "curve.png"
  files.save_figure(fig, path)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not plt.fignum_exists(fig.number)
  assert _only(path.parent) == ["curve.png"]
