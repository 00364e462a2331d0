"""Named key streams of multi-seed experiments: fixed derivations, as each fixes a result.

A run group's ``root = jax.random.key(config.seed)``; seed ``s`` owns ``fold_in(root, 1 + s)``
(stream 0 is left to the experiment, e.g. for a data subset), and a Langevin run draws its
noise from its seed's stream. Every optimizer of a comparison uses the same seed keys, so their
differences are paired. Changing a number here changes every recorded result.
"""

import jax


def seed_key(root: jax.Array, seed: int) -> jax.Array:
  """Seed ``seed``'s parameters, data order and loss randomness: ``fold_in(root, 1 + seed)``."""
  return jax.random.fold_in(root, 1 + seed)


def langevin_noise_key(run_key: jax.Array) -> jax.Array:
  """The Langevin noise of a run, from its seed's key: ``fold_in(run_key, 7)``."""
  return jax.random.fold_in(run_key, 7)
