"""Mesh and sharding helpers on four simulated CPU devices (see conftest.py)."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxdiff import parallel


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 4, "conftest.py should simulate four CPU devices"
  return parallel.make_mesh()


def test_mesh_is_one_dimensional_over_all_devices(mesh):
  assert mesh.axis_names == (parallel.DATA_AXIS,)
  assert mesh.size == 4


def test_shard_batch_splits_the_leading_axis(mesh):
  batch = {"x": np.arange(8 * 3).reshape(8, 3), "y": np.arange(8)}
  sharded = parallel.shard_batch(batch, mesh)
  for shard in sharded["x"].addressable_shards:
    start = shard.index[0].start
    np.testing.assert_array_equal(shard.data, batch["x"][start : start + 2])
  assert sorted(s.index[0].start for s in sharded["y"].addressable_shards) == [0, 2, 4, 6]


def test_replicate_puts_a_whole_copy_on_each_device(mesh):
  state = {"w": np.arange(6.0).reshape(2, 3), "step": np.int32(3)}
  replicated = parallel.replicate(state, mesh)
  shards = replicated["w"].addressable_shards
  assert len({s.device for s in shards}) == 4
  for shard in shards:
    np.testing.assert_array_equal(shard.data, state["w"])


def test_indivisible_batch_is_an_error(mesh):
  with pytest.raises(parallel.BatchShardingError, match="not divisible by the 4 devices"):
    parallel.shard_batch(np.zeros((6, 2)), mesh)
  with pytest.raises(parallel.BatchShardingError):
    parallel.check_divisible(10, mesh)


def test_mean_value_and_grad_equals_the_full_batch_gradient(mesh):
  def loss(w, x):
    return jnp.mean((x @ w) ** 2)

  step = jax.jit(
    jax.shard_map(
      parallel.mean_value_and_grad(loss),
      mesh=mesh,
      in_specs=(P(), P(parallel.DATA_AXIS)),
      out_specs=P(),
    )
  )
  w = jnp.arange(3.0)
  x = jax.random.normal(jax.random.key(0), (8, 3))
  value, grad = step(parallel.replicate(w, mesh), parallel.shard_batch(x, mesh))
  expected_value, expected_grad = jax.value_and_grad(loss)(w, x)
  # Summed instead of averaged, the gradient would be 4x too large.
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5)
  np.testing.assert_allclose(value, expected_value, rtol=1e-5)


@pytest.mark.parametrize(
  "platform,message", [("tpu", "not available here"), ("quantum", "unknown platform")]
)
def test_select_platform_errors(platform, message):
  # A fresh interpreter: selecting a platform must happen before JAX starts.
  code = (
    "from jaxdiff.parallel import select_platform, PlatformError\n"
    f"try:\n  select_platform({platform!r})\nexcept PlatformError as e:\n  print(e)"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    env={"PATH": ""},
    timeout=120,
    check=False,
  )
  assert message in result.stdout, result.stderr[-2000:]


def test_select_platform_after_start_refuses_another(mesh):
  parallel.select_platform("cpu")  # the running one: accepted
  with pytest.raises(parallel.PlatformError, match="already started"):
    parallel.select_platform("tpu")


def test_no_module_imports_jax_private_api():
  # jax._src changes without notice between releases; jaxdiff keeps to the public API.
  package = Path(parallel.__file__).parent
  offenders = [
    str(path.relative_to(package))
    for path in sorted(package.rglob("*.py"))
    if "jax._src" in path.read_text(encoding="utf-8")
  ]
  assert not offenders, f"jax._src used in {offenders}"
