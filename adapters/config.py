"""Adapter configuration: a frozen dataclass, JSON round trip, named presets."""

import dataclasses
import json

from training.errors import UserError

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
    kind: adapter layer type, a key of adapters.ADAPTER_TYPES.
  """
  size: int = 64
  init_scale: float = 1e-3
  activation: str = "gelu"
  locations: tuple = LOCATIONS
  kind: str = "bottleneck"

  def __post_init__(self):
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
    from compute.activations import get_activation  # Validates the name.
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


PRESETS = {}


def register_preset(name, config):
  """Registers a named AdapterConfig (names are case-insensitive)."""
  PRESETS[name.lower()] = config
  return config


def get_preset(name):
  """Returns the AdapterConfig registered under `name`.

  Raises:
    UserError: for an unknown name.
  """
  try:
    return PRESETS[name.lower()]
  except KeyError:
    raise UserError("unknown adapter preset %r; known: %s"
                    % (name, ", ".join(sorted(PRESETS)))) from None


# The paper's sizes (Houlsby et al. 2019 sweep {8, 64, 256}); 64 is the
# reference code's default.
register_preset("houlsby", AdapterConfig())
register_preset("houlsby-8", AdapterConfig(size=8))
register_preset("houlsby-64", AdapterConfig(size=64))
register_preset("houlsby-256", AdapterConfig(size=256))
register_preset("none", AdapterConfig(size=0))
