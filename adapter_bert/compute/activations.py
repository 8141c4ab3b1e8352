"""Activation functions by the names used in `bert_config.json`.

"gelu" is the tanh approximation, exactly as google-research/bert computes it;
"gelu_exact" is the erf form.
"""

import math

import tensorflow as tf

from adapter_bert.errors import UserError


def gelu(x):
  """GELU, tanh approximation (as the original BERT `gelu`).

  Args:
    x: float tensor.

  Returns:
    `x` with the activation applied.
  """
  cdf = 0.5 * (1.0 + tf.tanh(
      math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))
  return x * cdf


def gelu_exact(x):
  """GELU with the exact Gaussian CDF: x * Phi(x)."""
  return 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0)))


def linear(x):
  return x


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_exact": gelu_exact,
    "relu": tf.nn.relu,
    "tanh": tf.tanh,
    "linear": linear,
}


def get_activation(name):
  """Maps an activation name to a function.

  Args:
    name: one of ACTIVATIONS' keys (case-insensitive), or None for linear.

  Returns:
    A callable on tensors.

  Raises:
    UserError: if the name is unknown.
  """
  if name is None:
    return linear
  key = str(name).lower()
  if key not in ACTIVATIONS:
    raise UserError("unknown activation %r; expected one of %s"
                    % (name, ", ".join(sorted(ACTIVATIONS))))
  return ACTIVATIONS[key]
