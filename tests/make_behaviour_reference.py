"""Writes tests/data/behaviour_reference.json: the behaviour pin's outputs from the current code.

Rerun it only for a change that is meant to change results (a new default, another key
derivation), and say so in the commit; a refactoring must pass the pin unchanged. It runs with
the test suite's four simulated CPU devices:

  python tests/make_behaviour_reference.py
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, str(Path(__file__).parent))

import behaviour_pin  # noqa: E402

from jaxdiff import environment  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "behaviour_reference.json"


def main() -> None:
  with tempfile.TemporaryDirectory() as tmp:
    reference = {
      "made_on": {**environment.describe(), "git_describe": _git_describe()},
      "cifar": behaviour_pin.cifar_outputs(Path(tmp) / "cifar"),
      "ddpm": behaviour_pin.ddpm_outputs(Path(tmp) / "ddpm"),
    }
  partial = REFERENCE.with_suffix(".json.partial")
  partial.write_text(json.dumps(reference, indent=1) + "\n")
  partial.replace(REFERENCE)
  print("wrote", REFERENCE)


def _git_describe() -> str:
  result = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                          text=True, cwd=Path(__file__).parent)  # fmt: skip
  return result.stdout.strip() or "unknown"


if __name__ == "__main__":
  main()
