"""The XLA:CPU formulations in jaxdiff.models.cpu_ops equal the plain lax/flax ops."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from jaxdiff import classification, parallel, train
from jaxdiff.models import SimpleCNN, cpu_ops
from jaxdiff.policy import ExecutionPolicy, jaxlib_accepts

EPS = float(jnp.finfo(jnp.float32).eps)
NHWC = ("NHWC", "HWIO", "NHWC")


def conv_cases():
  key = jax.random.key(0)
  lhs_key, rhs_key = jax.random.split(key)
  cases = {
    # (lhs shape, rhs shape, strides, padding, dimension numbers, feature groups)
    "seed conv1, 3 -> 6 features": ((4, 32, 32, 3), (5, 5, 3, 6), (1, 1), "VALID", NHWC, 1),
    "seed conv2, already 16": ((4, 14, 14, 6), (5, 5, 6, 16), (1, 1), "VALID", NHWC, 1),
    "SAME, prime output width": ((2, 6, 7, 2), (3, 3, 2, 5), (1, 1), "SAME", NHWC, 1),
    "explicit uneven padding": ((2, 9, 8, 3), (2, 4, 3, 4), (1, 1), ((1, 0), (2, -1)), NHWC, 1),
    "1x1 kernel": ((2, 5, 6, 4), (1, 1, 4, 3), (1, 1), "VALID", NHWC, 1),
    "stride 2, SAME, 20 features": ((3, 9, 9, 4), (3, 3, 4, 20), (2, 2), "SAME", NHWC, 1),
    "lax default NCHW/OIHW": ((2, 3, 12, 12), (5, 3, 3, 3), (1, 1), "VALID", None, 1),
    "grouped, run unpadded": ((2, 8, 8, 4), (3, 3, 2, 6), (1, 1), "SAME", NHWC, 2),
  }
  for name, (lhs_shape, rhs_shape, strides, padding, numbers, groups) in cases.items():
    lhs = jax.random.normal(lhs_key, lhs_shape)
    rhs = jax.random.normal(rhs_key, rhs_shape)
    yield pytest.param(lhs, rhs, strides, padding, numbers, groups, id=name)


CPU_CONVS = [cpu_ops.conv_padded_features, cpu_ops.conv_toeplitz]


@pytest.mark.parametrize("cpu_conv", CPU_CONVS, ids=lambda fn: fn.__name__)
@pytest.mark.parametrize("lhs, rhs, strides, padding, numbers, groups", list(conv_cases()))
def test_cpu_conv_equals_lax_conv_with_gradients(
  cpu_conv, lhs, rhs, strides, padding, numbers, groups
):
  def conv_with(fn, lhs, rhs):
    return fn(lhs, rhs, strides, padding, dimension_numbers=numbers, feature_group_count=groups)

  reference = lambda x, w: conv_with(lax.conv_general_dilated, x, w)
  fast = lambda x, w: conv_with(cpu_conv, x, w)
  assert_same_convolution(reference, fast, lhs, rhs)


def assert_same_convolution(reference, fast, lhs, rhs, fast_compiler_options=None):
  """``fast(lhs, rhs)`` equals the convolution ``reference`` in value and both gradients.

  Each side's value and gradients are compiled as one program, ``fast``'s with
  ``fast_compiler_options``.
  """

  def value_and_gradients(conv):
    def compute(lhs, rhs, cotangent):
      value, vjp = jax.vjp(conv, lhs, rhs)
      return (value, *vjp(cotangent))

    return compute

  cotangent = jax.random.normal(jax.random.key(1), jax.eval_shape(reference, lhs, rhs).shape)
  expected = jax.jit(value_and_gradients(reference))(lhs, rhs, cotangent)
  actual = jax.jit(value_and_gradients(fast), compiler_options=fast_compiler_options)(
    lhs, rhs, cotangent
  )
  # The two differ at most in float32 summation order (the Toeplitz matmul adds products
  # with exact zeros too, which round nothing). Each output sums n products, so
  # each result is within n·ε·Σ|terms| of the exact value; Σ|terms| is the same op applied
  # to absolute values. n is at most the larger of the window (forward, input gradient) and
  # batch × output pixels (kernel gradient); the bound below is twice that, one per path.
  terms = max(np.prod(rhs.shape), np.prod(expected[0].shape))
  bounds = jax.jit(value_and_gradients(reference))(jnp.abs(lhs), jnp.abs(rhs), jnp.abs(cotangent))
  for want, got, bound in zip(expected, actual, bounds):
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.all(np.abs(np.asarray(got) - np.asarray(want)) <= 2 * terms * EPS * bound)


def test_padded_conv_runs_unpadded_where_padding_would_change_nothing():
  lhs = jnp.ones((1, 6, 6, 2))
  for rhs, groups in ((jnp.ones((3, 3, 2, 16)), 1), (jnp.ones((3, 3, 1, 6)), 2)):
    jaxpr = jax.make_jaxpr(
      lambda x, w, groups=groups: cpu_ops.conv_padded_features(
        x,
        w,
        (1, 1),
        "VALID",
        dimension_numbers=NHWC,
        feature_group_count=groups,
      )
    )(lhs, rhs)
    assert "pad" not in {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}


def conv_primitives(fn, lhs_shape, rhs_shape, strides):
  jaxpr = jax.make_jaxpr(lambda x, w: fn(x, w, strides, "SAME", dimension_numbers=NHWC))(
    jnp.ones(lhs_shape), jnp.ones(rhs_shape)
  )
  return {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}


def test_toeplitz_conv_is_a_matmul_where_it_applies_and_falls_back_elsewhere():
  as_matmul = conv_primitives(cpu_ops.conv_toeplitz, (2, 8, 8, 3), (5, 5, 3, 6), (1, 1))
  assert "dot_general" in as_matmul and "conv_general_dilated" not in as_matmul
  strided = conv_primitives(cpu_ops.conv_toeplitz, (2, 8, 8, 3), (5, 5, 3, 6), (2, 2))
  assert strided == conv_primitives(
    cpu_ops.conv_padded_features, (2, 8, 8, 3), (5, 5, 3, 6), (2, 2)
  )
  assert "conv_general_dilated" in strided
  # A kernel larger than the padded input falls back with the caller's padding, applied once.
  x, w, pads = jnp.ones((1, 3, 3, 2)), jnp.ones((5, 5, 2, 4)), ((1, 0), (0, 0))
  too_small = cpu_ops.conv_toeplitz(x, w, (1, 1), pads, dimension_numbers=NHWC)
  assert too_small.shape == lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC).shape  # fmt: skip


@pytest.mark.parametrize(
  "lhs_shape, rhs_shape, block",
  [
    ((3, 32, 32, 3), (5, 5, 3, 6), 28),  # seed conv1, whole rows: XLA:GPU's choice
    ((3, 32, 32, 3), (5, 5, 3, 6), 7),
    ((3, 32, 32, 3), (5, 5, 3, 6), 1),
    ((3, 14, 14, 6), (5, 5, 6, 16), 10),  # seed conv2, whole rows
  ],
)
def test_toeplitz_conv_equals_lax_conv_at_every_block_width(lhs_shape, rhs_shape, block):
  lhs = jax.random.normal(jax.random.key(2), lhs_shape)
  rhs = jax.random.normal(jax.random.key(3), rhs_shape)

  def valid_conv(fn, **kwargs):
    return lambda x, w: fn(x, w, (1, 1), "VALID", dimension_numbers=NHWC, **kwargs)

  fast = valid_conv(cpu_ops.conv_toeplitz, block=block)
  assert_same_convolution(valid_conv(lax.conv_general_dilated), fast, lhs, rhs)


def test_toeplitz_block_narrow_or_whole_rows_and_bad_blocks():
  assert cpu_ops.toeplitz_block(28, 5) == 4  # measured fastest on XLA:CPU
  assert cpu_ops.toeplitz_block(10, 5) == 5
  assert cpu_ops.toeplitz_block(2, 5) == 2  # no divisor reaches kw - 1: whole rows
  assert cpu_ops.toeplitz_block(28, 5, whole_rows=True) == 28  # XLA:GPU's choice
  x, w = jnp.ones((1, 8, 8, 1)), jnp.ones((3, 3, 1, 2))
  for block in (0, 4, 7):
    with pytest.raises(ValueError, match="divisor of the output width 6"):
      cpu_ops.conv_toeplitz(x, w, (1, 1), "VALID", dimension_numbers=NHWC, block=block)


def same_conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


def ynn_convolutions(compiled_hlo: str) -> int:
  """How many of a compiled program's YNNPACK fusions compute a convolution."""
  called = re.findall(r"calls=%?([\w.\-]+),[^\n]*__ynn_fusion", compiled_hlo)
  bodies = [compiled_hlo.split(f"%{name} (")[1].split("\n}\n")[0] for name in called]
  return sum("convolution(" in body for body in bodies)


def _compiler_options(convolution="lax", cpu_flags=()):
  """The policy's CPU compiler options for ``convolution`` on a CPU with ``cpu_flags``."""
  policy = ExecutionPolicy.for_mesh(parallel.make_mesh(), convolution=convolution,
                                    cpu_flags=cpu_flags)  # fmt: skip
  return dict(policy.compiler_options)


# jaxlib 0.10.2's default YNNPACK fusion types less the convolutions.
XLA_CONVOLUTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": (
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
  ),
}
NO_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}


def test_compiler_options_leave_convolutions_to_xla_with_the_same_values():
  options = _compiler_options()
  assert options, "this jaxlib rejects the options: update policy._YNN_FUSION_TYPES"
  # 32 channels: a size where the two kernels differ in speed (benchmarks/RESULTS.md).
  lhs = jax.random.normal(jax.random.key(6), (2, 8, 8, 32))
  rhs = jax.random.normal(jax.random.key(7), (3, 3, 32, 32))
  compiled = jax.jit(same_conv, compiler_options=options).lower(lhs, rhs).compile()
  assert ynn_convolutions(compiled.as_text()) == 0
  assert_same_convolution(same_conv, same_conv, lhs, rhs, fast_compiler_options=options)


def test_only_options_this_jaxlib_accepts_are_set():
  assert jaxlib_accepts(XLA_CONVOLUTIONS) and jaxlib_accepts(NO_YNNPACK)
  no_such_type = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE"}
  assert not jaxlib_accepts(no_such_type)


def test_banded_programs_drop_ynnpack_only_on_the_cpu_kind_measured():
  amx = "fpu avx512f amx_bf16 amx_tile".split()
  assert _compiler_options("lax", amx) == _compiler_options("none", amx) == XLA_CONVOLUTIONS
  for convolution in ("banded", "banded_rows", "auto"):  # auto: banded on the CPU
    assert _compiler_options(convolution, amx) == NO_YNNPACK
  # No AMX, the choice measured before on the EPYC; no flags known (no /proc/cpuinfo).
  for flags in (["fpu", "avx512f"], []):
    assert _compiler_options("banded", flags) == XLA_CONVOLUTIONS


def test_the_banded_cnn_without_ynnpack_computes_the_same_function(cnn_paths):
  _, fast, params, images, plain_results, _ = cnn_paths
  options = _compiler_options("banded", ["amx_tile"])
  assert options == NO_YNNPACK
  compiled = jax.jit(cnn_loss_and_grads(fast, images), compiler_options=options).lower(params).compile()  # fmt: skip
  assert "__ynn_fusion" not in compiled.as_text()
  assert_same_cnn_results(plain_results, compiled(params))


def test_engine_compiles_its_cpu_step_with_the_compiler_options():
  class ConvClassifier(nn.Module):
    @nn.compact
    def __call__(self, images):
      return nn.Dense(3)(nn.Conv(32, (3, 3))(images).reshape(images.shape[0], -1))

  task = classification.classifier_task(ConvClassifier(), (8, 8, 1))
  mesh = parallel.make_mesh()
  policy = ExecutionPolicy.for_mesh(mesh, loop="step")
  trainer = train.Trainer(task, optax.sgd, mesh=mesh, batch_size=4, policy=policy)
  state = trainer.init(jax.random.key(0)[None], learning_rate=jnp.array([0.1]))
  data = trainer.put_data({"image": np.zeros((8, 8, 8, 1), np.uint8), "label": np.zeros(8, np.int32)})  # fmt: skip
  (step,) = trainer.lower_epoch(state, data)  # one run: the step, lowered once
  compiled = step.compile().as_text()
  assert "convolution(" in compiled and ynn_convolutions(compiled) == 0


def pool_inputs():
  key = jax.random.key(2)
  # Small integers make ties in most windows: the gradient must pick the same element.
  ties = jax.random.randint(key, (3, 8, 8, 5), -2, 3).astype(jnp.float32)
  yield pytest.param(ties, id="ties")
  yield pytest.param(jax.nn.relu(jax.random.normal(key, (2, 28, 28, 6))), id="after relu")
  yield pytest.param(jax.random.normal(key, (2, 7, 9, 3)), id="odd sizes")


@pytest.mark.parametrize("x", list(pool_inputs()))
def test_max_pool_2x2_equals_flax_max_pool_bitwise_with_gradient(x):
  reference = jax.jit(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
  fast = jax.jit(cpu_ops.max_pool_2x2)
  expected, reference_vjp = jax.vjp(reference, x)
  actual, fast_vjp = jax.vjp(fast, x)
  cotangent = jax.random.normal(jax.random.key(3), expected.shape)
  np.testing.assert_array_equal(actual, expected)
  np.testing.assert_array_equal(fast_vjp(cotangent)[0], reference_vjp(cotangent)[0])


@pytest.fixture(scope="module")
def cnn_paths():
  images = jax.random.normal(jax.random.key(4), (8, 32, 32, 3))
  plain, fast = SimpleCNN(convolution="lax"), SimpleCNN(convolution="banded")
  params = plain.init(jax.random.key(5), images)["params"]
  results = [jax.jit(cnn_loss_and_grads(model, images))(params) for model in (plain, fast)]
  return plain, fast, params, images, *results


def cnn_loss_and_grads(model, images):
  """``params -> ((loss, logits), grads)`` of ``model`` on ``images``, labelled 0, 1, 2, ..."""
  labels = jnp.arange(len(images)) % 10

  def loss(params):
    logits = model.apply({"params": params}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  return jax.value_and_grad(loss, has_aux=True)


def assert_same_cnn_results(plain_results, fast_results):
  """Two :func:`cnn_loss_and_grads` results agree up to float32 summation order."""
  (plain_loss, plain_logits), plain_grads = plain_results
  (fast_loss, fast_logits), fast_grads = fast_results
  # Only float32 summation order differs; the longest sums have 400 terms (Dense_0), so
  # relative differences stay within 400·ε ≈ 5e-5 of each value's scale.
  tolerance = 400 * EPS
  np.testing.assert_allclose(fast_logits, plain_logits, rtol=tolerance, atol=tolerance)
  np.testing.assert_allclose(fast_loss, plain_loss, rtol=tolerance)
  for plain_leaf, fast_leaf in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(fast_grads)):
    scale = float(jnp.abs(plain_leaf).max())
    np.testing.assert_allclose(fast_leaf, plain_leaf, rtol=0, atol=tolerance * scale)


def test_simple_cnn_cpu_ops_keep_the_parameters(cnn_paths):
  _, fast, params, images, _, _ = cnn_paths
  fast_params = fast.init(jax.random.key(5), images)["params"]
  shapes = jax.tree.map(lambda a: (a.shape, a.dtype), params)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), fast_params) == shapes
  jax.tree.map(np.testing.assert_array_equal, fast_params, params)


def test_simple_cnn_cpu_ops_compute_the_same_logits_and_gradients(cnn_paths):
  *_, plain_results, fast_results = cnn_paths
  assert_same_cnn_results(plain_results, fast_results)


def test_the_policy_chooses_the_cpu_ops_for_the_simple_cnn_on_the_cpu(cnn_paths):
  plain, fast, params, images, _, _ = cnn_paths
  auto = ExecutionPolicy.for_mesh(parallel.make_mesh(), convolution="auto")
  chosen = SimpleCNN(convolution=auto.convolution)
  traced = {
    name: str(jax.make_jaxpr(lambda p, m=model: m.apply({"params": p}, images))(params))
    for name, model in (("policy", chosen), ("plain", plain), ("fast", fast))
  }
  assert "reduce_window_max" in traced["plain"]
  assert "reduce_window_max" not in traced["fast"]
  assert jax.default_backend() == "cpu"  # conftest pins the test session to the CPU
  assert traced["policy"] == traced["fast"]


def test_the_whole_rows_formulation_computes_the_same_logits(cnn_paths):
  plain, _, params, images, ((_, plain_logits), _), _ = cnn_paths
  rows = SimpleCNN(convolution="banded_rows")
  logits = jax.jit(lambda p: rows.apply({"params": p}, images))(params)
  # Float32 summation order only, as for the narrow blocks above.
  np.testing.assert_allclose(logits, plain_logits, rtol=400 * EPS, atol=400 * EPS)
  with pytest.raises(ValueError, match="convolution must be one of"):
    SimpleCNN(convolution="fft").init(jax.random.key(0), images)
