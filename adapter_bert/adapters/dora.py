"""DoRA (Liu et al. 2024), as AdapterHub 1.3.0 has it ("dora").

DoRA splits a projection's weight into a direction and a trained magnitude
per output: LoRA's A and B move the direction, `m` scales each output. For a
projection y = x·W + b (W [in, out]; the projection hook points, as LoRA's):

  (m / ||W + A·B||) * (x·W + b + dropout(x)·A·B·alpha/r)

  A [in, r] ~ U(+-1/sqrt(in)), B [r, out] = 0   trained (LoRA's)
  m [out]                                        trained, starts as ||W||
  ||.||                                          each output's column norm

As AdapterHub computes it: the norm takes A·B without alpha / r, the bias
is inside the scaling (the paper leaves it out), and gradients flow through
the norm. `m` starts from the base's weights when the adapter is added and
again when the base is loaded (`start_from_base`); a loaded adapter brings
its own. On BERT-base (q and v): LoRA's 294,912 + 12 x 2 x 768 = 313,344
trained parameters, as AdapterHub counts them.

DoRA folds into the weights (`merge_adapter`): W' = (W + A·B·alpha/r)·s and
b' = b·s with s = m / ||W + A·B||, so merged and unmerged compute the same
(AdapterHub's merge leaves the bias unscaled).
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
from adapter_bert.adapters.lora import low_rank_delta
from adapter_bert.adapters.lora import HUB_PLACES
from adapter_bert.adapters.lora import HUB_SCOPE
from adapter_bert.adapters.lora import OURS_SCOPE
from adapter_bert.adapters.lora import pair_initializers
from adapter_bert.adapters.lora import projection_shape
from adapter_bert.errors import UserError


@dataclasses.dataclass(frozen=True)
class DoRAConfig(MethodConfig):
  """AdapterHub's DoRAConfig (architecture "lora" with use_dora=True).

  Attributes:
    selfattn_lora, intermediate_lora, output_lora, leave_out, r, alpha,
      dropout, attn_matrices, init_weights, init_weights_seed, use_gating:
      as LoRAConfig's.
    composition_mode: "add" (the only one DoRA has).
    use_dora: True (what makes a LoRA config DoRA's in AdapterHub).
    vera_d, vera_b: None (with them it is DVoRA, another method).
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
  init_weights: str = "lora"
  init_weights_seed: Optional[int] = None
  use_gating: bool = False
  use_dora: bool = True
  vera_d: Optional[float] = None
  vera_b: Optional[float] = None
  dtype: Optional[str] = None
  kind: str = "dora"

  architecture = "lora"

  def __post_init__(self):
    check_field_types(self)
    object.__setattr__(self, "leave_out", tuple(self.leave_out))
    object.__setattr__(self, "attn_matrices", tuple(self.attn_matrices))
    check_choice(self, "kind", ("dora",))
    check_choice(self, "composition_mode", ("add",))
    check_choice(self, "init_weights", ("lora", "bert", "ia3"))
    check_choice(self, "use_dora", (True,))
    check_low_rank(self)
    for field in ("vera_d", "vera_b"):
      if getattr(self, field) is not None:
        raise UserError("dora adapter config: %s=%r makes it another "
                        "method's config (AdapterHub's config map names it)"
                        % (field, getattr(self, field)))

  def hook_points(self):
    return hook_points_of(self)


def _recognizes(d):
  """AdapterHub's test: a "lora" config with use_dora, without VeRA's
  float vera_d / vera_b."""
  return d.get("use_dora") is True and not any(
      isinstance(d.get(f), float) for f in ("vera_d", "vera_b"))


class DoRAMagnitude:
  """DoRA's part of a low-rank projection layer: the magnitude m [out], the
  scale m / ||W + P|| and the merge, for a layer that has `product(dtype)`
  (its unscaled P [in, out], LoRA's A·B), `scaling`, `gate` and
  `out_features` (DoRALayer here; DVoRA puts it on VeRA's layer). Call
  `add_magnitude()` in the layer's __init__."""

  def add_magnitude(self):
    self.m = self.add_weight(name="m", shape=(self.out_features,),
                             initializer="ones")
    self._base = None  # registry.LayerRef of the base Dense.
    self._merged_scale = None  # s while merged (reset_from divides by it).
    self.merged = False

  def start_from_base(self, dense):
    """Binds the base projection and sets m to its columns' norms."""
    self._base = registry.LayerRef(dense)
    if not self.merged:
      self.m.assign(tf.norm(tf.convert_to_tensor(dense.kernel), axis=0))

  def magnitude_scale(self, dtype):
    """m / ||W + P|| [out] (P unscaled, as AdapterHub)."""
    if self._base is None:
      raise ValueError("%s: start_from_base was never called" % self.name)
    direction = tf.cast(self._base.layer.kernel, dtype) + self.product(dtype)
    return tf.cast(self.m, dtype) / tf.norm(direction, axis=0)

  def merge_into(self, dense):
    """Folds this layer into `dense` (the projection it sits on), once:
    kernel (W + P·alpha/r)·s and bias b·s.

    Raises:
      UserError: for a gated layer (its scale depends on the input).
    """
    if self.gate is not None:
      raise UserError("a gated %s adapter (use_gating=True) cannot be "
                      "merged: its scale depends on the input"
                      % self.config.kind)
    if self.merged:
      return
    scale = self.magnitude_scale(tf.float32)
    kernel = tf.convert_to_tensor(dense.kernel)
    dense.kernel.assign((kernel + self.product(tf.float32) * self.scaling)
                        * scale)
    dense.bias.assign(tf.convert_to_tensor(dense.bias) * scale)
    self._merged_scale = scale
    self.merged = True

  def reset_from(self, dense):
    """Takes this layer back out of `dense` (undoes merge_into)."""
    if not self.merged:
      return
    scale = self._merged_scale
    added = self.product(tf.float32) * self.scaling
    dense.kernel.assign(tf.convert_to_tensor(dense.kernel) / scale - added)
    dense.bias.assign(tf.convert_to_tensor(dense.bias) / scale)
    self._merged_scale = None
    self.merged = False


@keras.saving.register_keras_serializable(package="adapter_bert")
class DoRALayer(DoRAMagnitude, keras.layers.Layer):
  """DoRA on one dense projection (a projection hook point).

  Variables (checkpoint names under the projection's scope, e.g.
  `bert/encoder/layer_0/attention/self/query/`): `lora_A` [in, r],
  `lora_B` [r, out], `m` [out]; with gating `lora_gate/{kernel,bias}`. It
  reads the base projection's kernel (`start_from_base` binds it).
  """

  uses_tokens = True  # Called with tokens= (the gate's token mean).

  def __init__(self, config, in_features, out_features, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.in_features = int(in_features)
    self.out_features = int(out_features)
    c = config
    a_init, b_init = pair_initializers(c.init_weights, self.in_features,
                                       c.init_weights_seed)
    self.lora_A = self.add_weight(name="lora_A",
                                  shape=(self.in_features, c.r),
                                  initializer=a_init)
    self.lora_B = self.add_weight(name="lora_B",
                                  shape=(c.r, self.out_features),
                                  initializer=b_init)
    self.add_magnitude()
    self.gate = (gating.Gate(self.in_features, 1, torch_bias=True,
                             name="lora_gate") if c.use_gating else None)
    self.built = True

  @property
  def scaling(self):
    return self.config.alpha / self.config.r

  def checkpoint_variables(self):
    """[(name relative to the projection's scope, variable)]."""
    items = [("lora_A", self.lora_A), ("lora_B", self.lora_B), ("m", self.m)]
    if self.gate is not None:
      items += self.gate.checkpoint_variables("lora_gate")
    return items

  def product(self, dtype):
    """A·B [in, out]."""
    return tf.matmul(tf.cast(self.lora_A, dtype), tf.cast(self.lora_B, dtype))

  def call(self, x, projected, training=False, policy=None, tokens=None):
    """x: the projection's input [rows, in]; projected: x·W + b [rows, out];
    tokens: the batch's TokenLayout (gates)."""
    del policy
    if self.merged:
      return projected
    dtype = projected.dtype
    delta = low_rank_delta(self, tf.cast(x, dtype),
                           tf.cast(self.lora_B, dtype), training, tokens)
    return (projected + delta) * self.magnitude_scale(dtype)

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), in_features=self.in_features,
                out_features=self.out_features)
    return base


def _layers_for(config, bert_config, where):
  if where == "embeddings" or where in config.leave_out:
    return {}
  return {point: DoRALayer(config, *projection_shape(point, bert_config),
                           name=point + "_dora")
          for point in config.hook_points()}


def _adapterhub_layout():
  """AdapterHub's names: LoRA's, and `m.weight` [out, 1] for m."""
  return AdapterHubLayout(tuple(
      HubTensor(OURS_SCOPE + o, HUB_SCOPE + t, transpose, theirs_shape=shape,
                choices=HUB_PLACES)
      for o, t, transpose, shape in (
          ("lora_A", "lora_A", True, None),
          ("lora_B", "lora_B", True, None),
          ("m", "m.weight", False, "column"),
          ("lora_gate/kernel", "gate.weight", True, None),
          ("lora_gate/bias", "gate.bias", False, None))))


registry.register_method("dora", DoRAConfig, _layers_for,
                         recognizes=_recognizes,
                         adapterhub=_adapterhub_layout())

DORA = DoRAConfig()
register_preset("dora", DORA)
