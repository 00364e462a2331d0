"""The DDPM experiment's wiring, in process: the class-conditional flags, the labels drawn, and
every sampler through the guided denoiser."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import ddpm
from jaxdiff.config import ConfigError
from jaxdiff.experiments.ddpm_mnist import config as config_module
from jaxdiff.experiments.ddpm_mnist import experiment
from jaxdiff.experiments.ddpm_mnist.config import DDPMConfig

TINY = DDPMConfig(model_size="tiny", num_timesteps=20, sample_steps=5, bpd_timesteps=2,
                  prediction="eps", schedule="linear")  # fmt: skip
CONDITIONAL = dataclasses.replace(TINY, conditional=True, guidance=2.0)


@pytest.mark.parametrize("field, value", [("guidance", 1.0), ("class_labels", (3,))])
def test_guidance_and_labels_need_a_conditional_model(field, value):
  with pytest.raises(ConfigError, match="add --conditional") as error:
    dataclasses.replace(TINY, **{field: value})
  assert error.value.field == field
  dataclasses.replace(TINY, conditional=True, **{field: value})  # accepted with it


def test_a_conditional_config_builds_a_labelled_unet_and_an_unconditional_one_does_not():
  assert CONDITIONAL.make_model().num_classes == 10
  assert TINY.make_model().num_classes is None


def test_the_labels_drawn_share_the_samples_equally():
  assert experiment.sample_labels(TINY, 12) is None
  labels = experiment.sample_labels(CONDITIONAL, 25)
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [3] * 5 + [2] * 5)
  chosen = dataclasses.replace(CONDITIONAL, class_labels=(3, 7))
  np.testing.assert_array_equal(experiment.sample_labels(chosen, 5), [3, 7, 3, 7, 3])


@pytest.fixture(scope="module")
def conditional_model():
  model = CONDITIONAL.make_model()
  x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)
  params = model.init(jax.random.key(0), x, t, jnp.zeros((1,), jnp.int32))["params"]
  # Perturbed, so that the label embedding (zero-output at init) changes the prediction.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return model, tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape)
                                for p, k in zip(leaves, keys)])  # fmt: skip


SAMPLER_CONFIGS = {
  "ddpm": {"sampler": "ddpm"},
  "ddim": {"sampler": "ddim"},
  "pc, ddpm predictor": {"sampler": "pc", "pc_predictor": "ddpm", "corrector_steps": 1},
  "pc, ddim predictor": {"sampler": "pc", "pc_predictor": "ddim", "corrector_steps": 1},
  "dpm_solver": {"sampler": "dpm_solver"},
}
LIBRARY_SAMPLERS = {
  "ddpm": lambda d, s, k, shape: ddpm.sample_ddpm(d, s, k, shape),
  "ddim": lambda d, s, k, shape: ddpm.sample_ddim(d, s, k, shape, num_steps=5),
  "pc, ddpm predictor": lambda d, s, k, shape: ddpm.sample_pc(d, s, k, shape, corrector_steps=1,
                                                             snr=0.24),
  "pc, ddim predictor": lambda d, s, k, shape: ddpm.sample_pc(
    d, s, k, shape, corrector_steps=1, snr=0.24, predictor="ddim", num_steps=5),
  "dpm_solver": lambda d, s, k, shape: ddpm.sample_dpm_solver(d, s, k, shape, num_steps=5),
}  # fmt: skip


@pytest.mark.parametrize("name", SAMPLER_CONFIGS)
def test_every_sampler_draws_through_the_guided_denoiser(conditional_model, name):
  model, params = conditional_model
  config = dataclasses.replace(CONDITIONAL, **SAMPLER_CONFIGS[name])
  schedule = ddpm.make_schedule(config.schedule, config.num_timesteps)
  labels = experiment.sample_labels(config, 4)
  shape, key = (4, 8, 8, 1), jax.random.key(2)

  def ours(guidance):
    denoise = experiment.make_denoiser(config, model, schedule, params, labels, guidance)
    return jax.jit(lambda k: experiment.draw(config, denoise, schedule, k, shape)[0])(key)

  guided = ddpm.guided_denoiser(lambda x, t, y: model.apply({"params": params}, x, t, y),
                                schedule, labels, model.null_label, 2.0)  # fmt: skip
  expected = jax.jit(lambda k: LIBRARY_SAMPLERS[name](guided, schedule, k, shape))(key)
  np.testing.assert_array_equal(ours(2.0), expected)
  assert not np.allclose(ours(0.0), expected, atol=1e-3)  # the weight reaches the sampler


def test_every_field_is_the_models_the_trainings_the_samplings_or_the_invocations():
  groups = (config_module.MODEL_FIELDS, config_module.TRAINING_FIELDS,
            config_module.SAMPLING_FIELDS)  # fmt: skip
  named = [name for group in groups for name in group]
  assert len(named) == len(set(named))  # no field in two groups
  fields = {field.name for field in dataclasses.fields(DDPMConfig)}
  assert fields - set(named) == {"compute_dtype", "sample_only"}
  assert set(named) <= fields


def test_the_sampler_tag_names_the_sampler_and_its_settings():
  assert TINY.sampler_tag() == "pc-ddim-5-c2-snr0.24"
  assert dataclasses.replace(TINY, pc_predictor="ddpm").sampler_tag() == "pc-ddpm-c2-snr0.24"
  assert dataclasses.replace(TINY, sampler="ddpm").sampler_tag() == "ddpm"
  assert dataclasses.replace(TINY, sampler="ddim").sampler_tag() == "ddim-5"
  solver = dataclasses.replace(CONDITIONAL, sampler="dpm_solver", class_labels=(3, 7))
  assert solver.sampler_tag() == "dpm_solver-5-w2-digits37"
