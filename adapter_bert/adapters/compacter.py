"""Compacter (Mahabadi et al. 2021): bottleneck adapters whose projections
are parameterized hypercomplex multiplication (PHM) layers, as AdapterHub
has them (`phm_layer=True` in a BnConfig; presets `compacter` and
`compacter++` in adapters.bottleneck).

A PHM layer of n = phm_dim maps [rows, in] to [rows, out] with

  H = sum_i kron(R_i, W_i)      R_i [n, n] (the "rule"), W_i [in/n, out/n]
  y = x·H + b

where W_i = W_left_i·W_right_i (rank `phm_rank`, factorized_phm_W) or a
full W_i, and R is one [n, n, n] tensor (or R_left·R_right,
factorized_phm_rule). With shared_phm_rule (the default), R is one model-
level variable of the adapter, shared by every PHM layer in every block
(AdapterHub's `shared_parameters`); otherwise each layer has its own.

Checkpoint names: a layer's under its adapter's scope (`.../adapters/down/`,
`.../adapters/up/`): `W_left`, `W_right` (or `W`), `b`, and `phm_rule` (or
`phm_rule_left`, `phm_rule_right`) unless shared; the shared rule under
`bert/adapters/phm_rule` (or `..._left`, `..._right`).
"""

import math

import keras
import tensorflow as tf

from adapter_bert.adapters import registry
from adapter_bert.adapters.hub_layout import AdapterHubLayout
from adapter_bert.adapters.hub_layout import HubTensor
from adapter_bert.errors import UserError

_PHM_PARTS = ("W", "W_left", "W_right", "b", "phm_rule", "phm_rule_left",
              "phm_rule_right")
_RULES = ("phm_rule", "phm_rule_left", "phm_rule_right")


def adapterhub_layout(ours, theirs, places):
  """AdapterHub's names of the PHM layers' variables (the same layout, no
  transpose) of a bottleneck adapter whose variables are under `ours` and
  `theirs` (templates) there, and of the shared rule.

  Args:
    ours, theirs: templates of the adapter's scope, with `places`' choices.
  """
  parts = {p: p for p in _PHM_PARTS}
  choices = dict(places, part=parts)
  tensors = (
      HubTensor(ours + "down/{part}", theirs + "adapter_down.0.{part}",
                choices=choices),
      HubTensor(ours + "up/{part}", theirs + "adapter_up.{part}",
                choices=choices),
      HubTensor("bert/adapters/{rule}",
                "bert.shared_parameters.{adapter}.{rule}",
                choices={"rule": {r: r for r in _RULES}}))
  return AdapterHubLayout(tensors)


def _rule_shapes(config):
  n = config.phm_dim
  if config.factorized_phm_rule:
    return {"phm_rule_left": (n, n, 1), "phm_rule_right": (n, 1, n)}
  return {"phm_rule": (n, n, n)}


def _rule_initializer(config, shared):
  seed = config.init_weights_seed
  if config.phm_c_init == "uniform":
    # AdapterHub: U(-1, 1) for a shared rule, U(-0.01, 0.01) per layer.
    bound = 1.0 if shared else 0.01
    return keras.initializers.RandomUniform(-bound, bound, seed=seed)
  std = config.phm_init_range if shared else 0.01
  return keras.initializers.RandomNormal(stddev=std, seed=seed)


def _rule(variables):
  """The [n, n, n] rule from its variables (a product if factorized)."""
  if "phm_rule" in variables:
    return tf.convert_to_tensor(variables["phm_rule"])
  return tf.matmul(variables["phm_rule_left"], variables["phm_rule_right"])


def check_phm_config(config):
  """Raises UserError for PHM settings this toolkit does not build."""
  if config.phm_dim is None or int(config.phm_dim) < 1:
    raise UserError("bn adapter config: phm_dim=%r must be an integer >= 1"
                    % (config.phm_dim,))
  if config.shared_W_phm:
    raise UserError("bn adapter config: shared_W_phm=True (PHM weights "
                    "shared across layers) is not supported by this toolkit "
                    "yet")
  if config.learn_phm is False:
    raise UserError("bn adapter config: learn_phm=False (a frozen PHM rule) "
                    "is not supported by this toolkit yet")
  if config.phm_c_init not in ("normal", "uniform"):
    raise UserError("bn adapter config: phm_c_init=%r; expected 'normal' or "
                    "'uniform'" % (config.phm_c_init,))
  if config.hypercomplex_nonlinearity not in ("phm", "glorot-normal",
                                              "glorot-uniform", "normal"):
    raise UserError("bn adapter config: hypercomplex_nonlinearity=%r; "
                    "expected phm, glorot-normal, glorot-uniform or normal"
                    % (config.hypercomplex_nonlinearity,))
  if not isinstance(config.phm_rank, int) or config.phm_rank < 1:
    raise UserError("bn adapter config: phm_rank=%r must be an integer >= 1"
                    % (config.phm_rank,))


@keras.saving.register_keras_serializable(package="adapter_bert")
class SharedPHMRule(keras.layers.Layer):
  """The model-level PHM rule of one Compacter adapter (shared_phm_rule)."""

  def __init__(self, config, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    init = _rule_initializer(config, shared=True)
    self.rule_variables = {
        name: self.add_weight(name=name, shape=shape, initializer=init)
        for name, shape in _rule_shapes(config).items()}
    self.built = True

  def checkpoint_variables(self):
    """[(name under `bert/`, variable)]."""
    return [("adapters/" + name, v) for name, v in
            sorted(self.rule_variables.items())]

  def rule(self):
    return _rule(self.rule_variables)

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    return base



@keras.saving.register_keras_serializable(package="adapter_bert")
class PHMLinear(keras.layers.Layer):
  """One PHM projection [rows, in] -> [rows, out] (see the module doc)."""

  def __init__(self, config, in_features, out_features, shared_rule=None,
               **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.in_features = int(in_features)
    self.out_features = int(out_features)
    n = config.phm_dim
    for what, size in (("input", self.in_features),
                       ("output", self.out_features)):
      if size % n:
        raise UserError("bn adapter config: a PHM layer's %s size %d is not "
                        "divisible by phm_dim=%d" % (what, size, n))
    self._shared = (registry.LayerRef(shared_rule) if shared_rule is not None
                    else None)
    if config.shared_phm_rule and shared_rule is None:
      raise ValueError("PHMLinear: shared_phm_rule needs the shared rule")
    seed = config.init_weights_seed
    p, q, r = self.in_features // n, self.out_features // n, config.phm_rank

    def glorot(a, b):
      # AdapterHub initializes every W slice with xavier_normal_ whatever
      # hypercomplex_nonlinearity says (its first test is the string's
      # truth): normal, std sqrt(2 / (fan_in + fan_out)).
      return keras.initializers.RandomNormal(
          stddev=math.sqrt(2.0 / (a + b)), seed=seed)

    if config.factorized_phm_W:
      self.weight_variables = {
          "W_left": self.add_weight(name="W_left", shape=(n, p, r),
                                    initializer=glorot(p, r)),
          "W_right": self.add_weight(name="W_right", shape=(n, r, q),
                                     initializer=glorot(r, q))}
    else:
      self.weight_variables = {
          "W": self.add_weight(name="W", shape=(n, p, q),
                               initializer=glorot(p, q))}
    self.rule_variables = {}
    if not config.shared_phm_rule:
      init = _rule_initializer(config, shared=False)
      self.rule_variables = {
          name: self.add_weight(name=name, shape=shape, initializer=init)
          for name, shape in _rule_shapes(config).items()}
    self.b = (self.add_weight(name="b", shape=(self.out_features,),
                              initializer="zeros")
              if config.phm_bias else None)
    self.built = True

  def checkpoint_variables(self):
    """[(name relative to the projection's scope, variable)]."""
    items = sorted(self.weight_variables.items())
    items += sorted(self.rule_variables.items())
    if self.b is not None:
      items.append(("b", self.b))
    return items

  def kernel(self):
    """H = sum_i kron(R_i, W_i): [in, out]."""
    if "W" in self.weight_variables:
      w = tf.convert_to_tensor(self.weight_variables["W"])
    else:
      w = tf.matmul(self.weight_variables["W_left"],
                    self.weight_variables["W_right"])  # [n, in/n, out/n]
    rule = (self._shared.layer.rule() if self._shared is not None
            else _rule(self.rule_variables))  # [n, n, n]
    # kron(R_i, W_i)[a * p + k, c * q + l] = R_i[a, c] · W_i[k, l]
    h = tf.einsum("iac,ikl->akcl", rule, w)
    return tf.reshape(h, [self.in_features, self.out_features])

  def call(self, x):
    y = tf.matmul(x, tf.cast(self.kernel(), x.dtype))
    if self.b is not None:
      y += tf.cast(self.b, x.dtype)
    return y

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), in_features=self.in_features,
                out_features=self.out_features)
    return base


def shared_for(config, bert_config):
  """The adapter's shared PHM rule (a model-level layer), or None."""
  del bert_config
  if not config.phm_layer or not config.shared_phm_rule:
    return None
  return SharedPHMRule(config, name="phm_rule")
