"""The bottleneck adapter of Houlsby et al. (2019), as adapter-bert has it.

x + W2·act(W1·x + b1) + b2 at the hook points of `AdapterConfig.locations`
(after the attention output and the feed-forward output, each before its
residual LayerNorm). With the base frozen, an adapter of this method trains
its bottlenecks and every LayerNorm (the embeddings' too), so it holds its
own copy of them.
"""

import keras
import tensorflow as tf

from adapters import registry
from adapters.config import AdapterConfig
from compute import kernels
from compute.activations import get_activation


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

  def checkpoint_variables(self):
    """[(name relative to the hook point's scope, variable)]."""
    return [("adapters/" + name, getattr(self, name))
            for name in ("weights1", "biases1", "weights2", "biases2")]

  def call(self, x, training=False, policy=None):
    # x: [tokens, H]
    if self._tanh_gelu:
      # Fused kernels (the same numbers).
      return kernels.policy_or_default(policy).bottleneck_adapter(
          x, tf.convert_to_tensor(self.weights1),
          tf.convert_to_tensor(self.biases1),
          tf.convert_to_tensor(self.weights2),
          tf.convert_to_tensor(self.biases2), training=bool(training))
    dtype = x.dtype
    h = tf.matmul(x, tf.cast(self.weights1, dtype)) + tf.cast(self.biases1, dtype)
    h = self._act(h)  # [tokens, m]
    net = tf.matmul(h, tf.cast(self.weights2, dtype)) + tf.cast(self.biases2, dtype)
    return net + x

  def batch_key(self):
    """Adapters with equal keys can run side by side as batched products."""
    return ("bottleneck", self.adapter_size, self.activation)

  @staticmethod
  def call_batched(layers, x):
    """Each layer on its slice of x [n, rows, H] (inference), batched.

    Two batched products over the n slices instead of n separate calls.
    """
    dtype = x.dtype

    def stacked(name):
      return tf.stack([tf.cast(getattr(l, name), dtype) for l in layers])

    h = tf.matmul(x, stacked("weights1")) + stacked("biases1")  # [n, rows, m]
    h = layers[0]._act(h)  # pylint: disable=protected-access
    return tf.matmul(h, stacked("weights2")) + stacked("biases2") + x

  def get_config(self):
    config = super().get_config()
    config.update(adapter_size=self.adapter_size, init_scale=self.init_scale,
                  activation=self.activation)
    return config


def _layers_for(config, bert_config, where):
  if where == "embeddings" or not config.enabled:
    return {}
  layers = {}
  for location in config.locations:
    layer = BottleneckAdapter(adapter_size=config.size,
                              init_scale=config.init_scale,
                              activation=config.activation, name=location)
    layer.build((None, bert_config.hidden_size))
    layers[location] = layer
  return layers


registry.register_method("bottleneck", AdapterConfig, _layers_for,
                         owns_layer_norms=lambda config: True)
