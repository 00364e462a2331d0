"""Results do not change: a quick CIFAR comparison and a tiny DDPM run against a reference.

``tests/data/behaviour_reference.json`` holds what :mod:`behaviour_pin` computed when it was
written (``tests/make_behaviour_reference.py``, its ``made_on`` says where). Strings, integers
and the run's structure must be equal; floats must agree to :data:`RELATIVE_TOLERANCE`, not bit
for bit, because XLA:CPU's float32 programs differ between CPUs and kernels in their reduction
order (the same code gave an AMD EPYC and an Intel Xeon scores that differ in the seventh
significant digit). Those rounding differences are what the tolerance allows; a change of what
is computed (a default, a key derivation, a loss) moves these numbers by far more.
"""

import json
import math
from pathlib import Path

import behaviour_pin
import pytest

REFERENCE = Path(__file__).parent / "data" / "behaviour_reference.json"

# float32 rounds to 2^-24 ≈ 6e-8 of a value; summing n terms in another order moves a sum by up
# to about n·2^-24 of the sum of their magnitudes, and training carries such differences on.
# Measured on an AMD EPYC (2026-12-04) against the redesign's references from another AMD EPYC
# and an Intel Xeon (AVX-512, AMX): at most 9.6e-7 of a value, 5.4e-7 of a leaf's sum of
# magnitudes. 1e-4 leaves those a margin of 100, while a 1 % change of the learning rate moves
# the Langevin run's ECE by 2.8e-3.
RELATIVE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
  return json.loads(REFERENCE.read_text())


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXDIFF_CACHE", str(tmp_path / "cache"))


def assert_matches(actual, expected, path="") -> None:
  """Equal structure, strings, integers and None; floats within the relative tolerance."""
  if isinstance(expected, dict):
    assert isinstance(actual, dict) and actual.keys() == expected.keys(), path
    for key in expected:
      assert_matches(actual[key], expected[key], f"{path}/{key}")
  elif isinstance(expected, list):
    assert isinstance(actual, list) and len(actual) == len(expected), path
    for index, (a, e) in enumerate(zip(actual, expected)):
      assert_matches(a, e, f"{path}[{index}]")
  elif isinstance(expected, float):
    assert isinstance(actual, int | float), path
    assert math.isclose(actual, expected, rel_tol=RELATIVE_TOLERANCE), (path, actual, expected)
  else:
    assert actual == expected, (path, actual, expected)


def test_cifar_comparison_records_are_unchanged(tmp_path, reference):
  assert_matches(json.loads(json.dumps(behaviour_pin.cifar_outputs(tmp_path))), reference["cifar"])


def test_ddpm_losses_parameters_bound_and_scores_are_unchanged(tmp_path, reference):
  actual = json.loads(json.dumps(behaviour_pin.ddpm_outputs(tmp_path)))
  expected = reference["ddpm"]
  # A leaf's sum can cancel to near zero (a bias of tiny values), where a relative tolerance of
  # the sum means nothing: it is compared relative to the sum of the leaf's magnitudes.
  assert_matches(actual["ema_leaf_magnitudes"], expected["ema_leaf_magnitudes"], "magnitudes")
  for leaf, (got, want, size) in enumerate(
    zip(actual.pop("ema_leaf_sums"), expected["ema_leaf_sums"], expected["ema_leaf_magnitudes"])
  ):
    assert abs(got - want) <= RELATIVE_TOLERANCE * size, (leaf, got, want, size)
  assert_matches(actual, {k: v for k, v in expected.items() if k != "ema_leaf_sums"})


def test_the_comparison_catches_what_it_should():
  assert_matches({"a": [1.0, "x", None, 3]}, {"a": [1.0 + 1e-6, "x", None, 3]})
  for actual in ({"a": [1.001, "x", None, 3]}, {"a": [1.0, "y", None, 3]}, {"a": [1.0, "x"]},
                 {"a": [1.0, "x", None, 4]}, {"b": [1.0, "x", None, 3]}):  # fmt: skip
    with pytest.raises(AssertionError):
      assert_matches(actual, {"a": [1.0, "x", None, 3]})
