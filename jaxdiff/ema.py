"""An exponential moving average (EMA) of the parameters as an optax transformation.

Like the Langevin noise of :mod:`jaxdiff.langevin`, :func:`track_params_ema` is a plain
:class:`optax.GradientTransformation` placed last in an :func:`optax.chain`: it passes the
updates through unchanged and keeps, in its state,

.. math::

  \\bar θ_{k+1} = d \\, \\bar θ_k + (1 − d) \\, θ_{k+1}, \\qquad \\bar θ_0 = θ_0,

for a decay ``d``. :func:`find_params_ema` reads the average back out of any optimizer state.
The diffusion experiments sample from this average, as Ho et al. do (with ``d = 0.9999``).

References:
  Ho, Jain & Abbeel, `Denoising Diffusion Probabilistic Models
  <https://arxiv.org/abs/2006.11239>`_, NeurIPS 2020.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
  "ParamsEMAState",
  "find_params_ema",
  "track_params_ema",
]


class ParamsEMAState(NamedTuple):
  """State of :func:`track_params_ema`.

  Attributes:
    ema: the exponential moving average of the parameters, their structure and dtypes.
  """

  ema: optax.Params


def track_params_ema(decay: float) -> optax.GradientTransformation:
  """Keeps an exponential moving average of the parameters in the optimizer state.

  Place it last in an :func:`optax.chain`, so that the updates it sees are the final ones. Each
  update computes the new parameters ``params + updates`` and sets
  ``ema ← decay · ema + (1 − decay) · (params + updates)``; the updates pass through unchanged.
  The average starts at the initial parameters. Read it with :func:`find_params_ema`.

  Args:
    decay: the EMA decay in ``[0, 1]``, e.g. 0.9999 as in Ho et al.

  Returns:
    The transformation; its ``update`` requires ``params``.

  Example:
    >>> optimizer = optax.chain(optax.adam(2e-4), track_params_ema(0.9999))
    >>> opt_state = optimizer.init(params)
    >>> ema_params = find_params_ema(opt_state)
  """
  if not isinstance(decay, jax.core.Tracer) and not 0.0 <= float(decay) <= 1.0:
    raise ValueError(f"decay must lie in [0, 1], got {decay!r}")

  def init_fn(params):
    return ParamsEMAState(ema=jax.tree.map(jnp.asarray, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("track_params_ema needs params: call update(updates, state, params)")
    new_params = optax.apply_updates(params, updates)
    return updates, ParamsEMAState(ema=update_average(state.ema, new_params, decay))

  return optax.GradientTransformation(init_fn, update_fn)


def update_average(average: optax.Params, params: optax.Params, decay: float) -> optax.Params:
  """One EMA step, ``decay · average + (1 − decay) · params``, in the average's dtypes.

  The update of :func:`track_params_ema` and of the training engine's
  ``Trainer(ema_decay=...)``.
  """
  return jax.tree.map(
    lambda old, new: (decay * old + (1.0 - decay) * new).astype(old.dtype), average, params
  )


def find_params_ema(opt_state: optax.OptState) -> optax.Params:
  """The parameter average of the one :class:`ParamsEMAState` in an optimizer state.

  Searches the whole state tree (chains, ``optax.inject_hyperparams`` inner states, masks, ...).

  Args:
    opt_state: an optimizer state built with :func:`track_params_ema`.

  Returns:
    The ``ema`` field, with the parameters' structure (and any leading axes the state has, such
    as the training engine's run axis).

  Raises:
    ValueError: if the state holds no :class:`ParamsEMAState`, or more than one.
  """
  found = optax.tree.get_all_with_path(opt_state, ParamsEMAState.__name__)
  found = [state for _, state in found if isinstance(state, ParamsEMAState)]
  if len(found) != 1:
    raise ValueError(
      f"expected one ParamsEMAState (from track_params_ema) in the optimizer state, "
      f"found {len(found)}"
    )
  return found[0].ema
