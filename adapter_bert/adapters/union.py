"""Unions of adapter methods in one adapter (AdapterHub's `ConfigUnion`).

`ConfigUnion(LoRAConfig(), "pfeiffer")` is one adapter whose layers are
those of each config, each at its own hook points: it trains, saves and
loads as one. As in AdapterHub, two configs of one method are refused
unless they are bottlenecks at different places (one `mh_adapter`, the
other `output_adapter`); whatever still puts two layers at one hook point
of one block is refused when the adapter is added.
"""

import json

import keras

from adapter_bert.adapters import bottleneck
from adapter_bert.adapters import lora
from adapter_bert.adapters import prefix_tuning
from adapter_bert.adapters import registry
from adapter_bert.adapters.config import register_preset
from adapter_bert.errors import UserError
from adapter_bert.adapters.config import get_preset


class ConfigUnion:
  """Several method configs making one adapter (frozen, hashable).

  Args:
    *configs: configs, preset names or their dicts (not unions).
  """

  kind = "union"
  architecture = "union"

  def __init__(self, *configs):
    resolved = []
    for config in configs:
      if isinstance(config, str):
        config = get_preset(config)
      elif isinstance(config, dict):
        config = registry.config_from_dict(config, source="union config")
      if isinstance(config, ConfigUnion):
        raise UserError("a ConfigUnion cannot hold another ConfigUnion")
      registry.method_of(config)  # An unknown method fails here.
      resolved.append(config)
    if not resolved:
      raise UserError("ConfigUnion() needs at least one config")
    _check_pairs(resolved)
    object.__setattr__(self, "configs", tuple(resolved))

  def __setattr__(self, name, value):
    raise AttributeError("ConfigUnion is frozen")

  def __eq__(self, other):
    return isinstance(other, ConfigUnion) and self.configs == other.configs

  def __hash__(self):
    return hash(self.to_json_string())

  def __repr__(self):
    return "ConfigUnion(%s)" % ", ".join(repr(c) for c in self.configs)

  def to_dict(self):
    return {"architecture": "union", "kind": "union",
            "configs": [c.to_dict() for c in self.configs]}

  def to_json_string(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

  @classmethod
  def from_dict(cls, d):
    unknown = sorted(set(d) - {"architecture", "kind", "configs"})
    if unknown:
      raise UserError("unknown field(s) of a union adapter config: %s"
                      % ", ".join(unknown))
    configs = d.get("configs")
    if not isinstance(configs, list):
      raise UserError("union adapter config: 'configs' must be a list of "
                      "configs")
    return cls(*configs)


def _check_pairs(configs):
  if len(configs) > 1 and any(registry.is_encoder_level(c) for c in configs):
    raise UserError("a ConfigUnion cannot hold layer_attention: it reads a "
                    "frozen encoder, which the other methods would change")
  for i, a in enumerate(configs):
    for b in configs[i + 1:]:
      if a.kind != b.kind:
        continue
      if getattr(a, "leave_out", ()) or getattr(b, "leave_out", ()):
        continue  # Decided per block when the layers are placed.
      if a.kind == "bn" and (a.mh_adapter != b.mh_adapter
                             and a.output_adapter != b.output_adapter):
        continue
      raise UserError("a ConfigUnion cannot hold two %s configs at the same "
                      "places" % a.kind)


class SharedParts(keras.layers.Layer):
  """The model-level layers of a union's parts, by part index."""

  def __init__(self, parts, **kwargs):
    super().__init__(**kwargs)
    self.parts = parts  # {str(index): layer}
    self.built = True

  def checkpoint_variables(self):
    return [item for i in sorted(self.parts)
            for item in self.parts[i].checkpoint_variables()]

  def serving_checkpoint_variables(self):
    items = []
    for i in sorted(self.parts):
      part = self.parts[i]
      items += (part.serving_checkpoint_variables()
                if hasattr(part, "serving_checkpoint_variables")
                else part.checkpoint_variables())
    return items


def _shared_for(config, bert_config):
  parts = {}
  for i, sub in enumerate(config.configs):
    layer = registry.shared_for(sub, bert_config)
    if layer is not None:
      parts[str(i)] = layer
  return SharedParts(parts, name="union") if parts else None


def _serving_config(config):
  return ConfigUnion(*[registry.serving_config(c) for c in config.configs])


def _layers_for(config, bert_config, where, shared=None):
  layers = {}
  for i, sub in enumerate(config.configs):
    part = shared.parts.get(str(i)) if shared is not None else None
    for point, layer in registry.layers_for(sub, bert_config, where,
                                            part).items():
      if point in layers:
        raise UserError("ConfigUnion: two of its configs put a layer at %s "
                        "of %s" % (point, "the embeddings" if where ==
                                   "embeddings" else "layer %s" % where))
      layers[point] = layer
  return layers


registry.register_method(
    "union", ConfigUnion, _layers_for, encoder_level=False,
    parts=lambda config: list(config.configs),
    owns_layer_norms=lambda config: any(
        registry.owns_layer_norms(c) for c in config.configs),
    shared_for=_shared_for, serving_config=_serving_config)

# AdapterHub's MAMConfig (He et al. 2022, "mix-and-match"): prefix tuning
# with a wider MLP, and a parallel bottleneck at the feed-forward.
register_preset("mam", ConfigUnion(
    prefix_tuning.PrefixTuningConfig(bottleneck_size=800),
    bottleneck.PAR_BN))

# AdapterHub's UniPELTConfig (Mao et al. 2022): prefix tuning (10
# positions), a pfeiffer bottleneck (reduction 16) and LoRA (r 8, alpha 2),
# each with its gate.
register_preset("unipelt", ConfigUnion(
    prefix_tuning.PrefixTuningConfig(prefix_length=10, use_gating=True),
    bottleneck.SEQ_BN.replace(reduction_factor=16, use_gating=True),
    lora.LoRAConfig(r=8, alpha=2, use_gating=True)))
