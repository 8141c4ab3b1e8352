"""Adapter configuration: a frozen dataclass, JSON round trip, named presets."""

import dataclasses
import json

from adapter_bert.errors import UserError
from adapter_bert.compute.activations import get_activation

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
    if name.lower() in ADAPTERHUB_NOT_BUILT:
      raise UserError("adapter preset %r is AdapterHub's %s, which this "
                      "toolkit does not build yet; known: %s"
                      % (name, ADAPTERHUB_NOT_BUILT[name.lower()],
                         ", ".join(sorted(PRESETS)))) from None
    raise UserError("unknown adapter preset %r; known: %s"
                    % (name, ", ".join(sorted(PRESETS)))) from None


# AdapterHub 1.3's preset names of methods not built here.
ADAPTERHUB_NOT_BUILT = {
    "mtl_lora": "multi-task LoRA (MTLLoRAConfig)",
    "vera": "VeRA (VeraConfig)",
    "dora": "DoRA (DoRAConfig)",
    "dvora": "DVoRA (DvoRAConfig)",
    "loreft": "LoReFT (LoReftConfig)",
    "noreft": "NoReFT (NoReftConfig)",
    "direft": "DiReFT (DiReftConfig)",
}


# The reference (adapter-bert) at the paper's sizes (Houlsby et al. 2019
# sweep {8, 64, 256}); 64 is the reference code's default. AdapterHub's
# names ("houlsby", "pfeiffer", "lora", ...) are registered by the files of
# their methods.
register_preset("adapter-bert", AdapterConfig())
register_preset("adapter-bert-8", AdapterConfig(size=8))
register_preset("adapter-bert-64", AdapterConfig(size=64))
register_preset("adapter-bert-256", AdapterConfig(size=256))
register_preset("none", AdapterConfig(size=0))


class MethodConfig:
  """Shared behaviour of the AdapterHub-style method configs (frozen
  dataclasses with a `kind` field): dict/JSON round trip, unknown keys and
  AdapterHub's `architecture` key handled, one-line errors."""

  # AdapterHub's value of `architecture` for this method (None: absent),
  # and other values it may write.
  architecture = None
  architecture_aliases = ()

  def to_dict(self):
    d = dataclasses.asdict(self)
    for key, value in d.items():
      if isinstance(value, tuple):
        d[key] = list(value)
    return d

  def to_json_string(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

  def replace(self, **changes):
    """A copy with `changes` (AdapterHub's `config.replace(...)`)."""
    return type(self).from_dict(dict(self.to_dict(), **changes))

  @classmethod
  def from_dict(cls, d):
    d = dict(d)
    architecture = d.pop("architecture", cls.architecture)
    if architecture not in (cls.architecture,) + cls.architecture_aliases:
      raise UserError("%s: architecture %r is not %r" % (
          cls.__name__, architecture, cls.architecture))
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise UserError("unknown field(s) of a %s adapter config: %s"
                      % (cls.kind_name(), ", ".join(unknown)))
    return cls(**d)

  @classmethod
  def kind_name(cls):
    return next(f.default for f in dataclasses.fields(cls) if f.name == "kind")


def check_choice(config, field, choices):
  value = getattr(config, field)
  if value not in choices:
    raise UserError("%s adapter config: %s=%r is not one of %s" % (
        config.kind, field, value, ", ".join(repr(c) for c in choices)))


def check_range(config, field, low, high=None, low_open=False):
  value = getattr(config, field)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if ok:
    ok = value > low if low_open else value >= low
    ok = ok and (high is None or value <= high)
  if not ok:
    raise UserError("%s adapter config: %s=%r is out of range (%s %s%s)" % (
        config.kind, field, value, ">" if low_open else ">=", low,
        "" if high is None else ", <= %s" % high))
