"""Prefix tuning (Li & Liang 2021), as AdapterHub has it.

Each block's self-attention gets `prefix_length` extra keys and values in
front of its own, which every position attends to (the padding mask does
not cover them):

  keys   = [P_k(l); x·W_k + b_k]      [batch, heads, prefix + seq, size]
  values = [P_v(l); x·W_v + b_v]

While training, the prefixes of all blocks come from one reparametrisation
MLP at the model level (AdapterHub's `PrefixTuning`):

  E [prefix, H] (an embedding of positions 0..prefix-1)
  [P_k(0) P_v(0) P_k(1) P_v(1) ...] = act(E·W1 + b1)·W2 + b2
                                      [prefix, n_layers * 2 * H]

with dropout on that output while training. `flat=True` trains the
prefixes themselves instead (one [prefix, H] key and value variable per
block). What is saved and served is always the flat form: the MLP's output,
computed once (AdapterHub's `eject_prefix_tuning`); an adapter directory of
prefix tuning holds the plain prefixes and a config with `flat=True`.

Checkpoint names: the MLP under `bert/prefix_tuning/` (`wte`,
`control_trans/dense_0/{kernel,bias}`, `control_trans/dense_1/...`), the
prefixes under each block's `attention/self/prefix_tuning/{keys,values}`.
"""

import dataclasses
import math
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from adapter_bert.adapters import gating
from adapter_bert.adapters import registry
from adapter_bert.adapters.bottleneck import BN_ACTIVATIONS
from adapter_bert.adapters.hub_layout import AdapterHubLayout
from adapter_bert.adapters.hub_layout import HubGroup
from adapter_bert.adapters.hub_layout import HubTensor
from adapter_bert.adapters.config import MethodConfig
from adapter_bert.adapters.config import check_field_types
from adapter_bert.adapters.config import check_choice
from adapter_bert.adapters.config import check_range
from adapter_bert.adapters.config import register_preset
from adapter_bert.errors import UserError


@dataclasses.dataclass(frozen=True)
class PrefixTuningConfig(MethodConfig):
  """AdapterHub's PrefixTuningConfig fields and defaults.

  Attributes:
    encoder_prefix, cross_prefix: AdapterHub's (encoder-decoder models);
      a BERT encoder has self-attention only, so only encoder_prefix counts.
    leave_out: block indices without prefixes.
    flat: train the prefixes directly (no MLP).
    prefix_length: prefix positions per block.
    bottleneck_size: the MLP's hidden width.
    non_linearity: the MLP's activation (a name of BN_ACTIVATIONS).
    dropout: dropout on the prefixes while training.
    use_gating: a per-example gate on each block's prefixes, from the
      attention input (UniPELT; adapters.gating); shared_gating: one gate
      for keys and values (else one each).
    init_weights_seed: seed of the initial values.
  """
  encoder_prefix: bool = True
  cross_prefix: bool = True
  leave_out: Tuple[int, ...] = ()
  flat: bool = False
  prefix_length: int = 30
  bottleneck_size: int = 512
  non_linearity: str = "tanh"
  dropout: float = 0.0
  use_gating: bool = False
  shared_gating: bool = True
  init_weights_seed: Optional[int] = None
  kind: str = "prefix_tuning"

  architecture = "prefix_tuning"

  def __post_init__(self):
    check_field_types(self)
    object.__setattr__(self, "leave_out", tuple(self.leave_out))
    check_choice(self, "kind", ("prefix_tuning",))
    check_choice(self, "non_linearity", sorted(BN_ACTIVATIONS))
    for field in ("prefix_length", "bottleneck_size"):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError("prefix_tuning adapter config: %s=%r must be an "
                        "integer >= 1" % (field, value))
    check_range(self, "dropout", 0.0, 1.0)
    if not self.encoder_prefix:
      raise UserError("prefix_tuning adapter config: encoder_prefix=False "
                      "puts no prefix anywhere in a BERT encoder")

  def layers_with_prefixes(self, num_layers):
    """The block indices that get prefixes, in order."""
    return [i for i in range(num_layers) if i not in self.leave_out]


def _torch_linear_init(fan_in, seed):
  # nn.Linear's default: weight and bias U(+-1/sqrt(fan_in)).
  bound = 1.0 / math.sqrt(fan_in)
  return keras.initializers.RandomUniform(-bound, bound, seed=seed)


def _dropout(x, rate, training):
  if training and rate > 0:
    return tf.nn.dropout(x, rate=rate)
  return x


@keras.saving.register_keras_serializable(package="adapter_bert")
class PrefixPool(keras.layers.Layer):
  """The model-level reparametrisation MLP of one prefix tuning adapter.

  Variables (names under `bert/`): `prefix_tuning/wte` [prefix, H],
  `prefix_tuning/control_trans/dense_0/{kernel [H, B], bias [B]}`,
  `prefix_tuning/control_trans/dense_1/{kernel [B, n * 2H], bias [n * 2H]}`
  for n blocks with prefixes.
  """

  def __init__(self, config, hidden_size, num_prefix_layers, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.hidden_size = int(hidden_size)
    self.num_prefix_layers = int(num_prefix_layers)
    c, h = config, self.hidden_size
    seed = c.init_weights_seed
    self.wte = self.add_weight(
        name="wte", shape=(c.prefix_length, h),
        initializer=keras.initializers.RandomNormal(stddev=1.0, seed=seed))
    self.kernel_0 = self.add_weight(
        name="kernel_0", shape=(h, c.bottleneck_size),
        initializer=_torch_linear_init(h, seed))
    self.bias_0 = self.add_weight(
        name="bias_0", shape=(c.bottleneck_size,),
        initializer=_torch_linear_init(h, seed))
    out = self.num_prefix_layers * 2 * h
    self.kernel_1 = self.add_weight(
        name="kernel_1", shape=(c.bottleneck_size, out),
        initializer=_torch_linear_init(c.bottleneck_size, seed))
    self.bias_1 = self.add_weight(
        name="bias_1", shape=(out,),
        initializer=_torch_linear_init(c.bottleneck_size, seed))
    self.built = True

  def checkpoint_variables(self):
    """[(name under `bert/`, variable)]."""
    return [("prefix_tuning/wte", self.wte),
            ("prefix_tuning/control_trans/dense_0/kernel", self.kernel_0),
            ("prefix_tuning/control_trans/dense_0/bias", self.bias_0),
            ("prefix_tuning/control_trans/dense_1/kernel", self.kernel_1),
            ("prefix_tuning/control_trans/dense_1/bias", self.bias_1)]

  def serving_checkpoint_variables(self):
    return []  # Served as each block's computed prefixes.

  def prefixes(self, index, training=False):
    """(keys, values) [prefix, H] of the index-th block with prefixes: its
    columns of the MLP's output (the other blocks' are not computed)."""
    h = self.hidden_size
    act = BN_ACTIVATIONS[self.config.non_linearity]
    hidden = act(tf.matmul(self.wte, self.kernel_0) + self.bias_0)  # [P, B]
    start = index * 2 * h
    kernel = self.kernel_1[:, start:start + 2 * h]  # [B, 2H]
    bias = self.bias_1[start:start + 2 * h]
    kv = _dropout(tf.matmul(hidden, kernel) + bias, self.config.dropout,
                  training)  # [P, 2H]
    return kv[:, :h], kv[:, h:]

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), hidden_size=self.hidden_size,
                num_prefix_layers=self.num_prefix_layers)
    return base



@keras.saving.register_keras_serializable(package="adapter_bert")
class PrefixLayer(keras.layers.Layer):
  """One block's prefixes, put in front of its keys and values (the
  `attention_keys_values` hook point).

  With a pool (training form), the prefixes are the pool's output for this
  block; flat, they are this layer's variables `prefix_tuning/keys` and
  `prefix_tuning/values` [prefix, H]. Gated, `prefix_tuning/gate/{kernel,
  bias}` scale them per example.
  """

  uses_tokens = True  # Called with tokens= and x= (the attention input).

  def __init__(self, config, hidden_size, num_heads, index, pool=None,
               **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.hidden_size = int(hidden_size)
    self.num_heads = int(num_heads)
    self.index = int(index)
    self._pool = registry.LayerRef(pool) if pool is not None else None
    if pool is None:
      init = keras.initializers.RandomNormal(stddev=1.0,
                                             seed=config.init_weights_seed)
      shape = (config.prefix_length, self.hidden_size)
      self.keys = self.add_weight(name="keys", shape=shape, initializer=init)
      self.values_ = self.add_weight(name="values", shape=shape,
                                     initializer=init)
    # AdapterHub: Linear(H, 1 or 2), weight normal 0.02, torch's bias.
    self.gate = (gating.Gate(self.hidden_size, 1 if config.shared_gating
                             else 2, torch_bias=True, name="gate")
                 if config.use_gating else None)
    self.built = True

  def checkpoint_variables(self):
    """[(name relative to `attention/self/`, variable)]: the flat prefixes;
    none with a pool (its variables are listed once, at the model)."""
    items = [] if self._pool is not None else [
        ("prefix_tuning/keys", self.keys),
        ("prefix_tuning/values", self.values_)]
    return items + self._gate_variables()

  def _gate_variables(self):
    if self.gate is None:
      return []
    return self.gate.checkpoint_variables("prefix_tuning/gate")

  def serving_variables(self):
    """[(name, tensor)] of the prefixes as saved and served."""
    keys, values = self.prefixes(training=False)
    return ([("prefix_tuning/keys", keys), ("prefix_tuning/values", values)]
            + self._gate_variables())

  def prefixes(self, training=False):
    """(keys, values) [prefix, H]."""
    if self._pool is not None:
      return self._pool.layer.prefixes(self.index, training)
    return (_dropout(tf.convert_to_tensor(self.keys), self.config.dropout,
                     training),
            _dropout(tf.convert_to_tensor(self.values_), self.config.dropout,
                     training))

  def call(self, k, v, mask_adder, training=False, policy=None, tokens=None,
           x=None):
    """k, v: [batch, heads, seq, size]; mask_adder: [batch, 1, 1, seq];
    tokens, x: the batch's TokenLayout and the attention input [rows, H]
    (gates).

    Returns:
      (k, v) [batch, heads, prefix + seq, size], mask_adder [batch, 1, 1,
      prefix + seq] (0 at the prefixes: always attended).
    """
    del policy
    batch = tf.shape(k)[0]
    length = self.config.prefix_length
    size = self.hidden_size // self.num_heads

    def per_head(p):  # [P, H] -> [batch, heads, P, size]
      p = tf.transpose(tf.reshape(tf.cast(p, k.dtype),
                                  [length, self.num_heads, size]), [1, 0, 2])
      return tf.tile(p[tf.newaxis], [batch, 1, 1, 1])

    keys, values = self.prefixes(training)
    keys, values = per_head(keys), per_head(values)
    if self.gate is not None:
      g = tf.cast(self.gate(tf.cast(x, k.dtype), tokens), k.dtype)  # [b, 1|2]
      keys *= g[:, 0, tf.newaxis, tf.newaxis, tf.newaxis]
      values *= g[:, -1, tf.newaxis, tf.newaxis, tf.newaxis]
    k = tf.concat([keys, k], axis=2)
    v = tf.concat([values, v], axis=2)
    mask_adder = tf.concat(
        [tf.zeros([batch, 1, 1, length], mask_adder.dtype), mask_adder],
        axis=-1)
    return k, v, mask_adder

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), hidden_size=self.hidden_size,
                num_heads=self.num_heads, index=self.index)
    return base


def _shared_for(config, bert_config):
  if config.flat:
    return None
  n = len(config.layers_with_prefixes(bert_config.num_hidden_layers))
  if n == 0:
    return None
  return PrefixPool(config, bert_config.hidden_size, n, name="prefix_tuning")


def _layers_for(config, bert_config, where, shared=None):
  if where == "embeddings" or where in config.leave_out:
    return {}
  index = config.layers_with_prefixes(bert_config.num_hidden_layers).index(
      where)
  return {"attention_keys_values": PrefixLayer(
      config, bert_config.hidden_size, bert_config.num_attention_heads, index,
      pool=shared, name="prefix_tuning")}


def _serving_config(config):
  return config.replace(flat=True)


def _split_flat(value, config, bert_config):
  """AdapterHub's flat control_trans [P * 2L * H] -> each block's keys and
  values [P, H] (the keys of the i-th block with prefixes at 2i, its values
  at 2i + 1, as the MLP's output is laid out).

  Raises:
    UserError: if the size does not fit the config and the base.
  """
  kept = config.layers_with_prefixes(bert_config.num_hidden_layers)
  length, h = config.prefix_length, bert_config.hidden_size
  if value.size != length * 2 * len(kept) * h:
    raise UserError("flat prefixes of %d values; a prefix length %d over %d "
                    "blocks of width %d needs %d" % (
                        value.size, length, len(kept), h,
                        length * 2 * len(kept) * h))
  grid = value.reshape(length, 2 * len(kept), h)
  out = {}
  for i, layer in enumerate(kept):
    scope = "bert/encoder/layer_%d/attention/self/prefix_tuning/" % layer
    out[scope + "keys"] = grid[:, 2 * i]
    out[scope + "values"] = grid[:, 2 * i + 1]
  return out


def _join_flat(values, config, bert_config):
  """The inverse of _split_flat."""
  kept = config.layers_with_prefixes(bert_config.num_hidden_layers)
  grid = np.zeros((config.prefix_length, 2 * len(kept),
                   bert_config.hidden_size), np.float32)
  for i, layer in enumerate(kept):
    scope = "bert/encoder/layer_%d/attention/self/prefix_tuning/" % layer
    grid[:, 2 * i] = values[scope + "keys"]
    grid[:, 2 * i + 1] = values[scope + "values"]
  return grid.reshape(-1)


def _adapterhub_layout():
  """AdapterHub's names: its PrefixTuning module (embedding `wte`, MLP
  `control_trans` = Sequential(Linear, act, Linear), or one flat
  `control_trans` tensor), each block's gate, and each block's copy of the
  pool, which is read once, from the model level."""
  stem = "bert.prefix_tuning.prefix_tunings.{adapter}.self_prefix."
  mlp = {"dense": {"dense_0": "0", "dense_1": "2"}}
  return AdapterHubLayout(
      tensors=(
          HubTensor("bert/prefix_tuning/wte", stem + "wte.weight"),
          HubTensor("bert/prefix_tuning/control_trans/{dense}/kernel",
                    stem + "control_trans.{dense}.weight", transpose=True,
                    choices=mlp),
          HubTensor("bert/prefix_tuning/control_trans/{dense}/bias",
                    stem + "control_trans.{dense}.bias", choices=mlp),
          HubTensor("bert/encoder/layer_{layer}/attention/self/prefix_tuning/"
                    "gate/kernel", "bert.encoder.layer.{layer}.attention.self."
                    "prefix_tuning.prefix_gates.{adapter}.weight",
                    transpose=True),
          HubTensor("bert/encoder/layer_{layer}/attention/self/prefix_tuning/"
                    "gate/bias", "bert.encoder.layer.{layer}.attention.self."
                    "prefix_tuning.prefix_gates.{adapter}.bias")),
      skip=(r"^bert\.encoder\.layer\.\d+\.attention\.self\."
            r"prefix_tuning\.pool\.",),
      groups=(HubGroup(stem + "control_trans",
                       r"^bert/encoder/layer_\d+/attention/self/"
                       r"prefix_tuning/(keys|values)$",
                       _split_flat, _join_flat),))


registry.register_method("prefix_tuning", PrefixTuningConfig, _layers_for,
                         shared_for=_shared_for,
                         serving_config=_serving_config,
                         adapterhub=_adapterhub_layout())

PREFIX_TUNING = PrefixTuningConfig()
PREFIX_TUNING_FLAT = PrefixTuningConfig(flat=True)
register_preset("prefix_tuning", PREFIX_TUNING)
register_preset("prefix_tuning_flat", PREFIX_TUNING_FLAT)
