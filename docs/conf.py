"""Sphinx configuration of jaxdiff's API reference: autodoc reads the docstrings, napoleon their
Google style, MyST the README. Built with warnings as errors (``-W``) in CI, nitpicky, so that a
reference to a jaxdiff name that does not resolve, or a docstring that does not render, fails.

  python -m sphinx -W -b html docs docs/_build/html
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "jaxdiff"
copyright = "the jaxdiff authors, Apache-2.0"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "alabaster"

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_attr_annotations = True
# Attributes sections as fields of their class: NamedTuple fields are documented once.
napoleon_use_ivar = True

# Every reference must resolve: jaxdiff's own names are checked; the libraries it builds on are
# not documented here (no network for their inventories), so their names are not.
nitpicky = True
nitpick_ignore_regex = [
  (
    r"py:.*",
    r"(jax|jnp|optax|flax|nn|np|numpy|chex|orbax|ocp|tfds|argparse|collections|typing"
    r"|pathlib|os|concurrent|types|PIL|tensorboard)(\..*)?",
  ),
  (
    r"py:.*",
    r"(Any|Callable|Sequence|Mapping|Iterable|Iterator|NamedTuple|TypedDict|NoReturn"
    r"|Path|Collection|ClassVar|Optional|Union|Literal)",
  ),
  (r"py:class", r"(int|float|str|bool|dict|list|tuple|type|object|None|bytes|slice|string)"),
  # Type aliases of the libraries above, as annotations spell them.
  (r"py:class", r"(ArrayTree|Params|jaxlib\..*|dataclasses\..*)"),
]
# The README is the getting-started page; its links into the repository are not pages here.
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]
