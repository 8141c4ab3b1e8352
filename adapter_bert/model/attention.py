"""BERT self-attention with the query, key, value and attention_keys_values
hook points; only the queries of output_range are computed.
"""

import math

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import keras
import tensorflow as tf

from adapter_bert.adapters import registry
from adapter_bert.compute import kernels
from adapter_bert.model.config import as_bert_config
from adapter_bert.model.hooks import AdapterHook
from adapter_bert.model.hooks import NO_ADAPTERS
from adapter_bert.model.hooks import dense_variables
from adapter_bert.model.hooks import first_positions
from adapter_bert.model.hooks import strip_scope
from adapter_bert.model.hooks import weight_initializer


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertSelfAttention(keras.layers.Layer):
  """Multi-head self-attention with [H, H] query/key/value kernels.

  Works on [batch * seq, H] matrices as the original; returns the context
  before the output projection. Hook points: `query`, `key`, `value` (each
  projection) and `attention_keys_values` (the per-head keys and values).
  """

  def __init__(self, config, **kwargs):
    super().__init__(**kwargs)
    self.config = as_bert_config(config)
    c = self.config
    self.num_heads = c.num_attention_heads
    self.head_size = c.hidden_size // c.num_attention_heads
    init = weight_initializer(c)
    self.query = keras.layers.Dense(c.hidden_size, kernel_initializer=init,
                                    name="query")
    self.key = keras.layers.Dense(c.hidden_size, kernel_initializer=init,
                                  name="key")
    self.value = keras.layers.Dense(c.hidden_size, kernel_initializer=init,
                                    name="value")
    for layer in (self.query, self.key, self.value):
      layer.build((None, c.hidden_size))
    self.hooks = {point: AdapterHook(point, name=point + "_hook")
                  for point in ("query", "key", "value",
                                "attention_keys_values")}

  def checkpoint_variables(self, branch, serving=False):
    """[(name under `attention/self/`, variable, tag)] of one branch."""
    items = []
    for part in ("query", "key", "value"):
      items += dense_variables(part, getattr(self, part))
      items += strip_scope(self.hooks[part].checkpoint_variables(
          registry.HOOK_SCOPES[part], branch.adapters, serving),
                            "attention/self/")
    items += strip_scope(self.hooks["attention_keys_values"]
                          .checkpoint_variables(
                              registry.HOOK_SCOPES["attention_keys_values"],
                              branch.adapters, serving), "attention/self/")
    return items

  def _split_heads(self, x, batch, seq, parts):
    """[batch * seq, parts * H] -> `parts` tensors [batch, heads, seq, size]."""
    x = tf.reshape(x, [batch, seq, parts, self.num_heads, self.head_size])
    x = tf.transpose(x, [2, 0, 3, 1, 4])  # [parts, batch, heads, seq, size]
    # unstack, not x[i]: the gradient of a slice is a zero-filled copy of
    # the whole tensor per slice, that of unstack one stack.
    return tf.unstack(x, num=parts, axis=0)

  def _project_heads(self, x, batch, seq, output_range, policy):
    """The query, key and value projections as one matrix product.

    Args:
      x: [batch * seq, H].
      output_range: None, or k: queries of the first k positions only.

    Returns:
      q: [batch, heads, seq or k, head_size]; k, v: [batch, heads, seq,
      head_size].
    """
    # One [H, 3H] product instead of three [H, H] ones: a wider matrix runs
    # closer to the machine's peak, and the backward pass gets one product
    # too. The kernels stay three variables (the checkpoint layout).
    layers = (self.query, self.key, self.value)
    kernels_ = [tf.convert_to_tensor(l.kernel) for l in layers]
    biases = [tf.convert_to_tensor(l.bias) for l in layers]
    if output_range is None:
      qkv = policy.projection(x, kernels_, biases)  # [rows, 3H]
      return self._split_heads(qkv, batch, seq, 3)
    k, v = self._split_heads(
        policy.projection(x, kernels_[1:], biases[1:]), batch, seq, 2)
    q = policy.projection(first_positions(x, batch, seq, output_range),
                          kernels_[:1], biases[:1])
    q, = self._split_heads(q, batch, output_range, 1)
    return q, k, v

  def _project_heads_hooked(self, x, batch, seq, output_range, setup,
                            training, policy, tokens=None):
    """As _project_heads, each projection passed through its hook point."""
    hidden = self.config.hidden_size
    qkv = tf.split(policy.projection(
        x, [tf.convert_to_tensor(l.kernel) for l in (self.query, self.key,
                                                      self.value)],
        [tf.convert_to_tensor(l.bias) for l in (self.query, self.key,
                                                self.value)]), 3, axis=1)
    q, k, v = [self.hooks[p](x, t, setup=setup, training=training,
                             policy=policy, tokens=tokens)
               for p, t in zip(("query", "key", "value"), qkv)]
    rows = seq
    if output_range is not None:
      q = first_positions(q, batch, seq, output_range)
      rows = output_range
    q, = self._split_heads(tf.reshape(q, [-1, hidden]), batch, rows, 1)
    k, v = self._split_heads(tf.concat([k, v], axis=1), batch, seq, 2)
    return q, k, v

  def call(self, x, mask_adder, batch, seq, setup=None, training=False,
           seed=None, output_range=None, policy=None, tokens=None):
    """Attention context before the output projection.

    Args:
      x: [batch * seq, H].
      mask_adder: [batch, 1, 1, seq] float32.
      batch, seq: scalar int32 tensors.
      setup: the ActiveSetup (None: no adapters).
      training: python bool.
      seed: optional stateless dropout seed.
      output_range: None (every position attends), or a python int k: only
        the first k positions of each example attend (their rows are the
        same numbers as in the whole computation, dropout masks included).
      policy: the KernelPolicy.
      tokens: the batch's adapters.gating.TokenLayout (for gated adapters).

    Returns:
      [batch * rows, H] with rows = seq, or k with output_range.
    """
    setup = setup or NO_ADAPTERS
    policy = kernels.policy_or_default(policy)
    rows = seq if output_range is None else output_range
    if any(self.hooks[p].is_active(setup) for p in ("query", "key", "value")):
      q, k, v = self._project_heads_hooked(x, batch, seq, output_range,
                                           setup, training, policy, tokens)
    else:
      q, k, v = self._project_heads(x, batch, seq, output_range, policy)
    if self.hooks["attention_keys_values"].is_active(setup):
      k, v, mask_adder = self.hooks["attention_keys_values"](
          k, v, mask_adder, setup=setup, training=training, policy=policy,
          tokens=tokens, x=x)
    # Scaled, masked softmax (float32, also under mixed precision), dropout,
    # times v.
    context = policy.attention_context(
        q, k, v, mask_adder, 1.0 / math.sqrt(self.head_size),
        self.config.attention_probs_dropout_prob, training,
        seed)  # [batch, heads, rows, head_size]
    context = tf.transpose(context, [0, 2, 1, 3])
    return tf.reshape(context, [batch * rows, self.config.hidden_size])

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    return base
