"""Classifier-free guidance: the guided noise, the conditional U-Net, and label dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import ddpm
from jaxdiff.models import make_unet

SCHEDULE = ddpm.make_schedule("linear", 50)


def _toy(x, t, labels):
  """A conditional "network": its output depends on the label and the input."""
  return 0.5 * x + 0.1 * labels[:, None].astype(jnp.float32) + 0.001 * t[:, None]


def test_the_guided_noise_by_hand_and_its_limits():
  x, t = jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), jnp.array([3, 10, 40], jnp.int32)
  labels = jnp.array([1, 2, 3])
  with_label, without = _toy(x, t, labels), _toy(x, t, jnp.full(3, 9))
  for w in (0.0, 0.5, 2.0):
    guided = ddpm.guided_denoiser(_toy, SCHEDULE, labels, 9, w)(x, t)
    np.testing.assert_allclose(guided, (1 + w) * with_label - w * without, rtol=1e-6, atol=1e-7)
  # w = 0 is the conditional model exactly.
  np.testing.assert_array_equal(ddpm.guided_denoiser(_toy, SCHEDULE, labels, 9, 0.0)(x, t),
                                with_label)  # fmt: skip
  with pytest.raises(ValueError, match="guidance"):
    ddpm.guided_denoiser(_toy, SCHEDULE, labels, 9, -1.0)


def test_guidance_combines_noise_not_a_v_or_x0_output():
  x, t, labels = jnp.ones((2, 3)), jnp.array([5, 30], jnp.int32), jnp.array([0, 1])
  guided = ddpm.guided_denoiser(_toy, SCHEDULE, labels, 7, 1.5, prediction="x0")(x, t)
  eps = lambda y: ddpm.eps_from_prediction(SCHEDULE, x, t, _toy(x, t, y), "x0")  # noqa: E731
  np.testing.assert_allclose(guided, 2.5 * eps(labels) - 1.5 * eps(jnp.full(2, 7)), rtol=1e-5)


@pytest.fixture(scope="module")
def conditional_unet():
  model = make_unet("tiny", num_classes=10)
  x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32)
  params = model.init(jax.random.key(0), x, t, jnp.zeros((2,), jnp.int32))["params"]
  # A trained model's label embedding is not what init gives: perturb every weight.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  return model, params


def test_a_conditional_unet_reads_its_label_and_none_is_the_null_label(conditional_unet):
  model, params = conditional_unet
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
  t = jnp.array([3, 7], jnp.int32)
  three = model.apply({"params": params}, x, t, jnp.array([3, 3]))
  seven = model.apply({"params": params}, x, t, jnp.array([7, 7]))
  assert not np.allclose(three, seven)
  np.testing.assert_array_equal(model.apply({"params": params}, x, t),
                                model.apply({"params": params}, x, t, jnp.array([10, 10])))  # fmt: skip
  assert model.null_label == 10 and params["label_embedding"]["embedding"].shape == (11, 32)


def test_an_unconditional_unet_has_no_label_parameters_and_refuses_labels():
  model = make_unet("tiny")
  x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)
  params = model.init(jax.random.key(0), x, t)["params"]
  assert "label_embedding" not in params
  with pytest.raises(ValueError, match="unconditional"):
    model.apply({"params": params}, x, t, jnp.zeros((1,), jnp.int32))
  with pytest.raises(ValueError, match="num_classes"):
    model.null_label  # noqa: B018


class _NullDetector(nn.Module):
  """Outputs 1 where the label is the null label 10, else 0; no parameters of note."""

  @nn.compact
  def __call__(self, x, t, labels, *, deterministic=True):
    bias = self.param("bias", nn.initializers.zeros, ())
    return jnp.broadcast_to((labels == 10)[:, None, None, None], x.shape) + bias


def test_the_task_drops_labels_to_the_null_label_at_its_rate():
  # With the same key the loss draws the same t and ε; against a model that predicts 0, the
  # detector's loss differs by mean(out²) − 2·mean(ε·out), and mean(out²) is the share of
  # dropped labels: variance p(1 − p)/n for the share, 4p/n for the cross term (ε ~ N(0, 1)).
  n = 40_000
  batch = {"image": np.full((n, 1, 1, 1), 128, np.uint8), "label": np.arange(n) % 10}
  for p in (0.0, 0.1, 1.0):
    task = ddpm.ddpm_task(_NullDetector(), SCHEDULE, (1, 1, 1), num_classes=10, label_dropout=p)
    params = task.init(jax.random.key(0))
    key = jax.random.key(3)
    detector_loss, _ = task.loss(params, batch, key)
    zero = ddpm.ddpm_task(_NullDetector(), SCHEDULE, (1, 1, 1), num_classes=10, label_dropout=0.0)
    baseline, _ = zero.loss(params, batch, key)
    tolerance = 4 * np.sqrt((p * (1 - p) + 4 * p) / n)  # 4 SD; 0 at p = 0, where both are 0
    assert abs(float(detector_loss - baseline) - p) <= tolerance, p
  with pytest.raises(ValueError, match="label_dropout"):
    ddpm.ddpm_task(_NullDetector(), SCHEDULE, (1, 1, 1), num_classes=10, label_dropout=1.5)


def test_an_unconditional_task_is_unchanged_by_the_conditional_arguments():
  model = make_unet("tiny")
  task = ddpm.ddpm_task(model, SCHEDULE, (8, 8, 1))
  params = task.init(jax.random.key(0))
  batch = {"image": np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)}
  loss, _ = task.loss(params, batch, jax.random.key(1))
  manual = ddpm.diffusion_loss(lambda x, t: model.apply({"params": params}, x, t), SCHEDULE,
                               ddpm.to_unit_range(batch["image"]), jax.random.key(1))  # fmt: skip
  np.testing.assert_array_equal(loss, manual)
