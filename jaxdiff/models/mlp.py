"""A fully connected ReLU network, the classic Bayesian neural-network benchmark's model."""

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
  """Flattens its input, then ReLU dense layers and a linear output layer.

  The default is the 784-400-400-10 network of the MNIST SG-MCMC benchmarks (478 410
  parameters for 28x28 images).

  Attributes:
    hidden: the widths of the hidden layers.
    num_classes: size of the output layer.
  """

  hidden: Sequence[int] = (400, 400)
  num_classes: int = 10

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    x = inputs.reshape(inputs.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)
