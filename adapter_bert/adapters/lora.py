"""LoRA (Hu et al. 2021) and (IA)^3 (Liu et al. 2022), as AdapterHub has them.

Both sit on the base's dense projections (the projection hook points): the
attention's query / key / value (`attn_matrices`), the feed-forward's
intermediate projection (`intermediate_lora`) and its output projection
(`output_lora`). For a projection y = x·W + b:

  lora (composition_mode "add"):  y + (dropout(x)·A·B)·alpha/r
                                  A [in, r] ~ U(+-1/sqrt(in)), B [r, out] = 0
  ia3 (composition_mode "scale"): y * (l·alpha),  l [out] = 1

Both fold into the frozen weights (`merge_adapter`): W + A·B·alpha/r, or
W·diag(l·alpha) and b·l·alpha; `reset_adapter` takes them out again.
(AdapterHub's (IA)^3 merge scales the weight only, which changes the output
where the bias is not zero; here merged and unmerged compute the same.)
"""

import dataclasses
import math
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from adapter_bert.adapters import gating
from adapter_bert.adapters import registry
from adapter_bert.adapters.hub_layout import AdapterHubLayout
from adapter_bert.adapters.hub_layout import HubTensor
from adapter_bert.adapters.config import MethodConfig
from adapter_bert.adapters.config import check_field_types
from adapter_bert.adapters.config import check_choice
from adapter_bert.adapters.config import check_range
from adapter_bert.adapters.config import register_preset
from adapter_bert.errors import UserError

# AdapterHub's attn_matrices letters -> this model's hook points.
ATTN_MATRICES = {"q": "query", "k": "key", "v": "value"}


@dataclasses.dataclass(frozen=True)
class LoRAConfig(MethodConfig):
  """AdapterHub's LoRAConfig fields and defaults (architecture "lora").

  Attributes:
    selfattn_lora: on the attention projections named by `attn_matrices`.
    intermediate_lora: on the feed-forward's intermediate projection.
    output_lora: on the feed-forward's output projection.
    leave_out: block indices without it.
    r: rank (1 for "scale").
    alpha: the scaling numerator (alpha / r for "add", alpha for "scale").
    dropout: dropout of the LoRA branch's input while training ("add").
    attn_matrices: a subset of "q", "k", "v".
    composition_mode: "add" (LoRA) or "scale" ((IA)^3).
    init_weights: "lora" (A uniform, B zero), "bert" (both normal 0.02) or
      "ia3" (ones).
    use_gating: a per-example gate on the LoRA branch, in place of
      alpha / r (UniPELT; adapters.gating); such an adapter cannot merge.
    use_dora, vera_d, vera_b, dtype: AdapterHub's; use_dora, vera_d and
      vera_b make the config another method's (DoRA, VeRA).
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
  use_dora: bool = False
  vera_d: Optional[float] = None
  vera_b: Optional[float] = None
  dtype: Optional[str] = None
  kind: str = "lora"

  architecture = "lora"

  def __post_init__(self):
    check_field_types(self)
    object.__setattr__(self, "leave_out", tuple(self.leave_out))
    object.__setattr__(self, "attn_matrices", tuple(self.attn_matrices))
    check_choice(self, "kind", ("lora", "ia3"))
    check_choice(self, "composition_mode", ("add", "scale"))
    if (self.kind == "ia3") != (self.composition_mode == "scale"):
      raise UserError("%s adapter config: composition_mode=%r belongs to %s"
                      % (self.kind, self.composition_mode,
                         "ia3" if self.composition_mode == "scale"
                         else "lora"))
    check_choice(self, "init_weights", ("lora", "bert", "ia3"))
    check_low_rank(self)
    if self.composition_mode == "scale" and self.r != 1:
      raise UserError("ia3 adapter config: r=%r; composition_mode 'scale' "
                      "needs r=1" % (self.r,))
    if self.composition_mode == "scale" and self.dropout:
      raise UserError("ia3 adapter config: dropout=%r; (IA)^3 has no dropout"
                      % (self.dropout,))
    if self.use_gating and self.composition_mode == "scale":
      raise UserError("ia3 adapter config: use_gating=True is not supported "
                      "with composition_mode 'scale'")
    for field in ("use_dora", "vera_d", "vera_b"):
      if getattr(self, field) not in (None, False):
        raise UserError("%s adapter config: %s=%r makes it another method's "
                        "config (AdapterHub's config map names it)"
                        % (self.kind, field, getattr(self, field)))

  @classmethod
  def from_dict(cls, d):
    d = dict(d)
    if "kind" not in d:
      d["kind"] = "ia3" if d.get("composition_mode") == "scale" else "lora"
    return super().from_dict(d)

  def hook_points(self):
    return hook_points_of(self)


def hook_points_of(config):
  """The projection hook points a LoRA-family config chooses (its
  selfattn_lora with attn_matrices, intermediate_lora, output_lora)."""
  points = []
  if config.selfattn_lora:
    points += [ATTN_MATRICES[m] for m in ("q", "k", "v")
               if m in config.attn_matrices]
  if config.intermediate_lora:
    points.append("intermediate_projection")
  if config.output_lora:
    points.append("output_projection")
  return points


def check_low_rank(config):
  """The checks a LoRA-family config (LoRA, VeRA, DoRA, ...) shares: r,
  alpha, dropout, attn_matrices and some projection chosen.

  Raises:
    UserError: naming the config's kind and the field.
  """
  if not isinstance(config.r, int) or isinstance(config.r, bool) or (
      config.r < 1):
    raise UserError("%s adapter config: r=%r must be an integer >= 1"
                    % (config.kind, config.r))
  check_range(config, "alpha", 0.0, low_open=True)
  check_range(config, "dropout", 0.0, 1.0)
  unknown = [m for m in config.attn_matrices if m not in ATTN_MATRICES]
  if unknown:
    raise UserError("%s adapter config: attn_matrices %s; expected a subset "
                    "of q, k, v" % (config.kind, ", ".join(map(repr,
                                                               unknown))))
  if not hook_points_of(config):
    raise UserError("%s adapter config: no projection is chosen "
                    "(selfattn_lora with attn_matrices, intermediate_lora "
                    "or output_lora)" % config.kind)


def IA3Config(**overrides):  # pylint: disable=invalid-name
  """AdapterHub's IA3Config: scaling of keys, values and the intermediate."""
  fields = dict(selfattn_lora=True, intermediate_lora=True, output_lora=False,
                r=1, alpha=1, attn_matrices=("k", "v"),
                composition_mode="scale", init_weights="ia3", kind="ia3")
  fields.update(overrides)
  return LoRAConfig(**fields)


def pair_initializers(init_weights, in_features, seed):
  """Initializers of a LoRA pair A [in, r], B [r, out] (AdapterHub's):
  "lora": A ~ U(+-1/sqrt(in)) (torch's Linear default), B = 0; "bert":
  both normal 0.02; "ia3": both ones."""
  if init_weights == "lora":
    bound = 1.0 / math.sqrt(in_features)
    return keras.initializers.RandomUniform(-bound, bound, seed=seed), "zeros"
  if init_weights == "bert":
    return (keras.initializers.RandomNormal(stddev=0.02, seed=seed),
            keras.initializers.RandomNormal(
                stddev=0.02, seed=None if seed is None else seed + 1))
  return "ones", "ones"  # ia3 init on an "add" LoRA: ones, as AdapterHub.


@keras.saving.register_keras_serializable(package="adapter_bert")
class LoRALayer(keras.layers.Layer):
  """LoRA or (IA)^3 on one dense projection (a projection hook point).

  Variables (checkpoint names under the projection's scope, e.g.
  `bert/encoder/layer_0/attention/self/query/`): `lora_A` [in, r] and
  `lora_B` [r, out] ("add"), or `lora_B` [out] ("scale"); with gating
  `lora_gate/{kernel,bias}`.
  """

  uses_tokens = True  # Called with tokens= (the gate's token mean).

  def __init__(self, config, in_features, out_features, **kwargs):
    super().__init__(**kwargs)
    self.config = (config if isinstance(config, LoRAConfig)
                   else LoRAConfig.from_dict(config))
    self.in_features = int(in_features)
    self.out_features = int(out_features)
    self.merged = False  # Folded into the base projection (merge_adapter).

  @property
  def is_scale(self):
    return self.config.composition_mode == "scale"

  def build(self, input_shape=None):
    c = self.config
    seed = c.init_weights_seed
    if self.is_scale:
      init = {"ia3": "ones", "lora": "zeros",
              "bert": keras.initializers.RandomNormal(stddev=0.02, seed=seed)}
      self.lora_A = None
      self.lora_B = self.add_weight(name="lora_B", shape=(self.out_features,),
                                    initializer=init[c.init_weights])
    else:
      a_init, b_init = pair_initializers(c.init_weights, self.in_features,
                                         seed)
      self.lora_A = self.add_weight(name="lora_A",
                                    shape=(self.in_features, c.r),
                                    initializer=a_init)
      self.lora_B = self.add_weight(name="lora_B",
                                    shape=(c.r, self.out_features),
                                    initializer=b_init)
    # AdapterHub: Linear(in, 1), weight normal 0.02, torch's default bias.
    self.gate = (gating.Gate(self.in_features, 1, torch_bias=True,
                             name="lora_gate") if c.use_gating else None)
    super().build(input_shape)

  @property
  def scaling(self):
    c = self.config
    return float(c.alpha) if self.is_scale else c.alpha / c.r

  def checkpoint_variables(self):
    """[(name relative to the projection's scope, variable)]."""
    if self.is_scale:
      return [("lora_B", self.lora_B)]
    items = [("lora_A", self.lora_A), ("lora_B", self.lora_B)]
    if self.gate is not None:
      items += self.gate.checkpoint_variables("lora_gate")
    return items

  def call(self, x, projected, training=False, policy=None, tokens=None):
    """x: the projection's input [rows, in]; projected: x·W + b [rows, out];
    tokens: the batch's TokenLayout (gates)."""
    if self.merged:
      return projected
    dtype = projected.dtype
    if self.is_scale:
      return projected * (tf.cast(self.lora_B, dtype) * self.scaling)
    return projected + low_rank_delta(self, tf.cast(x, dtype),
                                      tf.cast(self.lora_B, dtype), training,
                                      tokens)

  def merge_into(self, dense):
    """Folds this layer into `dense` (the projection it sits on), once.

    Raises:
      UserError: for a gated LoRA (its scale depends on the input).
    """
    if self.gate is not None:
      raise UserError("a gated LoRA adapter (use_gating=True) cannot be "
                      "merged: its scale depends on the input")
    if self.merged:
      return
    self._fold(dense, inverse=False)
    self.merged = True

  def reset_from(self, dense):
    """Takes this layer back out of `dense` (undoes merge_into)."""
    if not self.merged:
      return
    self._fold(dense, inverse=True)
    self.merged = False

  def _fold(self, dense, inverse):
    kernel = tf.convert_to_tensor(dense.kernel)
    if self.is_scale:
      # y * (l·alpha): the kernel's columns and the bias, scaled.
      scale = tf.cast(tf.convert_to_tensor(self.lora_B) * self.scaling,
                      kernel.dtype)
      if inverse:
        scale = 1.0 / scale
      dense.kernel.assign(kernel * scale)
      dense.bias.assign(tf.convert_to_tensor(dense.bias) * scale)
    else:
      # y + x·A·B·alpha/r: A·B·alpha/r added to the kernel.
      delta = tf.cast(tf.matmul(tf.convert_to_tensor(self.lora_A),
                                tf.convert_to_tensor(self.lora_B))
                      * self.scaling, kernel.dtype)
      dense.kernel.assign(kernel - delta if inverse else kernel + delta)

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), in_features=self.in_features,
                out_features=self.out_features)
    return base


def low_rank_delta(layer, x, up, training, tokens):
  """The LoRA family's branch: dropout(x)·A·up [rows, out], times the
  layer's gate where it has one (it replaces alpha / r, as AdapterHub's),
  else alpha / r.

  Args:
    layer: has `config.dropout`, `lora_A` [in, r], `gate` and `scaling`.
    x: the projection's input [rows, in], in the compute dtype.
    up: what follows A, [r, out], in x's dtype.
    training: dropout on.
    tokens: the batch's TokenLayout (the gate's token mean).
  """
  branch_input = x
  if training and layer.config.dropout > 0:
    branch_input = tf.nn.dropout(x, rate=layer.config.dropout)
  delta = tf.matmul(tf.matmul(branch_input, tf.cast(layer.lora_A, x.dtype)),
                    up)
  if layer.gate is not None:
    return delta * gating.per_row(layer.gate(x, tokens), tokens, x.dtype)
  return delta * layer.scaling


def projection_shape(point, bert_config):
  """(in, out) of the projection at hook point `point`."""
  h, i = bert_config.hidden_size, bert_config.intermediate_size
  return {"intermediate_projection": (h, i),
          "output_projection": (i, h)}.get(point, (h, h))


def _layers_for(config, bert_config, where):
  if where == "embeddings" or where in config.leave_out:
    return {}
  layers = {}
  for point in config.hook_points():
    layer = LoRALayer(config, *projection_shape(point, bert_config),
                      name=point + "_lora")
    layer.build()
    layers[point] = layer
  return layers


# The projections' scopes here and in AdapterHub's state dicts (its LoRA
# modules, and those of the methods built on them, sit in `loras`).
HUB_PLACES = {"place": {p: p.replace("/", ".") for p in (
    "attention/self/query", "attention/self/key", "attention/self/value",
    "intermediate/dense", "output/dense")}}
OURS_SCOPE = "bert/encoder/layer_{layer}/{place}/"
HUB_SCOPE = "bert.encoder.layer.{layer}.{place}.loras.{adapter}."


def _adapterhub_layout(scale):
  """AdapterHub's names of LoRA's (or, `scale`, (IA)^3's) variables: its
  LoRA modules hold A [r, in] and B [out, r]; (IA)^3's vector is B [out, 1]."""
  places = HUB_PLACES
  ours, theirs = OURS_SCOPE, HUB_SCOPE
  if scale:
    return AdapterHubLayout((HubTensor(
        ours + "lora_B", theirs + "lora_B", theirs_shape="column",
        choices=places),))
  return AdapterHubLayout(tuple(
      HubTensor(ours + o, theirs + t, transpose, choices=places)
      for o, t, transpose in (("lora_A", "lora_A", True),
                              ("lora_B", "lora_B", True),
                              ("lora_gate/kernel", "gate.weight", True),
                              ("lora_gate/bias", "gate.bias", False))))


def _negate_b(config, weights, sources, linear, svd_rank):
  """AdapterHub's "lora_linear_only_negate_b": A averaged with |weights|
  (B with the weights as given), so that negative weights negate the
  product once."""
  if svd_rank is not None:
    raise UserError("svd_rank is for combine_strategy 'lora_delta_w_svd'")
  return config, {
      key: sum(abs(w) * src[key] for w, src in zip(weights, sources))
      for key in linear if key.endswith("/lora_A")}


def _delta_w_svd(config, weights, sources, linear, svd_rank):
  """AdapterHub's "lora_delta_w_svd": the weighted sum of the products
  A·B·alpha/r, brought back to rank `svd_rank` by a truncated SVD."""
  if not isinstance(svd_rank, int) or isinstance(svd_rank, bool) or (
      svd_rank < 1):
    raise UserError("combine_strategy 'lora_delta_w_svd' needs svd_rank, "
                    "a positive int, got %r" % (svd_rank,))
  old_scaling = config.alpha / config.r
  config = dataclasses.replace(config, r=svd_rank)
  new_scaling = config.alpha / config.r
  values = {}
  for key in linear:
    if not key.endswith("/lora_A"):
      continue
    scope = key[:-len("/lora_A")]
    delta = sum(w * (src[scope + "/lora_A"] @ src[scope + "/lora_B"])
                for w, src in zip(weights, sources))  # [in, out]
    delta *= old_scaling / new_scaling
    u, sv, vt = np.linalg.svd(delta, full_matrices=False)
    k = min(svd_rank, len(sv))
    a = np.zeros((delta.shape[0], svd_rank))
    b = np.zeros((svd_rank, delta.shape[1]))
    a[:, :k] = u[:, :k] * sv[:k]
    b[:k] = vt[:k]
    values[key], values[scope + "/lora_B"] = a, b
  return config, values


registry.register_method(
    "lora", LoRAConfig, _layers_for, adapterhub=_adapterhub_layout(False),
    combine_strategies={"lora_linear_only_negate_b": _negate_b,
                        "lora_delta_w_svd": _delta_w_svd})
registry.register_method("ia3", LoRAConfig, _layers_for,
                         adapterhub=_adapterhub_layout(True))

LORA = LoRAConfig()
IA3 = IA3Config()
register_preset("lora", LORA)
register_preset("ia3", IA3)
