"""The description of the machine and software that reports and benchmarks record."""

import json

import jax

from jaxdiff import environment


def test_describe_lists_device_host_and_versions():
  described = environment.describe()
  assert set(described) == {
    "platform",
    "device_kind",
    "device_count",
    "process_count",
    "cpu_model",
    "cpu_cores",
    "usable_cores",
    "versions",
  }
  assert described["platform"] == jax.default_backend() == "cpu"
  assert described["device_count"] == jax.device_count() == 4  # conftest.py's simulated CPUs
  assert described["process_count"] == 1
  assert isinstance(described["cpu_model"], str) and described["cpu_model"]
  assert 1 <= described["usable_cores"] <= described["cpu_cores"]
  versions = described["versions"]
  assert set(versions) == {"python", *environment.LIBRARY_PACKAGES}
  assert versions["jax"] == jax.__version__
  json.dumps(described, allow_nan=False)  # it goes into report.json as it is


def test_describe_adds_asked_versions_and_marks_missing_ones():
  versions = environment.describe(packages=("pytest", "no-such-package-jaxdiff"))["versions"]
  assert versions["pytest"] == __import__("pytest").__version__
  assert versions["no-such-package-jaxdiff"] == environment.MISSING


def test_cpu_info_reads_a_field_exactly_and_none_for_a_missing_one(tmp_path, monkeypatch):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("model\t\t: 167\nmodel name\t: Some CPU\nflags\t\t: avx512f amx_bf16\n")
  real_open = open
  monkeypatch.setattr(
    "builtins.open",
    lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k),
  )
  assert environment.cpu_info("model") == "167"  # not the "model name" line after it
  assert environment.cpu_info("model name") == environment.cpu_model() == "Some CPU"
  assert environment.cpu_info("flags").split() == ["avx512f", "amx_bf16"]
  assert environment.cpu_info("vendor_id") is None
