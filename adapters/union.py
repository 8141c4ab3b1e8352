"""Unions of adapter methods in one adapter (AdapterHub's `ConfigUnion`).

`ConfigUnion(LoRAConfig(), "pfeiffer")` is one adapter whose layers are
those of each config, each at its own hook points: it trains, saves and
loads as one. As in AdapterHub, two configs of one method are refused
unless they are bottlenecks at different places (one `mh_adapter`, the
other `output_adapter`); whatever still puts two layers at one hook point
of one block is refused when the adapter is added.
"""

import json

from adapters import registry
from training.errors import UserError


class ConfigUnion:
  """Several method configs making one adapter (frozen, hashable).

  Args:
    *configs: configs, preset names or their dicts (not unions).
  """

  kind = "union"
  architecture = "union"

  def __init__(self, *configs):
    from adapters.config import get_preset  # pylint: disable=g-import-not-at-top
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


def _layers_for(config, bert_config, where):
  layers = {}
  for sub in config.configs:
    for point, layer in registry.layers_for(sub, bert_config, where).items():
      if point in layers:
        raise UserError("ConfigUnion: two of its configs put a layer at %s "
                        "of %s" % (point, "the embeddings" if where ==
                                   "embeddings" else "layer %s" % where))
      layers[point] = layer
  return layers


registry.register_method(
    "union", ConfigUnion, _layers_for,
    owns_layer_norms=lambda config: any(
        registry.owns_layer_norms(c) for c in config.configs))
