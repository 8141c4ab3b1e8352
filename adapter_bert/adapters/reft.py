"""ReFT (Wu et al. 2024): LoReFT, NoReFT and DiReFT, as AdapterHub 1.3.0.

Representation fine-tuning leaves the weights alone and edits hidden
states: after each chosen block (hook point "block_output"), at an
example's first `prefix_positions` positions and its last
`suffix_positions` real ones, h becomes

  h + (act(h·W + b) - h·P)·Pᵀ         (then dropout, while training)

with W [H, r], b [r] trained ("learned source"), P [H, r] the projection
onto an r-dimensional subspace, and act the `non_linearity` (none by
default). The three presets differ in P and in the subtraction:

  loreft   P has orthonormal columns (`orthogonality`), h·P subtracted
  noreft   P free, h·P subtracted
  direft   P free, nothing subtracted: h + act(h·W + b)·Pᵀ

Prefix and suffix positions get a unit (W, b, P) each, or share one with
`tied_weights`; AdapterHub builds both units untied even when one of the
position counts is 0, and counts both, so this file does too. A position
in both sets takes the suffix unit's value, as AdapterHub's scatter leaves
it; prefix positions count from the sequence's start ([CLS] first), suffix
positions end at its last real token ([SEP]).

The orthonormal P is torch's `orthogonal` parametrization of a Linear
weight [r, H], which AdapterHub saves as two tensors: `original` [r, H]
(trained) and `base` [H, H] (an orthogonal matrix, frozen):

  X = originalᵀ [H, r];  A = the part of X below its diagonal
  Q = H_1 ··· H_r · I[:, :r], H_i = I - 2·v_i·v_iᵀ / |v_i|², v_i = e_i + A[:, i]
  P = base · (Q with column i times the diagonal sign X[i, i])

At the start `original` is -I (Q = I[:, :r] after the signs) and `base` an
orthogonal completion of a random [H, r] (torch's right inverse). torch
takes the diagonal's integer part, which weight decay (it shrinks the
diagonal below 1 at the first step) turns to 0, zeroing P; here it is
rounded, so the signs survive decay. Both agree on every diagonal of +-1,
which is what AdapterHub writes when trained without weight decay.

AdapterHub saves no `subtract_projection` (a class attribute there, not a
field): a DiReFT it saves reads back, there and here, as NoReFT. Saved here
in AdapterHub's layout, the field is written, and AdapterHub sets it.
"""

import dataclasses
import math
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from adapter_bert.adapters import registry
from adapter_bert.adapters.bottleneck import BN_ACTIVATIONS
from adapter_bert.adapters.config import MethodConfig
from adapter_bert.adapters.config import OtherDefaults
from adapter_bert.adapters.config import check_choice
from adapter_bert.adapters.config import check_field_types
from adapter_bert.adapters.config import check_range
from adapter_bert.adapters.config import register_preset
from adapter_bert.adapters.hub_layout import AdapterHubLayout
from adapter_bert.adapters.hub_layout import HubTensor
from adapter_bert.errors import UserError


@dataclasses.dataclass(frozen=True)
class ReftConfig(MethodConfig):
  """AdapterHub's ReftConfig (architecture "reft"), LoReFT's defaults.

  Attributes:
    layers: "all", or the indices of the blocks to intervene after.
    prefix_positions: how many positions from the start are edited.
    suffix_positions: how many positions up to the last real token are.
    r: the subspace's rank.
    orthogonality: P kept with orthonormal columns (LoReFT).
    tied_weights: one unit for prefix and suffix positions.
    subtract_projection: h·P subtracted from the source (not in DiReFT).
    dropout: of the edited states, while training.
    non_linearity: None (identity) or a name of BN_ACTIVATIONS.
    dtype: AdapterHub's tensor dtype: None or "float32" here.
    output_reft: AdapterHub's one place (after each block): True.
    init_weights_seed: the seed of the units' initial values.
  """
  layers: Any = "all"
  prefix_positions: int = 3
  suffix_positions: int = 0
  r: int = 1
  orthogonality: bool = True
  tied_weights: bool = False
  subtract_projection: bool = True
  dropout: float = 0.05
  non_linearity: Optional[str] = None
  dtype: Optional[str] = None
  output_reft: bool = True
  init_weights_seed: Optional[int] = None
  kind: str = "reft"

  architecture = "reft"

  def __post_init__(self):
    check_field_types(self)
    check_choice(self, "kind", ("reft",))
    if self.layers != "all":
      if (not isinstance(self.layers, (list, tuple)) or any(
          isinstance(i, bool) or not isinstance(i, int) or i < 0
          for i in self.layers)):
        raise UserError("reft adapter config: layers=%r is neither 'all' nor "
                        "a list of block indices" % (self.layers,))
      object.__setattr__(self, "layers", tuple(self.layers))
    for field in ("prefix_positions", "suffix_positions"):
      check_range(self, field, 0)
    if not (self.prefix_positions or self.suffix_positions):
      raise UserError("reft adapter config: prefix_positions and "
                      "suffix_positions are both 0: nothing would be edited")
    check_range(self, "r", 1)
    check_range(self, "dropout", 0.0, 1.0, high_open=True)
    if self.non_linearity is not None:
      check_choice(self, "non_linearity", sorted(BN_ACTIVATIONS))
    check_choice(self, "dtype", (None, "float32"))
    check_choice(self, "output_reft", (True,))

  def to_dict(self):
    d = super().to_dict()
    if d["layers"] != "all":
      d["layers"] = list(d["layers"])
    return d

  def at_block(self, index):
    return self.layers == "all" or index in self.layers


@dataclasses.dataclass(frozen=True, eq=False)
class LoReftConfig(OtherDefaults, ReftConfig):
  """AdapterHub's LoReftConfig ("loreft"): ReftConfig's defaults."""


@dataclasses.dataclass(frozen=True, eq=False)
class NoReftConfig(OtherDefaults, ReftConfig):
  """AdapterHub's NoReftConfig ("noreft"): P not kept orthonormal."""
  orthogonality: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class DiReftConfig(OtherDefaults, ReftConfig):
  """AdapterHub's DiReftConfig ("direft"): no orthogonality, nothing
  subtracted."""
  orthogonality: bool = False
  subtract_projection: bool = False


def householder_projection(original, base):
  """P [H, r] of torch's orthogonal parametrization (module docstring)
  from `original` [r, H] and `base` [H, H]."""
  x = tf.transpose(original)  # [H, r]
  hidden, r = x.shape
  below = tf.linalg.band_part(x, -1, 0) - tf.linalg.band_part(x, 0, 0)
  eye = tf.eye(hidden, r, dtype=x.dtype)
  q = eye
  for i in reversed(range(r)):  # Q = H_1 ··· H_r · I[:, :r].
    v = below[:, i] + eye[:, i]  # [H]
    tau = 2.0 / tf.reduce_sum(v * v)
    q = q - tau * v[:, tf.newaxis] * tf.matmul(v[tf.newaxis], q)
  signs = tf.stop_gradient(tf.round(tf.linalg.diag_part(x)))  # [r]
  return tf.matmul(base, q * signs[tf.newaxis])


def _orthogonal_start(hidden, r, seed):
  """(original [r, H], base [H, H]) as torch's right inverse leaves them
  for a Linear weight drawn U(+-1/sqrt(H)): original = -I, base = the Q of
  the QR of [weightᵀ, random normal [H, H - r]]."""
  rng = np.random.default_rng(seed)
  bound = 1.0 / math.sqrt(hidden)
  stacked = np.concatenate([rng.uniform(-bound, bound, (hidden, r)),
                            rng.standard_normal((hidden, hidden - r))], 1)
  base, _ = np.linalg.qr(stacked)
  original = np.zeros((r, hidden))
  original[np.arange(r), np.arange(r)] = -1.0
  return original.astype(np.float32), base.astype(np.float32)


@keras.saving.register_keras_serializable(package="adapter_bert")
class ReftUnit(keras.layers.Layer):
  """One intervention h -> h + (act(h·W + b) - h·P)·Pᵀ (no subtraction in
  DiReFT), dropout while training.

  Variables (under the unit's scope): `learned_source/kernel` [H, r],
  `learned_source/bias` [r]; P as `projection/kernel` [H, r], or with
  orthogonality `projection/original` [r, H] (trained) and
  `projection/base` [H, H] (frozen).
  """

  def __init__(self, config, hidden, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.config, self.hidden = config, int(hidden)
    c, h = config, self.hidden
    bound = 1.0 / math.sqrt(h)  # torch's Linear: U(+-1/sqrt(in)).

    def uniform(offset):
      return keras.initializers.RandomUniform(
          -bound, bound, seed=None if seed is None else seed + offset)

    self.source_kernel = self.add_weight(name="source_kernel", shape=(h, c.r),
                                         initializer=uniform(0))
    self.source_bias = self.add_weight(name="source_bias", shape=(c.r,),
                                       initializer=uniform(1))
    if c.orthogonality:
      if c.r >= h:
        raise UserError("reft adapter config: orthogonality needs r < the "
                        "hidden size (r=%d, hidden size %d)" % (c.r, h))
      original, base = _orthogonal_start(h, c.r, seed)
      self.original = self.add_weight(
          name="original", shape=(c.r, h),
          initializer=keras.initializers.Constant(original))
      self.base = self.add_weight(
          name="base", shape=(h, h),
          initializer=keras.initializers.Constant(base), trainable=False)
    else:
      self.kernel = self.add_weight(name="projection", shape=(h, c.r),
                                    initializer=uniform(2))
    self._act = BN_ACTIVATIONS[c.non_linearity or "linear"]
    self.built = True

  def checkpoint_variables(self):
    items = [("learned_source/kernel", self.source_kernel),
             ("learned_source/bias", self.source_bias)]
    if self.config.orthogonality:
      return items + [("projection/original", self.original),
                      ("projection/base", self.base)]
    return items + [("projection/kernel", self.kernel)]

  def frozen_variables(self):
    return ["projection/base"] if self.config.orthogonality else []

  def projection(self):
    """P [H, r]."""
    if self.config.orthogonality:
      return householder_projection(self.original, self.base)
    return self.kernel

  def call(self, x, training=False):
    # x: [rows, H]
    dtype = x.dtype
    p = tf.cast(self.projection(), dtype)  # [H, r]
    source = self._act(tf.matmul(x, tf.cast(self.source_kernel, dtype))
                       + tf.cast(self.source_bias, dtype))  # [rows, r]
    if self.config.subtract_projection:
      source = source - tf.matmul(x, p)
    out = x + tf.matmul(source, p, transpose_b=True)
    if training and self.config.dropout > 0:
      out = tf.nn.dropout(out, rate=self.config.dropout)
    return out

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), hidden=self.hidden)
    return base


@keras.saving.register_keras_serializable(package="adapter_bert")
class ReftLayer(keras.layers.Layer):
  """A block's interventions ("block_output"): the prefix and suffix
  units (one if tied) at their positions of each example.

  Variables: each unit's, under `reft/unit_<k>/` (k = 0 prefix, 1 suffix).
  """

  uses_tokens = True  # Called with tokens= (each example's length).

  def __init__(self, config, hidden, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.config, self.hidden = config, int(hidden)
    n = 1 if config.tied_weights else 2
    self.units = [ReftUnit(config, hidden, seed=None if seed is None
                           else seed + 10 * k, name="unit_%d" % k)
                  for k in range(n)]
    self.built = True

  def checkpoint_variables(self):
    return [("reft/%s/%s" % (unit.name, name), v)
            for unit in self.units
            for name, v in unit.checkpoint_variables()]

  def frozen_variables(self):
    return ["reft/%s/%s" % (unit.name, name)
            for unit in self.units for name in unit.frozen_variables()]

  def call(self, x, training=False, policy=None, tokens=None):
    """x: [rows, H], each example's rows together (its first positions);
    tokens: the batch's adapters.gating.TokenLayout."""
    del policy
    c = self.config
    if tokens is None:
      raise ValueError("ReFT needs the batch's token layout")
    each = tf.shape(x)[0] // tokens.batch  # seq, or output_range's k.
    position = tf.tile(tf.range(each), [tokens.batch])  # [rows]
    lengths = tf.repeat(tf.cast(tf.reduce_sum(tokens.mask, axis=1), tf.int32),
                        each)  # [rows]
    prefix = position < c.prefix_positions
    suffix = (position >= lengths - c.suffix_positions) & (position < lengths)
    if c.tied_weights:
      edited = self.units[0](x, training=training)
      return tf.where((prefix | suffix)[:, tf.newaxis], edited, x)
    out = x
    if c.prefix_positions:
      out = tf.where(prefix[:, tf.newaxis], self.units[0](x, training=training),
                     out)
    if c.suffix_positions:
      out = tf.where(suffix[:, tf.newaxis], self.units[1](x, training=training),
                     out)
    return out

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), hidden=self.hidden)
    return base


def _layers_for(config, bert_config, where):
  if not isinstance(where, int) or not config.at_block(where):
    return {}
  seed = config.init_weights_seed
  return {"block_output": ReftLayer(
      config, bert_config.hidden_size,
      seed=None if seed is None else seed + 1000 * where, name="reft")}


def _adapterhub_layout():
  ours = "bert/encoder/layer_{layer}/output/reft/unit_{unit}/"
  theirs = "bert.encoder.layer.{layer}.reft_layer.refts.{adapter}.units.{unit}."
  units = {"unit": {"0": "0", "1": "1"}}
  return AdapterHubLayout(tuple(
      HubTensor(ours + o, theirs + t, transpose, shape, units)
      for o, t, transpose, shape in (
          ("learned_source/kernel", "learned_source.weight", True, None),
          ("learned_source/bias", "learned_source.bias", False, None),
          ("projection/kernel", "projection.weight", True, None),
          ("projection/original",
           "projection.parametrizations.weight.original", False, None),
          ("projection/base", "projection.parametrizations.weight.0.base",
           False, None))))


registry.register_method("reft", ReftConfig, _layers_for,
                         adapterhub=_adapterhub_layout())
register_preset("loreft", LoReftConfig())
register_preset("noreft", NoReftConfig())
register_preset("direft", DiReftConfig())
