"""MTL-LoRA (Yang et al. 2024), as AdapterHub 1.3.0 has it ("mtl_lora").

LoRA for several tasks on one base: each task is an adapter with its own
small task-specific matrix between LoRA's down and up projections, and the
tasks share the down projection A and the up projections B
(`share_parameters(MultiTask(...))`, then `train_adapter(MultiTask(...))`
with a `task_ids` feature). For a projection y = x·W + b (W [in, out]; the
projection hook points, as LoRA's):

  y + dropout(x)·A·T·(sum_k p_k·B_k)·alpha/r,   p = softmax(w / sharpness)

  A [in, r]        ~ U(+-1/sqrt(in)) ("lora") or N(0, 0.02) ("bert")
  T                diag(values), values [r] = 1 ("singular_values"), or
                   values [r, r] = 1 ("linear")
  B [n, r, out]    n = n_up_projection up projections, 0 (or N(0, 0.02))
  w [n]            = 1, the up projections' weights

All four train; `share_parameters` ties A and B across the tasks (each
keeps its T and w). AdapterHub computes every up projection and sums the
results weighted by exp(w / sharpness) / sum(exp(w / sharpness)); B's sum
is taken first here (the same function, n times fewer products). On
BERT-base (q and v, r 8, n 1): 12 x 2 x (6,144 + 6,144 + 8 + 1) = 295,128
trained parameters, as AdapterHub counts them.

MTL-LoRA is linear in x, so one adapter folds into the weights
(`merge_adapter`): W + A·T·(sum_k p_k·B_k)·alpha/r. (AdapterHub 1.3.0's
"linear" task-specific module never calls nn.Module's __init__ and cannot
be built there; it is built here from its description.)
"""

import dataclasses

import keras
import tensorflow as tf

from adapter_bert.adapters import gating
from adapter_bert.adapters import registry
from adapter_bert.adapters.config import MethodConfig
from adapter_bert.adapters.config import check_choice
from adapter_bert.adapters.config import check_field_types
from adapter_bert.adapters.config import check_range
from adapter_bert.adapters.config import register_preset
from adapter_bert.adapters.hub_layout import AdapterHubLayout
from adapter_bert.adapters.hub_layout import HubTensor
from adapter_bert.adapters.lora import LoRAConfig
from adapter_bert.adapters.lora import check_low_rank
from adapter_bert.adapters.lora import low_rank_delta
from adapter_bert.adapters.lora import HUB_PLACES
from adapter_bert.adapters.lora import HUB_SCOPE
from adapter_bert.adapters.lora import OURS_SCOPE
from adapter_bert.adapters.lora import pair_initializers
from adapter_bert.adapters.lora import projection_shape
from adapter_bert.errors import UserError


@dataclasses.dataclass(frozen=True)
class MTLLoRAConfig(LoRAConfig):
  """AdapterHub's MTLLoRAConfig (LoRAConfig's fields, architecture
  "mtl_lora").

  Attributes:
    LoRAConfig's fields, with its defaults (composition_mode "add"; no
      use_dora, vera_d, vera_b).
    n_up_projection: the number of up projections B_k.
    task_specific_matrix_type: "singular_values" (a diagonal [r]) or
      "linear" (a full [r, r]).
    weights_sharpness: the temperature of the up projections' weights.
  """
  n_up_projection: int = 1
  task_specific_matrix_type: str = "singular_values"
  weights_sharpness: float = 0.05
  kind: str = "mtl_lora"

  architecture = "mtl_lora"

  def __post_init__(self):
    check_field_types(self)
    object.__setattr__(self, "leave_out", tuple(self.leave_out))
    object.__setattr__(self, "attn_matrices", tuple(self.attn_matrices))
    check_choice(self, "kind", ("mtl_lora",))
    check_choice(self, "composition_mode", ("add",))
    check_choice(self, "init_weights", ("lora", "bert"))
    check_choice(self, "task_specific_matrix_type",
                 ("singular_values", "linear"))
    check_low_rank(self)
    if self.n_up_projection < 1:
      raise UserError("mtl_lora adapter config: n_up_projection=%r must be "
                      ">= 1" % (self.n_up_projection,))
    check_range(self, "weights_sharpness", 0.0, low_open=True)
    for field in ("use_dora", "vera_d", "vera_b"):
      if getattr(self, field) not in (None, False):
        raise UserError("mtl_lora adapter config: %s=%r is not supported "
                        "(AdapterHub's MTL-LoRA is plain LoRA's)"
                        % (field, getattr(self, field)))

  @classmethod
  def from_dict(cls, d):
    return MethodConfig.from_dict.__func__(cls, d)


@keras.saving.register_keras_serializable(package="adapter_bert")
class MTLLoRALayer(keras.layers.Layer):
  """MTL-LoRA on one dense projection (a projection hook point).

  Variables (checkpoint names under the projection's scope, e.g.
  `bert/encoder/layer_0/attention/self/query/`): `lora_A` [in, r],
  `lora_B` [n, r, out], `task_specific/values` [r] or [r, r],
  `weights` [n]; with gating `lora_gate/{kernel,bias}`. `lora_A` and
  `lora_B` may be another adapter's (`share_from`).
  """

  uses_tokens = True  # Called with tokens= (the gate's token mean).
  # What `share_from` ties (AdapterHub's sharable_parameters).
  sharable_variables = ("lora_A", "lora_B")

  def __init__(self, config, in_features, out_features, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.in_features = int(in_features)
    self.out_features = int(out_features)
    c = config
    a_init, b_init = pair_initializers(c.init_weights, self.in_features,
                                       c.init_weights_seed)
    # This layer's own A and B; `share_from` reads another layer's instead.
    self.own_A = self.add_weight(name="lora_A", shape=(self.in_features, c.r),
                                 initializer=a_init)
    self.own_B = self.add_weight(
        name="lora_B", shape=(c.n_up_projection, c.r, self.out_features),
        initializer=b_init)
    self._shared_with = None  # registry.LayerRef of the layer shared with.
    t_shape = ((c.r,) if c.task_specific_matrix_type == "singular_values"
               else (c.r, c.r))
    self.task_values = self.add_weight(name="task_specific_values",
                                       shape=t_shape, initializer="ones")
    self.up_weights = self.add_weight(name="weights",
                                      shape=(c.n_up_projection,),
                                      initializer="ones")
    self.gate = (gating.Gate(self.in_features, 1, torch_bias=True,
                             name="lora_gate") if c.use_gating else None)
    self.merged = False
    self._delta = None  # The kernel delta added while merged.
    self.built = True

  @property
  def scaling(self):
    return self.config.alpha / self.config.r

  def checkpoint_variables(self):
    """[(name relative to the projection's scope, variable)]."""
    items = [("lora_A", self.lora_A), ("lora_B", self.lora_B),
             ("task_specific/values", self.task_values),
             ("weights", self.up_weights)]
    if self.gate is not None:
      items += self.gate.checkpoint_variables("lora_gate")
    return items

  @property
  def lora_A(self):  # pylint: disable=invalid-name
    if self._shared_with is not None:
      return self._shared_with.layer.lora_A
    return self.own_A

  @property
  def lora_B(self):  # pylint: disable=invalid-name
    if self._shared_with is not None:
      return self._shared_with.layer.lora_B
    return self.own_B

  def share_from(self, reference):
    """Reads (and trains) `reference`'s A and B from now on, in place of
    its own (AdapterHub's share_parameters).

    Raises:
      UserError: for a reference of other shapes.
    """
    for name in self.sharable_variables:
      mine, theirs = getattr(self, name), getattr(reference, name)
      if tuple(mine.shape) != tuple(theirs.shape):
        raise UserError("%s: %s is %s here and %s in the adapter shared "
                        "with" % (self.name, name, tuple(mine.shape),
                                  tuple(theirs.shape)))
    root = reference
    while root.shared:  # Its source, so that no two layers read each other.
      root = root._shared_with.layer  # pylint: disable=protected-access
    if root is not self:
      self._shared_with = registry.LayerRef(root)

  def unshare(self):
    """Takes its own A and B again, starting from the shared values."""
    if self._shared_with is None:
      return
    self.own_A.assign(self.lora_A)
    self.own_B.assign(self.lora_B)
    self._shared_with = None

  @property
  def shared(self):
    """Whether A and B are another layer's (`share_from`)."""
    return self._shared_with is not None

  def up_projection(self, dtype):
    """T·(sum_k p_k·B_k) [r, out], p = softmax(w / sharpness)."""
    p = tf.nn.softmax(tf.cast(self.up_weights, dtype)
                      / self.config.weights_sharpness)
    b = tf.tensordot(p, tf.cast(self.lora_B, dtype), axes=1)  # [r, out]
    t = tf.cast(self.task_values, dtype)
    if t.shape.rank == 1:
      return t[:, None] * b
    return tf.matmul(t, b)

  def call(self, x, projected, training=False, policy=None, tokens=None):
    """x: the projection's input [rows, in]; projected: x·W + b [rows, out];
    tokens: the batch's TokenLayout (gates)."""
    del policy
    if self.merged:
      return projected
    dtype = projected.dtype
    return projected + low_rank_delta(self, tf.cast(x, dtype),
                                      self.up_projection(dtype), training,
                                      tokens)

  def merge_into(self, dense):
    """Folds this layer into `dense` (the projection it sits on), once.

    Raises:
      UserError: for a gated layer (its scale depends on the input).
    """
    if self.gate is not None:
      raise UserError("a gated mtl_lora adapter (use_gating=True) cannot be "
                      "merged: its scale depends on the input")
    if self.merged:
      return
    self._delta = tf.matmul(tf.convert_to_tensor(self.lora_A),
                            self.up_projection(tf.float32)) * self.scaling
    dense.kernel.assign(tf.convert_to_tensor(dense.kernel) + self._delta)
    self.merged = True

  def reset_from(self, dense):
    """Takes this layer back out of `dense` (undoes merge_into)."""
    if not self.merged:
      return
    dense.kernel.assign(tf.convert_to_tensor(dense.kernel) - self._delta)
    self._delta = None
    self.merged = False

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), in_features=self.in_features,
                out_features=self.out_features)
    return base


def _layers_for(config, bert_config, where):
  if where == "embeddings" or where in config.leave_out:
    return {}
  return {point: MTLLoRALayer(config, *projection_shape(point, bert_config),
                              name=point + "_mtl_lora")
          for point in config.hook_points()}


def _adapterhub_layout():
  """AdapterHub's names: LoRA's A [r, in]; B [n, out, r] (its last two
  axes swapped); `task_specific.values` and `weights` as here."""
  return AdapterHubLayout(tuple(
      HubTensor(OURS_SCOPE + o, HUB_SCOPE + t, transpose, choices=HUB_PLACES)
      for o, t, transpose in (
          ("lora_A", "lora_A", True),
          ("lora_B", "lora_B", True),
          ("task_specific/values", "task_specific.values", False),
          ("weights", "weights", False),
          ("lora_gate/kernel", "gate.weight", True),
          ("lora_gate/bias", "gate.bias", False))))


registry.register_method("mtl_lora", MTLLoRAConfig, _layers_for,
                         adapterhub=_adapterhub_layout())

MTL_LORA = MTLLoRAConfig()
register_preset("mtl_lora", MTL_LORA)

