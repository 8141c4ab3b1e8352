"""VeRA (Kopiczko et al. 2024), as AdapterHub 1.3.0 has it ("vera").

VeRA is LoRA whose two low-rank matrices are random, frozen and shared by
every projection the adapter sits on; each projection trains two scalings
around them. For a projection y = x·W + b (the projection hook points, as
LoRA's):

  y + dropout(x)·A·D·B·V·alpha/r
    A [in, r], B [r, out]  the adapter's shared random pair, frozen
                           (model level: bert/adapters/lora_A, lora_B)
    D [r, r]               `vera_D`, trained, starts as vera_d·I
    V [out, out]           `vera_B`, trained, starts as vera_b·I

The paper trains diagonals only (vectors d [r] and b [out]). AdapterHub
1.3.0 trains D and V as full matrices that start diagonal, and saves them
so; this file follows AdapterHub, so that its adapters load and its counts
hold: on BERT-base (q and v) 12 x 2 x (8^2 + 768^2) = 14,157,312 trained
parameters, with the shared pair's 2 x 8 x 768 = 12,288 frozen (AdapterHub's
`adapter_summary` counts those too).

The shared pair is drawn once per adapter from `init_weights`: "vera"
(kaiming uniform, bound sqrt(6 / fan_in), AdapterHub's default), "lora",
"bert" or "ia3" (as for LoRA), seeded by `init_weights_seed`; it is saved
with the adapter, as AdapterHub saves it. As in AdapterHub, one pair serves
every projection, so the projections chosen must share one shape (the
attention's q, k, v; or the intermediate alone; or the output alone).

VeRA folds into the weights (`merge_adapter`): W + A·D·B·V·alpha/r.
"""

import dataclasses
from typing import Optional, Tuple

import keras
import tensorflow as tf

from adapter_bert.adapters import gating
from adapter_bert.adapters import registry
from adapter_bert.adapters.config import MethodConfig
from adapter_bert.adapters.config import check_choice
from adapter_bert.adapters.config import check_field_types
from adapter_bert.adapters.config import register_preset
from adapter_bert.adapters.hub_layout import AdapterHubLayout
from adapter_bert.adapters.hub_layout import HubTensor
from adapter_bert.adapters.lora import check_low_rank
from adapter_bert.adapters.lora import hook_points_of
from adapter_bert.adapters.lora import HUB_PLACES
from adapter_bert.adapters.lora import HUB_SCOPE
from adapter_bert.adapters.lora import OURS_SCOPE
from adapter_bert.adapters.lora import pair_initializers
from adapter_bert.adapters.lora import projection_shape
from adapter_bert.errors import UserError

# The shared pair's checkpoint names, relative to `bert/`.
SHARED_A = "adapters/lora_A"
SHARED_B = "adapters/lora_B"


@dataclasses.dataclass(frozen=True)
class VeraConfig(MethodConfig):
  """AdapterHub's VeraConfig (architecture "lora", told apart from LoRA by
  float `vera_d` / `vera_b`).

  Attributes:
    selfattn_lora, intermediate_lora, output_lora, leave_out, r, alpha,
      dropout, attn_matrices, use_gating: as LoRAConfig's.
    composition_mode: "add" (the only one VeRA has).
    init_weights: how the shared pair is drawn: "vera", "lora", "bert" or
      "ia3".
    init_weights_seed: the shared pair's (and the gate's) seed.
    vera_d: D's diagonal at the start.
    vera_b: V's diagonal at the start (0: the adapter starts as the
      identity).
    use_dora: False (True makes it AdapterHub's DVoRA, another method).
    dtype: AdapterHub's.
  """
  selfattn_lora: bool = True
  intermediate_lora: bool = False
  output_lora: bool = False
  leave_out: Tuple[int, ...] = ()
  r: int = 8
  alpha: float = 8
  dropout: float = 0.0
  attn_matrices: Tuple[str, ...] = ("q", "v")
  composition_mode: str = "add"
  init_weights: str = "vera"
  init_weights_seed: Optional[int] = None
  use_gating: bool = False
  use_dora: bool = False
  vera_d: float = 0.1
  vera_b: float = 0.0
  dtype: Optional[str] = None
  kind: str = "vera"

  architecture = "lora"
  dora = False  # The use_dora value of this class's configs.

  def __post_init__(self):
    check_field_types(self)
    object.__setattr__(self, "leave_out", tuple(self.leave_out))
    object.__setattr__(self, "attn_matrices", tuple(self.attn_matrices))
    check_choice(self, "kind", (self.kind_name(),))
    check_choice(self, "composition_mode", ("add",))
    check_choice(self, "init_weights", ("vera", "lora", "bert", "ia3"))
    check_low_rank(self)
    if self.use_dora != type(self).dora:
      raise UserError("%s adapter config: use_dora=%r makes it another "
                      "method's config (AdapterHub's config map names it)"
                      % (self.kind, self.use_dora))

  def hook_points(self):
    return hook_points_of(self)


def _recognizes(d):
  """AdapterHub's test: a "lora" config with a float vera_d or vera_b (and
  here without use_dora, which makes it another method's)."""
  return d.get("use_dora") is not True and (
      isinstance(d.get("vera_d"), float)
      or isinstance(d.get("vera_b"), float))


def _pair_shape(config, bert_config):
  """(in, out) of the projections the adapter sits on: one for all.

  Raises:
    UserError: if the chosen projections differ in shape.
  """
  shapes = {p: projection_shape(p, bert_config) for p in config.hook_points()}
  if len(set(shapes.values())) > 1:
    raise UserError(
        "%s adapter config: its shared A and B serve every projection, but "
        "%s" % (config.kind, ", ".join("%s is [%d -> %d]" % (p, a, b)
                          for p, (a, b) in shapes.items())))
  return next(iter(shapes.values()))


def _pair_initializers(init_weights, fan_in_a, seed):
  """Initializers of the shared A [in, r] and B [r, out]."""
  if init_weights == "vera":  # torch's kaiming_uniform_: sqrt(6 / fan_in).
    return (keras.initializers.HeUniform(seed=seed),
            keras.initializers.HeUniform(
                seed=None if seed is None else seed + 1))
  return pair_initializers(init_weights, fan_in_a, seed)


@keras.saving.register_keras_serializable(package="adapter_bert")
class VeraPair(keras.layers.Layer):
  """The shared, frozen random pair A [in, r], B [r, out] of one adapter
  (a model-level layer: `bert/adapters/lora_A`, `bert/adapters/lora_B`)."""

  def __init__(self, config, in_features, out_features, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.in_features = int(in_features)
    self.out_features = int(out_features)
    a_init, b_init = _pair_initializers(
        config.init_weights, self.in_features, config.init_weights_seed)
    self.lora_A = self.add_weight(name="lora_A",
                                  shape=(self.in_features, config.r),
                                  initializer=a_init, trainable=False)
    self.lora_B = self.add_weight(name="lora_B",
                                  shape=(config.r, self.out_features),
                                  initializer=b_init, trainable=False)
    self.built = True

  def checkpoint_variables(self):
    """[(name under `bert/`, variable)]."""
    return [(SHARED_A, self.lora_A), (SHARED_B, self.lora_B)]

  def frozen_variables(self):
    """Names of the variables that never train: both."""
    return [SHARED_A, SHARED_B]

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), in_features=self.in_features,
                out_features=self.out_features)
    return base


@keras.saving.register_keras_serializable(package="adapter_bert")
class VeraLayer(keras.layers.Layer):
  """VeRA on one dense projection (a projection hook point).

  Variables (checkpoint names under the projection's scope, e.g.
  `bert/encoder/layer_0/attention/self/query/`): `vera_D` [r, r], `vera_B`
  [out, out]; with gating `lora_gate/{kernel,bias}`. The shared pair is
  the adapter's VeraPair.
  """

  uses_tokens = True  # Called with tokens= (the gate's token mean).

  def __init__(self, config, pair, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self._pair = registry.LayerRef(pair)
    self.in_features = pair.in_features
    self.out_features = pair.out_features
    c = config
    self.vera_D = self.add_weight(
        name="vera_D", shape=(c.r, c.r),
        initializer=keras.initializers.Identity(gain=float(c.vera_d)))
    self.vera_B = self.add_weight(
        name="vera_B", shape=(self.out_features, self.out_features),
        initializer=keras.initializers.Identity(gain=float(c.vera_b)))
    # AdapterHub: Linear(in, 1), weight normal 0.02, torch's default bias.
    self.gate = (gating.Gate(self.in_features, 1, torch_bias=True,
                             name="lora_gate") if c.use_gating else None)
    self.merged = False  # Folded into the base projection (merge_adapter).
    self.built = True

  @property
  def scaling(self):
    return self.config.alpha / self.config.r

  def checkpoint_variables(self):
    """[(name relative to the projection's scope, variable)]."""
    items = [("vera_D", self.vera_D), ("vera_B", self.vera_B)]
    if self.gate is not None:
      items += self.gate.checkpoint_variables("lora_gate")
    return items

  def product(self, dtype):
    """A·D·B·V [in, out] (unscaled)."""
    pair = self._pair.layer
    a = tf.matmul(tf.cast(pair.lora_A, dtype), tf.cast(self.vera_D, dtype))
    b = tf.matmul(tf.cast(pair.lora_B, dtype), tf.cast(self.vera_B, dtype))
    return tf.matmul(a, b)

  def branch(self, x, dtype, training, tokens):
    """dropout(x)·A·D·B·V, times alpha / r or the gate [rows, out]."""
    branch_input = x
    if training and self.config.dropout > 0:
      branch_input = tf.nn.dropout(x, rate=self.config.dropout)
    pair = self._pair.layer
    # x·(A·D) [rows, r], then ·(B·V): never the [in, out] product per step.
    low = tf.matmul(branch_input, tf.matmul(tf.cast(pair.lora_A, dtype),
                                            tf.cast(self.vera_D, dtype)))
    delta = tf.matmul(low, tf.matmul(tf.cast(pair.lora_B, dtype),
                                     tf.cast(self.vera_B, dtype)))
    if self.gate is not None:  # The gate replaces alpha / r (AdapterHub).
      return delta * gating.per_row(self.gate(x, tokens), tokens, dtype)
    return delta * self.scaling

  def call(self, x, projected, training=False, policy=None, tokens=None):
    """x: the projection's input [rows, in]; projected: x·W + b [rows, out];
    tokens: the batch's TokenLayout (gates)."""
    del policy
    if self.merged:
      return projected
    dtype = projected.dtype
    return projected + self.branch(tf.cast(x, dtype), dtype, training, tokens)

  def merge_into(self, dense):
    """Folds this layer into `dense` (the projection it sits on), once.

    Raises:
      UserError: for a gated VeRA (its scale depends on the input).
    """
    if self.gate is not None:
      raise UserError("a gated VeRA adapter (use_gating=True) cannot be "
                      "merged: its scale depends on the input")
    if self.merged:
      return
    self._fold(dense, sign=1.0)
    self.merged = True

  def reset_from(self, dense):
    """Takes this layer back out of `dense` (undoes merge_into)."""
    if not self.merged:
      return
    self._fold(dense, sign=-1.0)
    self.merged = False

  def _fold(self, dense, sign):
    kernel = tf.convert_to_tensor(dense.kernel)
    delta = tf.cast(self.product(tf.float32) * self.scaling, kernel.dtype)
    dense.kernel.assign(kernel + sign * delta)

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict())
    return base


def shared_pair(config, bert_config):
  """The adapter's VeraPair (its model-level layer)."""
  in_features, out_features = _pair_shape(config, bert_config)
  return VeraPair(config, in_features, out_features, name="vera_pair")


def _layers_for(config, bert_config, where, pair):
  del bert_config
  if where == "embeddings" or where in config.leave_out:
    return {}
  return {point: VeraLayer(config, pair, name=point + "_vera")
          for point in config.hook_points()}


def _adapterhub_layout():
  """AdapterHub's names: per projection `loras.{adapter}.vera_D` [r, r] and
  `vera_B` [out, out] (torch's orientation: transposed here), the pair at
  `shared_parameters.{adapter}.lora_A` [r, in] and `lora_B` [out, r]."""
  tensors = [HubTensor(OURS_SCOPE + o, HUB_SCOPE + t, transpose,
                       choices=HUB_PLACES)
             for o, t, transpose in (("vera_D", "vera_D", True),
                                     ("vera_B", "vera_B", True),
                                     ("lora_gate/kernel", "gate.weight", True),
                                     ("lora_gate/bias", "gate.bias", False))]
  tensors += [HubTensor("bert/" + name,
                        "bert.shared_parameters.{adapter}." + name[-6:],
                        transpose=True) for name in (SHARED_A, SHARED_B)]
  return AdapterHubLayout(tuple(tensors))


ADAPTERHUB_LAYOUT = _adapterhub_layout()
registry.register_method("vera", VeraConfig, _layers_for,
                         shared_for=shared_pair, recognizes=_recognizes,
                         adapterhub=ADAPTERHUB_LAYOUT)

VERA = VeraConfig()
register_preset("vera", VERA)
