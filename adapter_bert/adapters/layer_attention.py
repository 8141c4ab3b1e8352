"""The layer-attention adapter of Basirat ("Efficient Structured Prediction
with Transformer Encoders", NEJLT 2024) on a frozen BERT encoder.

The whole encoder is frozen and run in inference mode (no dropout inside
it, no gradient through it). Its L + 1 hidden states (the embedding output
and every layer's output) are read through an attention over layers, per
token, in a reduced width h = max(H // 10, 5) with 2 heads:

  S [batch, seq, H, L+1]            the stacked hidden states
  Q = mean_l(S)·Wq + bq             [batch, seq, h]   (mean over layers)
  K = mean_t(S)·Wk + bk             [batch, L+1, h]   (mean over the real
                                                       tokens)
  A = mean_heads softmax(q_i·k_iᵀ / sqrt(h / heads))  [batch, seq, L+1]
      with q_i, k_i the heads of Q·W_q' + b_q', K·W_k' + b_k'
  r[b, t] = sum_l A[b, t, l] · S[b, t, :, l]          [batch, seq, H]

then the tailor block (`enable_tailor`):

  x = r + ReLU(dropout(LN(r)·W + b))
  with tailor_attention: x = dropout(x); P = x·Wr + br [batch, seq, h];
      x = B·x, B = mean_heads softmax over the real tokens of the heads of
      P·W_q'' + b_q'' against P·W_k'' + b_k''
  out = r + x

`out` replaces the encoder's sequence output; a classifier reads its first
([CLS]) row directly (the frozen pooler is not used). Rows of padding are
zero. (Basirat's code averages the keys over every position, padding
included, which makes a token's output depend on how much the batch is
padded; here the mean is over the real tokens.)

Checkpoint names under `bert/encoder/layer_attention/`.
"""

import dataclasses
import math
from typing import Optional, Tuple

import keras
import tensorflow as tf

from adapter_bert.adapters import registry
from adapter_bert.adapters.config import MethodConfig
from adapter_bert.adapters.config import check_field_types
from adapter_bert.adapters.config import check_range
from adapter_bert.adapters.config import register_preset
from adapter_bert.compute import kernels
from adapter_bert.errors import UserError


@dataclasses.dataclass(frozen=True)
class LayerAttentionConfig(MethodConfig):
  """Basirat's adapter (the names of his `Adapter` where he has them).

  Attributes:
    num_heads: heads of both attentions (2).
    reduced_size: the reduced width h; None: max(hidden_size // 10, 5).
    dropout: dropout in the tailor block while training (0.1).
    enable_tailor: the tailor block after the layer attention.
    tailor_attention: the token self-attention inside the tailor block.
    aggregation_layers: the hidden states read (0 = the embedding output,
      i = layer i's output); empty: all L + 1.
  """
  num_heads: int = 2
  reduced_size: Optional[int] = None
  dropout: float = 0.1
  enable_tailor: bool = True
  tailor_attention: bool = True
  aggregation_layers: Tuple[int, ...] = ()
  kind: str = "layer_attention"

  architecture = "layer_attention"

  def __post_init__(self):
    check_field_types(self)
    object.__setattr__(self, "aggregation_layers",
                       tuple(self.aggregation_layers))
    for field in ("num_heads",) + (("reduced_size",) if self.reduced_size
                                   is not None else ()):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError("layer_attention adapter config: %s=%r must be an "
                        "integer >= 1" % (field, value))
    check_range(self, "dropout", 0.0, 1.0)

  def width(self, hidden_size):
    """The reduced width h."""
    h = (self.reduced_size if self.reduced_size is not None
         else max(hidden_size // 10, 5))
    if h % self.num_heads:
      raise UserError("layer_attention adapter config: the reduced width %d "
                      "(reduced_size, or hidden_size // 10) is not divisible "
                      "by num_heads=%d" % (h, self.num_heads))
    return h

  def layers(self, num_hidden_layers):
    """Indices of the hidden states read (0..L)."""
    if not self.aggregation_layers:
      return list(range(num_hidden_layers + 1))
    bad = [i for i in self.aggregation_layers
           if not 0 <= i <= num_hidden_layers]
    if bad:
      raise UserError("layer_attention adapter config: aggregation_layers "
                      "%s outside 0..%d (0 is the embedding output)"
                      % (bad, num_hidden_layers))
    return sorted(set(self.aggregation_layers))


def _torch_linear(fan_in):
  bound = 1.0 / math.sqrt(fan_in)
  return keras.initializers.RandomUniform(-bound, bound)


class _Dense:
  """A kernel and a bias made by `layer.add_weight`, named for the
  checkpoint."""

  def __init__(self, layer, name, n_in, n_out, kernel_init, bias_init):
    self.name = name
    self.kernel = layer.add_weight(name=name.replace("/", "_") + "_kernel",
                                   shape=(n_in, n_out),
                                   initializer=kernel_init)
    self.bias = layer.add_weight(name=name.replace("/", "_") + "_bias",
                                 shape=(n_out,), initializer=bias_init)

  def __call__(self, x):
    return kernels.dense(x, self.kernel, self.bias)

  def items(self):
    return [(self.name + "/kernel", self.kernel),
            (self.name + "/bias", self.bias)]


def _head_averaged_weights(q, k, num_heads, key_adder=None):
  """mean over heads of softmax(q_i·k_iᵀ / sqrt(d)) (torch's
  MultiheadAttention weights): q [b, n, h], k [b, m, h] -> [b, n, m]."""
  b, n, m = tf.shape(q)[0], tf.shape(q)[1], tf.shape(k)[1]
  d = q.shape[-1] // num_heads
  qh = tf.transpose(tf.reshape(q, [b, n, num_heads, d]), [0, 2, 1, 3])
  kh = tf.transpose(tf.reshape(k, [b, m, num_heads, d]), [0, 2, 1, 3])
  scores = tf.matmul(qh, kh, transpose_b=True) / math.sqrt(d)  # [b, h, n, m]
  scores = tf.cast(scores, tf.float32)
  if key_adder is not None:
    scores += key_adder
  return tf.reduce_mean(tf.nn.softmax(scores, axis=-1), axis=1)


@keras.saving.register_keras_serializable(package="adapter_bert")
class LayerAttention(keras.layers.Layer):
  """The adapter at the `encoder_output` hook point (module docstring)."""

  reads_all_layers = True  # Called with every hidden state (BertModel).

  def __init__(self, config, hidden_size, num_hidden_layers, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.hidden_size = int(hidden_size)
    self.num_hidden_layers = int(num_hidden_layers)
    self.read_layers = config.layers(num_hidden_layers)
    c, big = config, self.hidden_size
    h = config.width(big)
    self.width = h
    xavier = keras.initializers.GlorotUniform()
    self.parts = [
        _Dense(self, "query_projector", big, h, _torch_linear(big),
               _torch_linear(big)),
        _Dense(self, "key_projector", big, h, _torch_linear(big),
               _torch_linear(big)),
        _Dense(self, "layer_attention/query", h, h, xavier, "zeros"),
        _Dense(self, "layer_attention/key", h, h, xavier, "zeros")]
    self.tailor_gamma = self.tailor_beta = None
    if c.enable_tailor:
      self.tailor_gamma = self.add_weight(name="tailor_gamma", shape=(big,),
                                          initializer="ones")
      self.tailor_beta = self.add_weight(name="tailor_beta", shape=(big,),
                                         initializer="zeros")
      self.parts.append(_Dense(self, "tailor/dense", big, big,
                               _torch_linear(big), _torch_linear(big)))
      if c.tailor_attention:
        self.parts += [
            _Dense(self, "tailor/query_reducer", big, h, xavier,
                   _torch_linear(big)),
            _Dense(self, "tailor/attention/query", h, h, xavier, "zeros"),
            _Dense(self, "tailor/attention/key", h, h, xavier, "zeros")]
    self.dense = {p.name: p for p in self.parts}
    self.built = True

  def checkpoint_variables(self):
    """[(name relative to `bert/encoder/`, variable)]."""
    items = []
    for part in self.parts:
      items += [("layer_attention/" + n, v) for n, v in part.items()]
    if self.tailor_gamma is not None:
      items += [("layer_attention/tailor/LayerNorm/gamma", self.tailor_gamma),
                ("layer_attention/tailor/LayerNorm/beta", self.tailor_beta)]
    return items

  def call(self, hidden_states, input_mask, training=False, policy=None,
           seed=None, output_range=None):
    """The adapter's sequence output.

    Args:
      hidden_states: L + 1 tensors [batch, seq, H] (embedding output first),
        or the ones read (`read_layers`) stacked, [batch, seq, L', H]; the
        frozen encoder's, gradients stopped.
      input_mask: [batch, seq] int (1 = real token).
      training: python bool (dropout in the tailor block).
      seed: optional stateless dropout seed.
      output_range: None, or k: only the first k rows are returned (the
        tailor attention then computes the queries of those rows only;
        same numbers as the whole computation).

    Returns:
      [batch, seq, H] ([batch, k, H] with output_range), zero at padding.
    """
    policy = kernels.policy_or_default(policy)
    c = self.config
    if isinstance(hidden_states, (list, tuple)):
      states = tf.stack([hidden_states[i] for i in self.read_layers],
                        axis=2)  # [b, seq, L', H]
    else:
      states = hidden_states
    dtype = states.dtype
    mask = tf.cast(input_mask, dtype)[:, :, tf.newaxis]  # [b, seq, 1]
    q = self.dense["query_projector"](tf.reduce_mean(states, axis=2))
    # Keys: each layer's mean over the real tokens (one pass over the
    # states, no masked copy of them). [b, L', H]
    token_mean = (tf.einsum("btlh,bt->blh", states, mask[:, :, 0])
                  / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)[
                      :, :, tf.newaxis])
    k = self.dense["key_projector"](token_mean)
    weights = _head_averaged_weights(
        self.dense["layer_attention/query"](q),
        self.dense["layer_attention/key"](k), c.num_heads)  # [b, seq, L']
    r = tf.einsum("btlh,btl->bth", states, tf.cast(weights, dtype)) * mask
    rows = slice(None) if output_range is None else slice(0, output_range)
    if not c.enable_tailor:
      return r[:, rows]
    r32 = tf.cast(r, tf.float32)  # LayerNorm in float32, as the model's.
    mean, variance = tf.nn.moments(r32, axes=[-1], keepdims=True)
    normed = tf.cast((r32 - mean) * tf.math.rsqrt(variance + 1e-12)
                     * tf.cast(self.tailor_gamma, tf.float32)
                     + tf.cast(self.tailor_beta, tf.float32), dtype)
    ff = policy.dropout(self.dense["tailor/dense"](normed), c.dropout,
                        training, kernels.fold_seed(seed, 0))
    x = r + tf.nn.relu(ff)
    if c.tailor_attention:
      x = policy.dropout(x, c.dropout, training, kernels.fold_seed(seed, 1))
      p = self.dense["tailor/query_reducer"](x)
      key_adder = (1.0 - tf.cast(input_mask, tf.float32))[
          :, tf.newaxis, tf.newaxis, :] * -1e9  # [b, 1, 1, seq]
      tokens = _head_averaged_weights(
          self.dense["tailor/attention/query"](p[:, rows]),
          self.dense["tailor/attention/key"](p), c.num_heads,
          key_adder)  # [b, rows, seq]
      return (r[:, rows] + tf.matmul(tf.cast(tokens, dtype), x)) * mask[
          :, rows]
    return ((r + x) * mask)[:, rows]

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), hidden_size=self.hidden_size,
                num_hidden_layers=self.num_hidden_layers)
    return base


def _layers_for(config, bert_config, where):
  if where != "encoder":
    return {}
  return {"encoder_output": LayerAttention(
      config, bert_config.hidden_size, bert_config.num_hidden_layers,
      name="layer_attention")}


registry.register_method("layer_attention", LayerAttentionConfig,
                         _layers_for, encoder_level=True)

LAYER_ATTENTION = LayerAttentionConfig()
register_preset("layer_attention", LAYER_ATTENTION)
