"""The engine's EMA step, by hand (the engine's use of it is in tests/test_fit.py)."""

import jax.numpy as jnp
import numpy as np

from jaxdiff.ema import update_average


def test_update_average_by_hand_in_the_average_dtypes():
  average = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([4.0], jnp.bfloat16)}
  params = {"w": jnp.array([0.9, 2.1]), "b": jnp.array([2.0])}
  new = update_average(average, params, 0.9)
  # 0.9·[1, 2] + 0.1·[0.9, 2.1] = [0.99, 2.01]; 0.9·4 + 0.1·2 = 3.8, which bfloat16 (8
  # significant bits) rounds to 3.796875.
  np.testing.assert_allclose(new["w"], [0.99, 2.01], rtol=1e-6)
  assert new["w"].dtype == jnp.float32 and new["b"].dtype == jnp.bfloat16
  assert float(new["b"][0]) == 3.796875
