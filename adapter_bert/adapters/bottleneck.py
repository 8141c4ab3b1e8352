"""Bottleneck adapters: adapter-bert's, and AdapterHub's family (BnConfig).

`adapter-bert` (kind "bottleneck", `AdapterConfig`): the reference's
x + W2·act(W1·x + b1) + b2 at the hook points of `AdapterConfig.locations`
(after the attention output and the feed-forward output, each before its
residual LayerNorm). With the base frozen, an adapter of this method trains
its bottlenecks and every LayerNorm (the embeddings' too), so it holds its
own copy of them. Fused kernels; the original checkpoint names.

AdapterHub's bottleneck family (kind "bn", `BnConfig`, with its field names
and defaults): `pfeiffer`/`seq_bn`, `houlsby`/`double_seq_bn`,
`parallel`/`par_bn`, `scaled_parallel`/`scaled_par_bn`, and with MAD-X's
invertible adapter on the embedding output `pfeiffer+inv`/`seq_bn_inv`,
`houlsby+inv`/`double_seq_bn_inv`. With h the
sub-layer's output (after its dropout), r its input and LN the block's
LayerNorm (frozen: these adapters train no LayerNorm):

  sequential:  residual = h (residual_before_ln=True)
               if original_ln_before: h = LN(h + r)   (residual = h + r
                                      with residual_before_ln="post_add")
               residual = h (residual_before_ln=False)
               up = s·W_up·act(W_down·[LN_before](h))   (then dropout)
               out = [LN_after](up) + residual
                     (or LN_after(up + residual) if adapter_residual_before_ln)
  parallel:    out = h + [LN_after](s·W_up·act(W_down·r))
  then, as without adapters: LN(out + r)   (original_ln_after=True)
  or out is the block's output itself      (original_ln_after=False; the
                                            last adapter of a stack decides)

s is `scaling` (a number, or a learned scalar or per-channel vector); a
sequential adapter's up output may be dropped per example while training
(`stochastic_depth`, before s).
"""

import dataclasses
import json
import math
from typing import Any, Optional, Tuple, Union

import keras
import tensorflow as tf

from adapter_bert.adapters import compacter
from adapter_bert.adapters import gating
from adapter_bert.adapters import registry
from adapter_bert.adapters.hub_layout import AdapterHubLayout
from adapter_bert.adapters.hub_layout import HubTensor
from adapter_bert.adapters.config import MethodConfig
from adapter_bert.adapters.config import check_field_types
from adapter_bert.adapters.config import check_choice
from adapter_bert.adapters.config import check_range
from adapter_bert.adapters.config import register_preset
from adapter_bert.compute import kernels
from adapter_bert.compute.activations import get_activation
from adapter_bert.errors import UserError


# Named places in a transformer block where an adapter can sit (Houlsby et al.
# 2019, Fig. 2): after the attention output projection and after the
# feed-forward output projection, each before its residual LayerNorm.
LOCATIONS = ("attention_output", "ffn_output")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """How adapters are added to BERT.

  Attributes:
    size: bottleneck width m; 0 means no adapters at all (plain BERT).
    init_scale: stddev of the truncated-normal init of both projections.
    activation: activation in the bottleneck (a name from activations.py).
    locations: where adapters are inserted, a subset of LOCATIONS.
    kind: the registered method ("bottleneck": this file's).
  """
  size: int = 64
  init_scale: float = 1e-3
  activation: str = "gelu"
  locations: tuple = LOCATIONS
  kind: str = "bottleneck"

  def __post_init__(self):
    check_field_types(self)
    # Lists from JSON become tuples so the config stays hashable.
    object.__setattr__(self, "locations", tuple(self.locations))
    if not isinstance(self.size, int) or self.size < 0:
      raise UserError("adapter size must be an integer >= 0, got %r" % (self.size,))
    if not self.init_scale > 0:
      raise UserError("adapter init_scale must be > 0, got %r" % (self.init_scale,))
    unknown = [loc for loc in self.locations if loc not in LOCATIONS]
    if unknown:
      raise UserError("unknown adapter location(s) %s; expected a subset of %s"
                      % (", ".join(unknown), ", ".join(LOCATIONS)))
    get_activation(self.activation)

  @property
  def enabled(self):
    return self.size > 0 and bool(self.locations)

  def to_dict(self):
    d = dataclasses.asdict(self)
    d["locations"] = list(self.locations)
    return d

  def to_json_string(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

  @classmethod
  def from_dict(cls, d):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise UserError("unknown adapter config key(s): %s" % ", ".join(unknown))
    return cls(**d)

  @classmethod
  def from_json_file(cls, path):
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
    except OSError as e:
      raise UserError("cannot read adapter config %s: %s" % (path, e.strerror))
    except ValueError as e:
      raise UserError("adapter config %s is not valid JSON: %s" % (path, e))
    return cls.from_dict(d)



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


def _resize(config, size, bert_config):
  """--adapter_size=m: the bottleneck's width."""
  del bert_config  # The width is the size itself.
  return dataclasses.replace(config, size=size)


registry.register_method(
    "bottleneck", AdapterConfig, _layers_for,
    owns_layer_norms=lambda config: True, resize=_resize, default=True,
    fusion_refusal=lambda config: (
        "AdapterFusion combines sequential bottleneck adapters (pfeiffer, "
        "houlsby, compacter, ...); adapter-bert adapters train their own "
        "LayerNorms"))

# The reference (adapter-bert) at the paper's sizes (Houlsby et al. 2019
# sweep {8, 64, 256}); 64 is the reference code's default. AdapterHub's
# names ("houlsby", "pfeiffer", "lora", ...) are registered below and by
# the files of their methods.
register_preset("adapter-bert", AdapterConfig())
register_preset("adapter-bert-8", AdapterConfig(size=8))
register_preset("adapter-bert-64", AdapterConfig(size=64))
register_preset("adapter-bert-256", AdapterConfig(size=256))
register_preset("none", AdapterConfig(size=0))


# ---------------------------------------------------------------------------
# AdapterHub's bottleneck family.
# ---------------------------------------------------------------------------

# AdapterHub's non-linearity names (transformers' activations): "gelu" is
# the erf GELU there, "gelu_new" the tanh form adapter-bert uses.
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
BN_ACTIVATIONS = {
    "relu": tf.nn.relu,
    "swish": tf.nn.silu,
    "silu": tf.nn.silu,
    "gelu": lambda x: 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0))),
    "gelu_new": lambda x: 0.5 * x * (1.0 + tf.tanh(
        _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))),
    "tanh": tf.tanh,
    "sigmoid": tf.sigmoid,
    "leakyrelu": lambda x: tf.nn.leaky_relu(x, alpha=0.01),
    "linear": lambda x: x,
}


@dataclasses.dataclass(frozen=True)
class BnConfig(MethodConfig):
  """AdapterHub's bottleneck config (its field names, meanings, defaults).

  Attributes (AdapterHub's; see the module docstring for the forward pass):
    mh_adapter: an adapter after the attention output ("attention_output").
    output_adapter: an adapter after the feed-forward output ("ffn_output").
    reduction_factor: bottleneck = hidden_size // reduction_factor; a number
      or a {"<layer index>" | "default": number} mapping.
    non_linearity: a name of BN_ACTIVATIONS.
    original_ln_before, original_ln_after, residual_before_ln,
    adapter_residual_before_ln, ln_before, ln_after: where the residual is
      taken and which LayerNorms run (module docstring).
    init_weights: "bert" (normal 0.02, biases 0), "mam_adapter" (down:
      uniform +-1/sqrt(hidden), up: zeros), "houlsby" (truncated normal
      0.01 within +-0.02).
    is_parallel: the adapter reads the sub-layer's input, side by side.
    scaling: a number, "learned" (a scalar) or "channel" (a vector).
    leave_out: block indices without adapters.
    dropout: dropout of the up projection's output while training.
    phm_layer and the phm_* fields: Compacter's PHM projections
      (adapters.compacter).
    use_gating: a per-example gate on the adapter's output (UniPELT;
      adapters.gating).
    stochastic_depth: while training, the up projection's output of a
      sequential adapter is dropped for a whole example with this
      probability (and kept ones scaled by 1 / (1 - p)): torchvision's
      StochasticDepth(mode="row"), as AdapterHub applies it (Adapter+).
    inv_adapter, cross_adapter are AdapterHub's; cross_adapter (it needs a
      decoder) is refused.
  """
  mh_adapter: bool = False
  output_adapter: bool = True
  reduction_factor: Any = 16
  non_linearity: str = "relu"
  original_ln_before: bool = True
  original_ln_after: bool = True
  ln_before: bool = False
  ln_after: bool = False
  init_weights: str = "bert"
  init_weights_seed: Optional[int] = None
  is_parallel: bool = False
  scaling: Union[float, str] = 1.0
  use_gating: bool = False
  residual_before_ln: Union[bool, str] = True
  adapter_residual_before_ln: bool = False
  inv_adapter: Optional[str] = None
  inv_adapter_reduction_factor: Optional[float] = None
  cross_adapter: bool = False
  leave_out: Tuple[int, ...] = ()
  dropout: float = 0.0
  phm_layer: bool = False
  phm_dim: int = 4
  factorized_phm_W: Optional[bool] = True
  shared_W_phm: Optional[bool] = False
  shared_phm_rule: Optional[bool] = True
  factorized_phm_rule: Optional[bool] = False
  phm_c_init: Optional[str] = "normal"
  phm_init_range: Optional[float] = 0.0001
  learn_phm: Optional[bool] = True
  hypercomplex_nonlinearity: Optional[str] = "glorot-uniform"
  phm_rank: Optional[int] = 1
  phm_bias: Optional[bool] = True
  stochastic_depth: Optional[float] = 0.0
  kind: str = "bn"

  architecture_aliases = ("bottleneck",)

  def __post_init__(self):
    check_field_types(self)
    object.__setattr__(self, "leave_out", tuple(self.leave_out))
    if isinstance(self.reduction_factor, dict):
      object.__setattr__(self, "reduction_factor",
                         dict(self.reduction_factor))
    if self.kind != "bn":
      raise UserError("BnConfig: kind must be 'bn', got %r" % (self.kind,))
    check_choice(self, "non_linearity", sorted(BN_ACTIVATIONS))
    check_choice(self, "init_weights", ("bert", "mam_adapter", "houlsby"))
    check_choice(self, "residual_before_ln", (True, False, "post_add"))
    if isinstance(self.scaling, str):
      check_choice(self, "scaling", ("learned", "channel"))
    else:
      check_range(self, "scaling", 0.0, low_open=False)
    check_range(self, "dropout", 0.0, 1.0)
    factors = (self.reduction_factor.values()
               if isinstance(self.reduction_factor, dict)
               else [self.reduction_factor])
    for factor in factors:
      if (isinstance(factor, bool) or not isinstance(factor, (int, float))
          or not factor > 0):
        raise UserError("bn adapter config: reduction_factor=%r must be a "
                        "number > 0 (or a mapping of them)"
                        % (self.reduction_factor,))
    if not (self.mh_adapter or self.output_adapter):
      raise UserError("bn adapter config: neither mh_adapter nor "
                      "output_adapter is set: the adapter would be nowhere")
    if self.inv_adapter is not None:
      if self.inv_adapter != "nice":
        raise UserError("bn adapter config: inv_adapter=%r is not supported "
                        "(only 'nice' is)" % (self.inv_adapter,))
      if (isinstance(self.inv_adapter_reduction_factor, bool)
          or not isinstance(self.inv_adapter_reduction_factor, (int, float))
          or not self.inv_adapter_reduction_factor > 0):
        raise UserError("bn adapter config: inv_adapter_reduction_factor=%r "
                        "must be a number > 0 with inv_adapter"
                        % (self.inv_adapter_reduction_factor,))
    if self.phm_layer:
      compacter.check_phm_config(self)
    if self.cross_adapter:
      raise UserError("bn adapter config: cross_adapter=True (cross-"
                      "attention adapters) needs a decoder; BERT has none")
    check_range(self, "stochastic_depth", 0.0, 1.0, high_open=True)

  def bottleneck_size(self, hidden_size, layer_index):
    factor = self.reduction_factor
    if isinstance(factor, dict):
      factor = factor.get(str(layer_index), factor.get("default"))
      if factor is None:
        raise UserError("bn adapter config: reduction_factor has no entry "
                        "for layer %d and no 'default'" % layer_index)
    return max(1, int(hidden_size // factor))


@keras.saving.register_keras_serializable(package="adapter_bert")
class BnAdapter(keras.layers.Layer):
  """One adapter of AdapterHub's bottleneck family at a residual hook point.

  Variables (checkpoint names under `.../adapters/`): `weights1` [H, m],
  `biases1` [1, m], `weights2` [m, H], `biases2` [1, H], or with phm_layer
  the PHM projections' `down/...` and `up/...` (adapters.compacter);
  `scaling` ([1] or [H]) if learned; `ln_before/{gamma,beta}`,
  `ln_after/{gamma,beta}` if set.
  """

  uses_block_residual = True  # Called with residual= and layer_norm=.
  uses_tokens = True  # Called with tokens= (gates, stochastic depth).

  @property
  def returns_block_output(self):
    """Whether the output is the block's output itself (no LN(. + r)
    after it): AdapterHub's original_ln_after=False."""
    return not self.config.original_ln_after

  def __init__(self, config, bottleneck_size, shared_rule=None, **kwargs):
    super().__init__(**kwargs)
    self.config = (config if isinstance(config, BnConfig)
                   else BnConfig.from_dict(config))
    self.bottleneck_size = int(bottleneck_size)
    self._act = BN_ACTIVATIONS[self.config.non_linearity]
    # Compacter's shared PHM rule (the model's; not a sub-layer here).
    self._shared_rule = registry.LayerRef(shared_rule)

  def build(self, input_shape):
    hidden, m, c = int(input_shape[-1]), self.bottleneck_size, self.config
    self.down = self.up = None
    if c.phm_layer:
      for what, size in (("hidden size %d" % hidden, hidden),
                         ("bottleneck size %d (hidden size %d // "
                          "reduction_factor %s)" % (m, hidden,
                                                    c.reduction_factor), m)):
        if size % c.phm_dim:
          raise UserError("bn adapter config with phm_layer: the %s is not "
                          "divisible by phm_dim=%d" % (what, c.phm_dim))
      rule = self._shared_rule.layer
      self.down = compacter.PHMLinear(c, hidden, m, rule, name="down")
      self.up = compacter.PHMLinear(c, m, hidden, rule, name="up")
      self._build_scaling_and_norms(hidden)
      super().build(input_shape)
      return
    if c.init_weights == "bert":
      down = up = keras.initializers.RandomNormal(stddev=0.02,
                                                  seed=c.init_weights_seed)
    elif c.init_weights == "houlsby":
      # Truncated at 2 standard deviations, as torch's trunc_normal_(a, b).
      down = up = keras.initializers.TruncatedNormal(
          stddev=1e-2, seed=c.init_weights_seed)
    else:  # mam_adapter: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
      bound = 1.0 / math.sqrt(hidden)
      down = keras.initializers.RandomUniform(-bound, bound,
                                              seed=c.init_weights_seed)
      up = "zeros"
    self.weights1 = self.add_weight(name="weights1", shape=(hidden, m),
                                    initializer=down)
    self.biases1 = self.add_weight(name="biases1", shape=(1, m),
                                   initializer="zeros")
    self.weights2 = self.add_weight(name="weights2", shape=(m, hidden),
                                    initializer=up)
    self.biases2 = self.add_weight(name="biases2", shape=(1, hidden),
                                   initializer="zeros")
    self._build_scaling_and_norms(hidden)
    super().build(input_shape)

  def _build_scaling_and_norms(self, hidden):
    c = self.config
    # AdapterHub: Linear(hidden, 1) with BERT's init (normal 0.02, bias 0).
    self.gate = (gating.Gate(hidden, 1, name="gate") if c.use_gating
                 else None)
    self.scaling = None
    if c.scaling in ("learned", "channel"):
      self.scaling = self.add_weight(
          name="scaling", shape=(1 if c.scaling == "learned" else hidden,),
          initializer="ones")
    self.norms = {}
    for which in ("ln_before", "ln_after"):
      if getattr(c, which):
        self.norms[which] = (
            self.add_weight(name=which + "_gamma", shape=(hidden,),
                            initializer="ones"),
            self.add_weight(name=which + "_beta", shape=(hidden,),
                            initializer="zeros"))

  def checkpoint_variables(self):
    """[(name relative to the hook point's scope, variable)]."""
    if self.down is not None:
      items = [("adapters/%s/%s" % (part.name, name), v)
               for part in (self.down, self.up)
               for name, v in part.checkpoint_variables()]
    else:
      items = [("adapters/" + name, getattr(self, name))
               for name in ("weights1", "biases1", "weights2", "biases2")]
    if self.scaling is not None:
      items.append(("adapters/scaling", self.scaling))
    for which, (gamma, beta) in self.norms.items():
      items += [("adapters/%s/gamma" % which, gamma),
                ("adapters/%s/beta" % which, beta)]
    if self.gate is not None:
      items += self.gate.checkpoint_variables("adapters/gate")
    return items

  def _norm(self, which, x):
    # AdapterHub's own LayerNorms: torch's default epsilon 1e-5.
    gamma, beta = self.norms[which]
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    x = (x - mean) * tf.math.rsqrt(variance + 1e-5)
    return x * tf.cast(gamma, x.dtype) + tf.cast(beta, x.dtype)

  def bottleneck(self, x, training, tokens=None):
    """s·W_up·act(W_down·[LN_before](x) + b1) + b2 (dropout and stochastic
    depth when training), times the gate of x when gated."""
    dtype, c = x.dtype, self.config
    gate_input = x
    if "ln_before" in self.norms:
      x = self._norm("ln_before", x)
    if self.down is not None:  # Compacter's PHM projections.
      h = self._act(self.down(x))  # [rows, m]
      up = self.up(h)  # [rows, H]
    else:
      h = self._act(tf.matmul(x, tf.cast(self.weights1, dtype))
                    + tf.cast(self.biases1, dtype))  # [rows, m]
      up = tf.matmul(h, tf.cast(self.weights2, dtype)) + tf.cast(
          self.biases2, dtype)  # [rows, H]
    if training and c.stochastic_depth > 0 and not c.is_parallel:
      up = _drop_examples(up, c.stochastic_depth, tokens)
    if self.scaling is not None:
      up = up * tf.cast(self.scaling, dtype)
    elif self.config.scaling != 1.0:
      up = up * tf.cast(self.config.scaling, dtype)
    if training and c.dropout > 0:
      up = tf.nn.dropout(up, rate=c.dropout)
    if self.gate is not None:
      up = up * gating.per_row(self.gate(gate_input, tokens), tokens, dtype)
    return up

  def pre_forward(self, x, residual, layer_norm, training=False,
                  policy=None):
    """AdapterHub's pre_forward of a sequential adapter: (the bottleneck's
    input, the adapter residual) from the sub-layer's output x and input
    `residual` (with the block's LayerNorm where `original_ln_before`)."""
    c = self.config
    h = x
    adapter_residual = h if c.residual_before_ln is True else None
    if c.original_ln_before:
      added = h + tf.cast(residual, h.dtype)
      if c.residual_before_ln == "post_add":
        adapter_residual = added
      h = tf.cast(layer_norm(added, training=training, policy=policy),
                  x.dtype)
    if c.residual_before_ln is False:
      adapter_residual = h
    return h, adapter_residual

  def call(self, x, residual=None, layer_norm=None, training=False,
           policy=None, tokens=None):
    """x: the sub-layer's output h [rows, H]; residual: its input r;
    layer_norm: the block's LayerNorm there; tokens: the batch's
    TokenLayout (gates). Returns what LN(. + r) takes."""
    c = self.config
    if c.is_parallel:
      up = self.bottleneck(tf.cast(residual, x.dtype), training, tokens)
      if "ln_after" in self.norms:
        up = self._norm("ln_after", up)
      return x + up
    h, adapter_residual = self.pre_forward(x, residual, layer_norm,
                                           training, policy)
    up = self.bottleneck(h, training, tokens)
    if c.adapter_residual_before_ln:
      out = up + adapter_residual
      return self._norm("ln_after", out) if "ln_after" in self.norms else out
    if "ln_after" in self.norms:
      up = self._norm("ln_after", up)
    return up + adapter_residual

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(),
                bottleneck_size=self.bottleneck_size)
    return base


def _drop_examples(x, rate, tokens):
  """Stochastic depth over examples: x [rows, H] with each example's rows
  together (tokens: adapters.gating.TokenLayout) is zeroed for a whole
  example with probability `rate`, and the rest scaled by 1 / (1 - rate)."""
  if tokens is None:
    raise ValueError("stochastic depth needs the batch's token layout")
  keep = 1.0 - rate
  per_example = tf.cast(
      tf.random.uniform([tokens.batch]) < keep, x.dtype) / tf.cast(
          keep, x.dtype)  # [batch]
  rows_each = tf.shape(x)[0] // tokens.batch  # seq, or output_range's k.
  return x * tf.repeat(per_example, rows_each)[:, tf.newaxis]


@keras.saving.register_keras_serializable(package="adapter_bert")
class InvertibleAdapter(keras.layers.Layer):
  """The NICE coupling block of MAD-X's invertible adapters (AdapterHub's
  `NICECouplingBlock`) on the embedding output.

  x = [x1, x2] (first H//2 channels, the rest);
  y1 = x1 + F(x2), y2 = x2 + G(y1), out = [y1, y2], where F and G are
  dense(d -> d // reduction_factor), the config's non-linearity, dense(->
  the other half). The inverse (x2 = y2 - G(y1), x1 = y1 - F(x2)) is what a
  language-model head would take; a classifier never needs it.

  Variables (under `bert/embeddings/invertible_adapter/`): `F/weights1`,
  `F/biases1`, `F/weights2`, `F/biases2`, and `G/...` (BERT init: normal
  0.02, zero biases).
  """

  def __init__(self, non_linearity="relu", reduction_factor=2, **kwargs):
    super().__init__(**kwargs)
    self.non_linearity = non_linearity
    self.reduction_factor = reduction_factor
    self._act = BN_ACTIVATIONS[non_linearity]

  def build(self, input_shape):
    hidden = int(input_shape[-1])
    self.split1, self.split2 = hidden // 2, hidden - hidden // 2
    init = keras.initializers.RandomNormal(stddev=0.02)
    self.subnets = {}
    for net, d_in, d_out in (("F", self.split2, self.split1),
                             ("G", self.split1, self.split2)):
      m = int(d_in // self.reduction_factor)
      self.subnets[net] = tuple(
          self.add_weight(name="%s_%s" % (net, name), shape=shape,
                          initializer=initializer)
          for name, shape, initializer in (
              ("weights1", (d_in, m), init), ("biases1", (m,), "zeros"),
              ("weights2", (m, d_out), init), ("biases2", (d_out,), "zeros")))
    super().build(input_shape)

  def checkpoint_variables(self):
    return [("invertible_adapter/%s/%s" % (net, name), variable)
            for net in ("F", "G")
            for name, variable in zip(("weights1", "biases1", "weights2",
                                       "biases2"), self.subnets[net])]

  def _subnet(self, net, x):
    w1, b1, w2, b2 = (tf.cast(v, x.dtype) for v in self.subnets[net])
    return tf.matmul(self._act(tf.matmul(x, w1) + b1), w2) + b2

  def call(self, x, training=False, policy=None, reverse=False):
    # x: [tokens, H]
    x1, x2 = x[:, :self.split1], x[:, self.split1:]
    if not reverse:
      y1 = x1 + self._subnet("F", x2)
      y2 = x2 + self._subnet("G", y1)
    else:
      y2 = x2 - self._subnet("G", x1)
      y1 = x1 - self._subnet("F", y2)
    return tf.concat([y1, y2], axis=-1)

  def get_config(self):
    base = super().get_config()
    base.update(non_linearity=self.non_linearity,
                reduction_factor=self.reduction_factor)
    return base


def _bn_layers_for(config, bert_config, where, shared=None):
  if where == "embeddings":
    if not config.inv_adapter:
      return {}
    layer = InvertibleAdapter(config.non_linearity,
                              config.inv_adapter_reduction_factor,
                              name="invertible_adapter")
    layer.build((None, bert_config.hidden_size))
    return {"embedding_output": layer}
  if where in config.leave_out:
    return {}
  layers = {}
  for point, wanted in (("attention_output", config.mh_adapter),
                        ("ffn_output", config.output_adapter)):
    if wanted:
      layer = BnAdapter(config, config.bottleneck_size(
          bert_config.hidden_size, where), shared_rule=shared, name=point)
      layer.build((None, bert_config.hidden_size))
      layers[point] = layer
  return layers


def _bn_resize(config, size, bert_config):
  """--adapter_size=m: AdapterHub's reduction factor hidden_size / m."""
  if size < 1:
    raise UserError("a bottleneck needs a size >= 1")
  return config.replace(reduction_factor=bert_config.hidden_size / size)


def _adapterhub_layout():
  """AdapterHub's names of a bn adapter's variables (see hub_layout)."""
  places = {"place": {"attention/output": "attention.output",
                      "output": "output"}}
  ours = "bert/encoder/layer_{layer}/{place}/adapters/"
  theirs = "bert.encoder.layer.{layer}.{place}.adapters.{adapter}."
  tensors = [HubTensor(ours + o, theirs + t, transpose, shape, places)
             for o, t, transpose, shape in (
                 ("weights1", "adapter_down.0.weight", True, None),
                 ("biases1", "adapter_down.0.bias", False, "vector"),
                 ("weights2", "adapter_up.weight", True, None),
                 ("biases2", "adapter_up.bias", False, "vector"),
                 ("scaling", "scaling", False, None),
                 ("ln_before/gamma", "adapter_norm_before.weight", False,
                  None),
                 ("ln_before/beta", "adapter_norm_before.bias", False, None),
                 ("ln_after/gamma", "adapter_norm_after.weight", False, None),
                 ("ln_after/beta", "adapter_norm_after.bias", False, None),
                 ("gate/kernel", "gate.weight", True, None),
                 ("gate/bias", "gate.bias", False, None))]
  # The invertible adapter's two subnets: Sequential(Linear, act, Linear).
  for o, t, transpose in (("weights1", "0.weight", True),
                          ("biases1", "0.bias", False),
                          ("weights2", "2.weight", True),
                          ("biases2", "2.bias", False)):
    tensors.append(HubTensor(
        "bert/embeddings/invertible_adapter/{net}/" + o,
        "bert.invertible_adapters.{adapter}.{net}." + t, transpose,
        choices={"net": {"F": "F", "G": "G"}}))
  return AdapterHubLayout(tuple(tensors)) + compacter.adapterhub_layout(
      ours, theirs, places)


registry.register_method(
    "bn", BnConfig, _bn_layers_for, shared_for=compacter.shared_for,
    resize=_bn_resize, adapterhub=_adapterhub_layout(),
    # AdapterHub's bottleneck configs name no architecture.
    recognizes=lambda d: "reduction_factor" in d or "mh_adapter" in d,
    fusion_refusal=lambda config: (
        "AdapterFusion combines sequential bottleneck adapters, not "
        "parallel ones" if config.is_parallel else None))

# AdapterHub's presets, under both of its names for each.
SEQ_BN = BnConfig()
DOUBLE_SEQ_BN = BnConfig(mh_adapter=True, output_adapter=True,
                         non_linearity="swish", original_ln_before=False)
PAR_BN = BnConfig(reduction_factor=2, original_ln_before=False,
                  init_weights="mam_adapter", is_parallel=True, scaling=4.0)
SCALED_PAR_BN = BnConfig(reduction_factor=2, original_ln_before=False,
                         init_weights="mam_adapter", is_parallel=True,
                         scaling="learned")
SEQ_BN_INV = dataclasses.replace(SEQ_BN, inv_adapter="nice",
                                 inv_adapter_reduction_factor=2)
DOUBLE_SEQ_BN_INV = dataclasses.replace(DOUBLE_SEQ_BN, inv_adapter="nice",
                                        inv_adapter_reduction_factor=2)
# Compacter (on houlsby) and Compacter++ (on pfeiffer): PHM projections.
COMPACTER = dataclasses.replace(DOUBLE_SEQ_BN, phm_layer=True,
                                reduction_factor=32, non_linearity="gelu")
COMPACTER_PP = dataclasses.replace(SEQ_BN, phm_layer=True,
                                   reduction_factor=32, non_linearity="gelu")
for _names, _config in ((("pfeiffer", "seq_bn"), SEQ_BN),
                        (("houlsby", "double_seq_bn"), DOUBLE_SEQ_BN),
                        (("pfeiffer+inv", "seq_bn_inv"), SEQ_BN_INV),
                        (("houlsby+inv", "double_seq_bn_inv"),
                         DOUBLE_SEQ_BN_INV),
                        (("parallel", "par_bn"), PAR_BN),
                        (("scaled_parallel", "scaled_par_bn"), SCALED_PAR_BN),
                        (("compacter",), COMPACTER),
                        (("compacter++",), COMPACTER_PP)):
  for _name in _names:
    register_preset(_name, _config)
