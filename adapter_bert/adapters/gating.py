"""Gates of AdapterHub's `use_gating` (UniPELT, Mao et al. 2022).

A gated module's output is scaled, per example, by

  g = mean over the example's tokens of sigmoid(x·W_g + b_g)   [batch, heads]

where x is the module's input (a bottleneck's input, a LoRA projection's
input, the attention input for prefix tuning). AdapterHub averages over
every position of the padded batch; here the mean is over the real tokens,
so that a gate does not depend on how much its batch is padded (the two
agree on unpadded input).

Layers with gates need the token layout of the batch (`TokenLayout`): the
model passes it to every layer whose class sets `uses_tokens = True`, and
computes every position of the last layer (not only [CLS]) while a gated
adapter is active.
"""

import math
from typing import NamedTuple

import keras
import tensorflow as tf

from adapter_bert.adapters import registry


class TokenLayout(NamedTuple):
  """How the rows of a [rows, H] tensor map to examples.

  Attributes:
    batch: scalar int32, the examples (all branches side by side).
    seq: scalar int32, rows per example.
    mask: float32 [batch, seq], 1 at real tokens.
  """
  batch: tf.Tensor
  seq: tf.Tensor
  mask: tf.Tensor


@keras.saving.register_keras_serializable(package="adapter_bert")
class Gate(keras.layers.Layer):
  """g = masked token mean of sigmoid(x·W + b): [rows, in] -> [batch, heads].

  Variables: `kernel` [in, heads] (normal 0.02), `bias` [heads] (zeros, or
  torch's default U(+-1/sqrt(in)) where AdapterHub leaves it so).
  """

  def __init__(self, in_features, heads=1, torch_bias=False, **kwargs):
    super().__init__(**kwargs)
    self.in_features = int(in_features)
    self.heads = int(heads)
    self.torch_bias = bool(torch_bias)
    bound = 1.0 / math.sqrt(self.in_features)
    self.kernel = self.add_weight(
        name="kernel", shape=(self.in_features, self.heads),
        initializer=keras.initializers.RandomNormal(stddev=0.02))
    self.bias = self.add_weight(
        name="bias", shape=(self.heads,),
        initializer=(keras.initializers.RandomUniform(-bound, bound)
                     if torch_bias else "zeros"))
    self.built = True

  def checkpoint_variables(self, scope):
    return [(scope + "/kernel", self.kernel), (scope + "/bias", self.bias)]

  def call(self, x, tokens):
    """x: [rows, in] with rows = tokens.batch * tokens.seq -> [batch, heads]."""
    if tokens is None:
      raise ValueError("a gated adapter needs the batch's token layout")
    scores = tf.sigmoid(tf.cast(
        tf.matmul(x, tf.cast(self.kernel, x.dtype))
        + tf.cast(self.bias, x.dtype), tf.float32))  # [rows, heads]
    scores = tf.reshape(scores, [tokens.batch, tokens.seq, self.heads])
    # (Keras casts a layer's float arguments to its compute dtype.)
    mask = tf.cast(tokens.mask, tf.float32)[:, :, tf.newaxis]  # [b, seq, 1]
    return (tf.reduce_sum(scores * mask, axis=1)
            / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0))

  def get_config(self):
    base = super().get_config()
    base.update(in_features=self.in_features, heads=self.heads,
                torch_bias=self.torch_bias)
    return base


def per_row(gate, tokens, dtype):
  """[batch, heads] -> [batch * seq, heads]: each example's gate on its rows."""
  return tf.cast(tf.repeat(gate, tokens.seq, axis=0), dtype)


def uses_gating(config):
  """Whether an adapter of `config` (or a part of its union) is gated."""
  return any(bool(getattr(c, "use_gating", False))
             for c in registry.parts_of(config))
