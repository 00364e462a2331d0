"""The training engine's exponential moving average (EMA) of the parameters.

:class:`jaxdiff.engine.Trainer` keeps the average as explicit state, ``TrainState.ema_params``
(as vdm does), and with ``ema_decay = d`` applies :func:`update_average` after every step:

.. math::

  \\bar θ_{k+1} = d \\, \\bar θ_k + (1 − d) \\, θ_{k+1}, \\qquad \\bar θ_0 = θ_0.

The diffusion experiments sample from this average, as Ho et al. do (with ``d = 0.9999``).

References:
  Ho, Jain & Abbeel, `Denoising Diffusion Probabilistic Models
  <https://arxiv.org/abs/2006.11239>`_, NeurIPS 2020.
"""

from __future__ import annotations

import jax
import optax

__all__ = ["update_average"]


def update_average(average: optax.Params, params: optax.Params, decay: float) -> optax.Params:
  """The engine's EMA step: ``decay · average + (1 − decay) · params``, in the average's dtypes.

  Args:
    average: the average so far, a pytree of arrays.
    params: the new parameters, the same structure.
    decay: ``d`` in ``[0, 1)``; ``Trainer`` checks its ``ema_decay``.

  Returns:
    The new average, with ``average``'s structure and dtypes.

  Example:
    >>> ema_params = {"w": jnp.zeros(2)}
    >>> ema_params = update_average(ema_params, {"w": jnp.ones(2)}, decay=0.75)
    >>> ema_params["w"]
    Array([0.25, 0.25], dtype=float32)
  """
  return jax.tree.map(
    lambda old, new: (decay * old + (1.0 - decay) * new).astype(old.dtype), average, params
  )
