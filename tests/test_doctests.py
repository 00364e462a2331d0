"""The docstrings' examples run as doctests: one test per jaxdiff module that has examples.

Each docstring's examples run in that module's globals plus ``jax``, ``jnp``, ``np`` and
``optax``, as a user who imported them would type them; nothing else is set up for them. They run
in a temporary working directory, so the files they write (``out/...``) land there.
"""

import doctest
import importlib
import io
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdiff

SHARED = {"jax": jax, "jnp": jnp, "np": np, "optax": optax}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples(module_name):
  module = importlib.import_module(module_name)
  return [test for test in doctest.DocTestFinder().find(module, extraglobs=SHARED) if test.examples]


MODULES = [
  name for _, name, _ in pkgutil.walk_packages(jaxdiff.__path__, "jaxdiff.") if _examples(name)
]


def test_the_modules_with_examples_are_found():
  assert {"jaxdiff.langevin", "jaxdiff.engine", "jaxdiff.ddpm.sampling"} <= set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_the_examples_run(module_name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  runner = doctest.DocTestRunner(optionflags=FLAGS)
  report = io.StringIO()
  for test in _examples(module_name):
    runner.run(test, out=report.write)
  assert runner.failures == 0, report.getvalue()
