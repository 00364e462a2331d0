"""How hot pSGLD samples a Gaussian: the sampled variance over the target's, per coordinate.

The target is exp(−L/D) with L(θ) = ½ θᵀ diag(1, 10) θ and D = 1, so each coordinate's
variance is D / a. 2000 chains, vmapped, start at the target (``--start target``) or all at its
mode θ = 0, where the first gradients are zero (``--start mode``), run 20 000 steps, and the
last 15 000 are averaged; 1.0 means exact. ``--adapt-steps none`` is pSGLD whose preconditioner
keeps adapting (Li et al.'s, and jaxdiff's before the frozen default).

  python -m benchmarks.psgld_bias --adapt-steps none
  python -m benchmarks.psgld_bias --adapt-steps 1000
  python -m benchmarks.psgld_bias --adapt-steps 1000 --start mode
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.langevin import psgld

CURVATURES = jnp.array([1.0, 10.0])
DIFFUSION = 1.0


def variance_ratio(decay, learning_rate, adapt_steps, start="target", steps=20_000, chains=2000,
                   burn_in=5000):  # fmt: skip
  def chain(key):
    start_key, noise_key = jax.random.split(key)
    theta = jax.random.normal(start_key, (2,)) / jnp.sqrt(CURVATURES)
    if start == "mode":
      theta = jnp.zeros(2)
    optimizer = psgld(learning_rate, DIFFUSION, noise_key, decay=decay, adapt_steps=adapt_steps)

    def step(carry, _):
      theta, state = carry
      updates, state = optimizer.update(CURVATURES * theta, state)
      theta = theta + updates
      return (theta, state), theta * theta

    _, squares = jax.lax.scan(step, (theta, optimizer.init(theta)), None, length=steps)
    return squares[burn_in:].mean(0)

  keys = jax.random.split(jax.random.key(1), chains)
  # Each chain's time average is one independent estimate: their spread gives the error.
  ratios = np.asarray(jax.jit(jax.vmap(chain))(keys) * CURVATURES / DIFFUSION, np.float64)
  return ratios.mean(0), ratios.std(0, ddof=1) / np.sqrt(chains)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--adapt-steps", default="1000", help="an integer, or none")
  parser.add_argument("--start", choices=("target", "mode"), default="target")
  flags = parser.parse_args()
  adapt_steps = None if flags.adapt_steps == "none" else int(flags.adapt_steps)
  print(f"adapt_steps={adapt_steps}, start at the {flags.start}; sampled / target variance "
        "(± standard error), a = 1, a = 10")  # fmt: skip
  for decay in (0.99, 0.999, 0.9999):
    for learning_rate in (1e-2, 1e-3):
      ratio, error = variance_ratio(decay, learning_rate, adapt_steps, flags.start)
      cells = "  ".join(f"{r:.3f} ± {e:.3f}" for r, e in zip(ratio, error))
      print(f"decay {decay:<7} lr {learning_rate:<6} {cells}", flush=True)


if __name__ == "__main__":
  main()
