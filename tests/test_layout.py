"""Where code lives: the library never imports an experiment, and its docstrings quote no timing."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from jaxdiff import parallel
from jaxdiff.policy import ExecutionPolicy

PACKAGE = Path(__file__).resolve().parents[1] / "jaxdiff"
LIBRARY_MODULES = [
  path for path in PACKAGE.rglob("*.py") if "experiments" not in path.relative_to(PACKAGE).parts
]
# A number with a unit of time or throughput, or a version a figure was measured with.
TIMING = re.compile(
  r"\d\s*(ms|µs|us|ns|s|seconds?|min)\b|images/s|steps/s|\bjax 0\.\d|\d(\.\d+)?\s?[x×](?!\w)"
)


def _imports(path: Path) -> set[str]:
  tree = ast.parse(path.read_text())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
  return names


def _docstrings(path: Path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
      docstring = ast.get_docstring(node)
      if docstring:
        yield getattr(node, "name", path.name), docstring


def test_the_library_never_imports_an_experiment():
  assert len(LIBRARY_MODULES) > 10
  for path in LIBRARY_MODULES:
    assert not any(name.startswith("jaxdiff.experiments") for name in _imports(path)), path


@pytest.mark.parametrize("path", LIBRARY_MODULES + sorted((PACKAGE / "experiments").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))  # fmt: skip
def test_no_docstring_quotes_a_timing(path):
  for name, docstring in _docstrings(path):
    assert not TIMING.search(docstring), f"{name}: {TIMING.search(docstring).group(0)!r}"


def test_the_timing_pattern_catches_what_it_should():
  for text in ("327 against 433 ms", "20 649 images/s", "jax 0.10.2", "1.4x as fast", "37 s",
               "1.25× SGD's"):  # fmt: skip
    assert TIMING.search(text), text
  for text in ("T = 1000 steps", "a 2x2 pool", "28x28 images", "3x3 convolutions"):
    assert not TIMING.search(text), text


class _FakeDevice:
  def __init__(self, platform):
    self.platform = platform


class _FakeMesh:
  def __init__(self, platform):
    self.devices = np.array([_FakeDevice(platform)], dtype=object)


def test_the_execution_policy_per_platform_and_workload():
  mesh = parallel.make_mesh()
  cnn = ExecutionPolicy.for_mesh(mesh, convolution="auto", cpu_flags=())
  assert (cnn.platform, cnn.runs_per_call) == ("cpu", 1)
  assert (cnn.convolution, cnn.loop) == ("banded", "scan")  # banded: no convolution to step
  unet = ExecutionPolicy.for_mesh(mesh, cpu_flags=())  # lax convolutions: stepped from Python
  assert (unet.convolution, unet.loop, unet.runs_per_call) == ("lax", "step", 1)
  mlp = ExecutionPolicy.for_mesh(mesh, convolution="none", cpu_flags=())
  assert (mlp.convolution, mlp.loop) == ("none", "scan")
  assert mlp.compiler_options == unet.compiler_options == cnn.compiler_options != {}
  assert not any(policy.vmap_single_run for policy in (cnn, unet, mlp))
  gpu = ExecutionPolicy.for_mesh(_FakeMesh("gpu"), convolution="auto")
  assert (gpu.runs_per_call, gpu.convolution, gpu.loop) == (0, "banded_rows", "scan")
  assert ExecutionPolicy.for_mesh(_FakeMesh("gpu")).loop == "scan"  # lax convolutions too
  tpu = ExecutionPolicy.for_mesh(_FakeMesh("tpu"), convolution="auto")
  assert (tpu.convolution, tpu.loop) == ("lax", "scan")
  assert dict(gpu.compiler_options) == dict(tpu.compiler_options) == {}
  forced = ExecutionPolicy.for_mesh(mesh, convolution="auto", loop="step", runs_per_call=0,
                                    scan_unroll=2, cpu_flags=())  # fmt: skip
  assert (forced.loop, forced.runs_per_call, forced.scan_unroll) == ("step", 0, 2)
  assert (forced.convolution, forced.compiler_options) == ("banded", cnn.compiler_options)
  with pytest.raises(TypeError):
    cnn.compiler_options["extra"] = "1"  # shared by trainers: read-only


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"loop": "while"}, "loop"),
    ({"loop": "auto"}, "loop"),  # decided by for_mesh, not left to the engine
    ({"runs_per_call": -1}, "runs_per_call"),
    ({"scan_unroll": 0}, "scan_unroll"),
    ({"convolution": "fft"}, "convolution"),
  ],
)
def test_bad_policies_are_refused(fields, message):
  with pytest.raises(ValueError, match=message):
    ExecutionPolicy(platform="cpu", **fields)


@pytest.mark.parametrize("options, message", [({"loop": "while"}, "loop"),
                                              ({"convolution": "fft"}, "convolution")])  # fmt: skip
def test_for_mesh_refuses_an_unknown_loop_or_workload(options, message):
  with pytest.raises(ValueError, match=f"{message} must be one of"):
    ExecutionPolicy.for_mesh(parallel.make_mesh(), **options)
