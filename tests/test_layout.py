"""Where code lives and what its text says: the library never imports an experiment, nothing
imports the benchmarks, and no docstring or comment of jaxdiff quotes a measured figure."""

import ast
import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest

from jaxdiff import parallel
from jaxdiff.policy import ExecutionPolicy

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxdiff"
BENCHMARKS = ROOT / "benchmarks"
LIBRARY_MODULES = [
  path for path in PACKAGE.rglob("*.py") if "experiments" not in path.relative_to(PACKAGE).parts
]
# A measured figure, which belongs in benchmarks/RESULTS.md, not in the source: a time or a
# throughput; a speed ratio; the version a figure was measured with; a count a run observed
# (N of M seeds or runs; steps, epochs or seeds after a verb saying what happened); an accuracy
# or confident share. Definitions and shapes are not figures: "T = 1000 steps", "batch 100",
# "a 2x2 pool", "3 seeds" (a default), "the first 1000 steps" (a contract).
_COUNTED = r"(?:seeds?|runs?|rows?|chains?|trials?|invocations?)"
_OBSERVED = r"(?:diverged|converged|failed|collapsed|reached|trained|took|needed|ran|lasted)"
MEASUREMENT = re.compile("|".join([
  r"\d\s*(?:ms|µs|us|ns|s|seconds?|min)\b|images/s|steps/s",  # a time or throughput
  r"\d(?:\.\d+)?\s?[x×](?!\w)",  # a ratio
  r"\bjax 0\.\d",  # a version
  rf"\b\d+ (?:out )?of (?:the |its )?\d[\d ]*(?:\w+ ){{0,2}}?{_COUNTED}\b",  # 2 of 3 seeds
  rf"\b{_OBSERVED}\b\W+(?:\w+\W+){{0,4}}?\d[\d ,.]*\s?(?:steps?|epochs?|iterations?|{_COUNTED})\b",
  r"\d(?:\.\d+)?\s?%\s(?:accura\w*|confident|too hot|too cold)",  # an accuracy or share
  r"\baccuracy (?:of )?\d+(?:\.\d+)?\s?%",
]))  # fmt: skip


def _imports(path: Path) -> set[str]:
  """Every module ``path`` imports, at any depth (a lazy import inside a function too);
  ``from package import name`` counts as ``package`` and ``package.name``."""
  tree = ast.parse(path.read_text())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names |= {f"{node.module}.{alias.name}" for alias in node.names}
    elif isinstance(node, ast.ImportFrom):  # a relative "from . import name"
      names |= {alias.name for alias in node.names}
  return names


def _docstrings(path: Path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
      docstring = ast.get_docstring(node)
      if docstring:
        yield f"the docstring of {getattr(node, 'name', path.name)}", docstring


def _comments(path: Path):
  """Each run of consecutive comment lines, joined, so that a figure split over lines is seen."""
  tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
  runs, last_line = [], None
  for token in tokens:
    if token.type != tokenize.COMMENT:
      continue
    text = token.string.lstrip("#").strip()
    if runs and last_line == token.start[0] - 1:
      runs[-1] = (runs[-1][0], f"{runs[-1][1]} {text}")
    else:
      runs.append((f"the comment at line {token.start[0]}", text))
    last_line = token.start[0]
  yield from runs


def test_the_library_never_imports_an_experiment():
  assert len(LIBRARY_MODULES) > 10
  for path in LIBRARY_MODULES:
    assert not any(name.startswith("jaxdiff.experiments") for name in _imports(path)), path


def test_nothing_imports_the_benchmarks():
  importers = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"),
               *(ROOT / "experiments").glob("*.py")]  # fmt: skip
  assert len(importers) > 30
  for path in importers:
    assert not any(name.partition(".")[0] == "benchmarks" for name in _imports(path)), path


def _benchmark_modules() -> dict[str, Path]:
  return {path.stem: path for path in sorted(BENCHMARKS.glob("*.py")) if path.stem != "__init__"}


def test_the_benchmarks_import_each_other_through_the_package_and_without_a_cycle():
  modules = _benchmark_modules()
  assert {"common", "twins", "cnn_throughput"} <= set(modules)
  uses = {}
  for name, path in modules.items():
    imported = _imports(path)
    # A bare "import common" works only with the script's folder on sys.path.
    assert not imported & set(modules), f"{name}: {imported & set(modules)} not as benchmarks.*"
    uses[name] = {other for other in modules if f"benchmarks.{other}" in imported} - {name}
  assert "twins" in uses["common"] and "common" in uses["cnn_throughput"]  # the graph is seen

  def visit(name, path):
    assert name not in path, f"import cycle: {' -> '.join([*path, name])}"
    for other in uses[name]:
      visit(other, [*path, name])

  for name in modules:
    visit(name, [])


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.py")), ids=lambda path: path.name)
def test_the_benchmarks_use_no_private_name_of_jaxdiff(path):
  tree = ast.parse(path.read_text())
  bound = set()  # names that the module binds to jaxdiff modules or objects
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").partition(".")[0] == "jaxdiff":
      for alias in node.names:
        assert not alias.name.startswith("_"), f"from {node.module} import {alias.name}"
        bound.add(alias.asname or alias.name)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.partition(".")[0] == "jaxdiff":
          assert not any(part.startswith("_") for part in alias.name.split(".")), alias.name
          bound.add(alias.asname or alias.name.partition(".")[0])
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
      private = node.value.id in bound and node.attr.startswith("_")
      assert not private, f"line {node.lineno}: {node.value.id}.{node.attr}"


RESULTS = BENCHMARKS / "RESULTS.md"
# How the repository cites a heading of RESULTS.md (`RESULTS.md, "Heading"`), and how the page
# cites its own (`see "Heading"`).
CITATION = re.compile(r'RESULTS\.md`*,\s*"([^"]+)"')
SELF_CITATION = re.compile(r'\bsee "([^"]+)"')


def _joined(path: Path) -> str:
  """The file's text with its lines joined, comment markers dropped, so that a citation broken
  over lines reads as one."""
  return re.sub(r"\s*\n\s*(?:#+\s*)?", " ", path.read_text())


def test_every_cited_heading_of_the_results_page_exists():
  headings = {line.lstrip("#").strip() for line in RESULTS.read_text().splitlines()
              if line.startswith("#")}  # fmt: skip
  citing = [*PACKAGE.rglob("*.py"), *BENCHMARKS.glob("*.py"), *BENCHMARKS.glob("*.sh"),
            *(ROOT / "tests").glob("*.py"), *(ROOT / "experiments").rglob("*.py"),
            *(ROOT / "experiments").rglob("*.md"), ROOT / "README.md"]  # fmt: skip
  citing.remove(Path(__file__).resolve())  # whose comments show the form
  cited = [(path, heading) for path in citing for heading in CITATION.findall(_joined(path))]
  cited += [(RESULTS, heading) for heading in SELF_CITATION.findall(_joined(RESULTS))]
  assert len(cited) > 10
  for path, heading in cited:
    assert heading in headings, f"{path.relative_to(ROOT)} cites {heading!r}, not a heading"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda path: str(path.relative_to(PACKAGE)))  # fmt: skip
def test_no_docstring_or_comment_quotes_a_measured_figure(path):
  for where, text in [*_docstrings(path), *_comments(path)]:
    found = MEASUREMENT.search(text)
    assert not found, f"{where}: {found.group(0)!r} (move it to benchmarks/RESULTS.md)"


def test_the_measurement_pattern_catches_what_it_should():
  measured = (
    "327 against 433 ms", "20 649 images/s", "at 122 images/s", "jax 0.10.2", "1.4x as fast",
    "37 s", "1.25× SGD's", "3.6x its training steps", "diverged within 150 steps of the freeze",
    "2 of 3 seeds at the picked rate", "10 of 11 sampler rows", "trained 10 156 steps",
    "every rate from 0.01 up diverged within 150 steps", "90.6 % confident",
    "an accuracy of 61.6 %",
  )  # fmt: skip
  for text in measured:
    assert MEASUREMENT.search(text), text
  definitions = (
    "T = 1000 steps", "a 2x2 pool", "28x28 images", "3x3 convolutions", "batch 100",
    "3 seeds per method", "the first 1000 steps", "cycles of 25 steps", "100 epochs, the learning "
    "rate halved every 20", "the mean of the last 100 steps", "at most 10 % slower per step",
    "DDIM 100 steps with 2 Langevin corrector steps", "62 006 parameters", "16 float32 lanes",
    "trains for 100 epochs", "with probability at least 0.9", '{"accuracy": 0.91}',
  )  # fmt: skip
  for text in definitions:
    assert not MEASUREMENT.search(text), text


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
