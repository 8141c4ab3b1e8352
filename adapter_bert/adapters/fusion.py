"""AdapterFusion (Pfeiffer et al., EACL 2021), with AdapterHub's semantics.

At each place where every fused adapter has a bottleneck, the last fused
adapter's pre-processing gives the hidden states h, the query and the
adapter residual r (its `residual_before_ln`, `original_ln_before`); each
fused adapter computes its up-projection u_i(h); then, per token,

  scores_i = (Q·query + b_q) · (K·u_i + b_k)        (dropout when training)
  p = softmax(scores)
  out = sum_i p_i · V·u_i  + r                      (value_before_softmax)

which goes into the block's LayerNorm(. + sub-layer input) as an adapter's
output does. The switches are AdapterHub's `AdapterFusionConfig` fields;
its presets: "dynamic" (query, key and value; the value matrix starts at the
identity, 1e-6 elsewhere, and a regularisation 0.01·||I - V||² is added to
the training loss) and "static" (no value matrix).

Variables, under the place's scope (`bert/encoder/layer_<i>/output/` or
`.../attention/output/`): `adapter_fusion/query/kernel` [H, H],
`adapter_fusion/query/bias` [H], `adapter_fusion/key/...`,
`adapter_fusion/value/kernel` [H, H] (no bias).
"""

import dataclasses
import json

import keras
import tensorflow as tf

from adapter_bert.errors import UserError


@dataclasses.dataclass(frozen=True)
class AdapterFusionConfig:
  """AdapterHub's AdapterFusionConfig fields (defaults: "dynamic")."""
  key: bool = True
  query: bool = True
  value: bool = True
  query_before_ln: bool = False
  regularization: bool = True
  residual_before: bool = False
  temperature: bool = False
  value_before_softmax: bool = True
  value_initialized: bool = True
  dropout_prob: float = None

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name == "dropout_prob":
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 <= value < 1):
          raise UserError("AdapterFusionConfig: dropout_prob=%r is not in "
                          "[0, 1) (or None: the model's attention dropout)"
                          % (value,))
      elif f.name == "value_initialized" and isinstance(value, str):
        # AdapterHub types it as a string; "True"/"False" mean booleans.
        if value not in ("True", "False"):
          raise UserError("AdapterFusionConfig: value_initialized=%r is not "
                          "a boolean" % (value,))
        object.__setattr__(self, f.name, value == "True")
      elif not isinstance(value, bool):
        raise UserError("AdapterFusionConfig: %s=%r is not a boolean"
                        % (f.name, value))
    if self.temperature:
      raise UserError("AdapterFusionConfig: temperature=True (AdapterHub's "
                      "softmax temperature lowered at every forward call) is "
                      "not supported")

  def to_dict(self):
    return dataclasses.asdict(self)

  def to_json_string(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

  @classmethod
  def from_dict(cls, d):
    d = dict(d)
    d.pop("architecture", None)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise UserError("unknown field(s) of an AdapterFusionConfig: %s"
                      % ", ".join(unknown))
    return cls(**d)


FUSION_PRESETS = {
    "dynamic": AdapterFusionConfig(),
    "static": AdapterFusionConfig(value=False, regularization=False,
                                  value_initialized=False),
}


def get_fusion_config(config):
  """An AdapterFusionConfig from None ("dynamic"), a preset name, a dict or
  a config."""
  if config is None:
    config = "dynamic"
  if isinstance(config, AdapterFusionConfig):
    return config
  if isinstance(config, str):
    if config not in FUSION_PRESETS:
      raise UserError("unknown AdapterFusion preset %r; expected one of %s"
                      % (config, ", ".join(sorted(FUSION_PRESETS))))
    return FUSION_PRESETS[config]
  if isinstance(config, dict):
    return AdapterFusionConfig.from_dict(config)
  raise UserError("an AdapterFusion config is a preset name, a dict or an "
                  "AdapterFusionConfig, got %r" % (config,))


def _times(x, kernel):
  """x [..., H] times kernel [H, H'] as one [rows, H] product.

  (tf.matmul of a [rows, n, H] tensor with an [H, H'] kernel broadcasts the
  kernel to [rows, H, H'], and its gradient builds that whole tensor before
  summing it: ~2 GB per place for a 32 x 128 batch.)
  """
  flat = tf.reshape(x, [-1, x.shape[-1]])  # [rows * n, H]
  y = tf.matmul(flat, tf.cast(kernel, x.dtype))  # [rows * n, H']
  return tf.reshape(y, tf.concat([tf.shape(x)[:-1], tf.shape(y)[-1:]], 0))


@keras.saving.register_keras_serializable(package="adapter_bert")
class FusionLayer(keras.layers.Layer):
  """The attention over the fused adapters' outputs at one place."""

  def __init__(self, config, hidden_size, dropout_rate, **kwargs):
    super().__init__(**kwargs)
    self.config = get_fusion_config(config)
    self.hidden_size = int(hidden_size)
    self.dropout_rate = float(dropout_rate)
    h = self.hidden_size
    normal = keras.initializers.RandomNormal(stddev=0.02)
    self.projections = {}
    for part in ("query", "key"):
      if getattr(self.config, part):
        self.projections[part] = (
            self.add_weight(name=part + "_kernel", shape=(h, h),
                            initializer=normal),
            self.add_weight(name=part + "_bias", shape=(h,),
                            initializer="zeros"))
    self.value = None
    if self.config.value:
      init = normal
      if self.config.value_initialized:
        # AdapterHub: 1 on the diagonal, 1e-6 elsewhere.
        init = keras.initializers.Constant(
            tf.linalg.set_diag(tf.fill([h, h], 1e-6), tf.ones([h])).numpy())
      self.value = self.add_weight(name="value_kernel", shape=(h, h),
                                   initializer=init)
    self.built = True

  def checkpoint_variables(self):
    """[(name relative to the place's scope, variable)]."""
    items = []
    for part, (kernel, bias) in self.projections.items():
      items += [("adapter_fusion/%s/kernel" % part, kernel),
                ("adapter_fusion/%s/bias" % part, bias)]
    if self.value is not None:
      items.append(("adapter_fusion/value/kernel", self.value))
    return items

  def regularization_loss(self):
    """0.01·||I - V||² (AdapterHub's), where the config asks for it."""
    if self.value is None or not self.config.regularization:
      return None
    eye = tf.eye(self.hidden_size)
    return 0.01 * tf.reduce_sum(tf.square(eye - self.value))

  def _project(self, part, x):
    if part not in self.projections:
      return x
    kernel, bias = self.projections[part]
    return _times(x, kernel) + tf.cast(bias, x.dtype)

  def call(self, query, ups, residual, training=False):
    """query [rows, H]; ups [rows, n, H], the fused adapters' up-projections;
    residual [rows, H]. Returns [rows, H]."""
    c = self.config
    dtype = ups.dtype
    values = ups
    if c.residual_before:
      values = values + residual[:, tf.newaxis, :]
    q = self._project("query", tf.cast(query, dtype))  # [rows, H]
    k = self._project("key", ups)  # [rows, n, H]
    if self.value is not None and c.value_before_softmax:
      values = _times(values, self.value)
    scores = tf.einsum("rh,rnh->rn", q, k)  # [rows, n]
    if training and self.dropout_rate > 0:
      scores = tf.nn.dropout(scores, rate=self.dropout_rate)
    probs = tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1)
    context = tf.einsum("rn,rnh->rh", tf.cast(probs, dtype), values)
    if self.value is not None and not c.value_before_softmax:
      context = _times(context, self.value)
    if not c.residual_before:
      context = context + tf.cast(residual, dtype)
    return context

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), hidden_size=self.hidden_size,
                dropout_rate=self.dropout_rate)
    return base
