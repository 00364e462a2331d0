"""Test set-up: four simulated CPU devices, fixed before JAX starts."""

import os

# Must run before the first `import jax` anywhere in the test session.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
