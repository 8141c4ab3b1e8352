"""Adapter layers."""

import keras
import tensorflow as tf

from compute.activations import get_activation
from compute import kernels


@keras.saving.register_keras_serializable(package="adapter_bert")
class BottleneckAdapter(keras.layers.Layer):
  """Houlsby bottleneck adapter: x + W2·act(W1·x + b1) + b2.

  Variables (checkpoint names under `.../adapters/`): `weights1` [H, m],
  `biases1` [1, m], `weights2` [m, H], `biases2` [1, H]. Weights are
  truncated normal with stddev `init_scale` (1e-3 makes the adapter start near
  the identity), biases zero.
  """

  def __init__(self, adapter_size=64, init_scale=1e-3, activation="gelu",
               **kwargs):
    super().__init__(**kwargs)
    self.adapter_size = adapter_size
    self.init_scale = init_scale
    self.activation = activation
    self._act = get_activation(activation)
    self._tanh_gelu = str(activation).lower() == "gelu"

  def build(self, input_shape):
    hidden = int(input_shape[-1])
    init = keras.initializers.TruncatedNormal(stddev=self.init_scale)
    self.weights1 = self.add_weight(
        name="weights1", shape=(hidden, self.adapter_size), initializer=init)
    self.biases1 = self.add_weight(
        name="biases1", shape=(1, self.adapter_size), initializer="zeros")
    self.weights2 = self.add_weight(
        name="weights2", shape=(self.adapter_size, hidden), initializer=init)
    self.biases2 = self.add_weight(
        name="biases2", shape=(1, hidden), initializer="zeros")
    super().build(input_shape)

  def call(self, x, training=False):
    # x: [tokens, H]
    if self._tanh_gelu:
      # Fused kernels (the same numbers).
      return kernels.bottleneck_adapter(
          x, tf.convert_to_tensor(self.weights1),
          tf.convert_to_tensor(self.biases1),
          tf.convert_to_tensor(self.weights2),
          tf.convert_to_tensor(self.biases2), training=bool(training))
    dtype = x.dtype
    h = tf.matmul(x, tf.cast(self.weights1, dtype)) + tf.cast(self.biases1, dtype)
    h = self._act(h)  # [tokens, m]
    net = tf.matmul(h, tf.cast(self.weights2, dtype)) + tf.cast(self.biases2, dtype)
    return net + x

  def get_config(self):
    config = super().get_config()
    config.update(adapter_size=self.adapter_size, init_scale=self.init_scale,
                  activation=self.activation)
    return config


# Registry of adapter layer types by name (AdapterConfig.kind).
ADAPTER_TYPES = {"bottleneck": BottleneckAdapter}


def register_adapter_type(name, layer_cls):
  """Adds an adapter layer class under `name` for AdapterConfig.kind."""
  ADAPTER_TYPES[name] = layer_cls
  return layer_cls


def make_adapter(config, name):
  """Builds the adapter layer described by an AdapterConfig.

  Args:
    config: AdapterConfig (enabled).
    name: Keras layer name.

  Returns:
    A Keras layer mapping [tokens, H] -> [tokens, H].
  """
  from training.errors import UserError
  if config.kind not in ADAPTER_TYPES:
    raise UserError("unknown adapter kind %r; known: %s"
                    % (config.kind, ", ".join(sorted(ADAPTER_TYPES))))
  return ADAPTER_TYPES[config.kind](
      adapter_size=config.size, init_scale=config.init_scale,
      activation=config.activation, name=name)
