"""What every method's config shares: named presets, MethodConfig (the
AdapterHub-style dict/JSON round trip) and its field checks. Each method's
config class lives in its method's file."""

import dataclasses
import json
import typing

from adapter_bert.errors import UserError
from adapter_bert.errors import clip_value

PRESETS = {}


def register_preset(name, config):
  """Registers a named config of any method (names are case-insensitive)."""
  PRESETS[name.lower()] = config
  return config


def get_preset(name):
  """Returns the config registered under `name`.

  Raises:
    UserError: for an unknown name.
  """
  try:
    return PRESETS[name.lower()]
  except KeyError:
    raise UserError("unknown adapter preset %r; known: %s"
                    % (name, ", ".join(sorted(PRESETS)))) from None


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


class OtherDefaults:
  """Mixin of a config class that is another method config class with
  other defaults (AdapterHub's AdapterPlusConfig, LoReftConfig, ...): its
  configs equal the base class's config with the same fields, which is
  what they read back as. Declare the dataclass with eq=False."""

  def __eq__(self, other):
    if not isinstance(other, MethodConfig) or other.kind != self.kind:
      return NotImplemented
    return self.to_dict() == other.to_dict()

  def __hash__(self):
    return super().__hash__()


def check_choice(config, field, choices):
  value = getattr(config, field)
  if value not in choices:
    raise UserError("%s adapter config: %s=%s is not one of %s" % (
        config.kind, field, clip_value(repr(value)),
        ", ".join(repr(c) for c in choices)))


def check_range(config, field, low, high=None, low_open=False,
                high_open=False):
  value = getattr(config, field)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if ok:
    ok = value > low if low_open else value >= low
    ok = ok and (high is None or (value < high if high_open
                                  else value <= high))
  if not ok:
    raise UserError("%s adapter config: %s=%s is out of range (%s %s%s)" % (
        config.kind, field, clip_value(repr(value)),
        ">" if low_open else ">=", low,
        "" if high is None else ", %s %s" % ("<" if high_open else "<=",
                                              high)))


def _matches(value, annotation):
  """Whether `value` (as JSON or Python gives it) is of a field's declared
  type; bool is never an int or a float, a list stands for a tuple."""
  if annotation is typing.Any or isinstance(annotation, str):
    return True
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if origin is typing.Union:
    return any(_matches(value, a) for a in args)
  if annotation is type(None):
    return value is None
  if annotation is bool:
    return isinstance(value, bool)
  if annotation is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if annotation is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if annotation is str:
    return isinstance(value, str)
  if annotation is tuple:
    return isinstance(value, (list, tuple))
  if origin is tuple:  # Tuple[X, ...]
    return isinstance(value, (list, tuple)) and all(
        _matches(item, args[0]) for item in value)
  return True


def _describe(annotation):
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if origin is typing.Union:
    return " or ".join(_describe(a) for a in args)
  if origin is tuple:
    return "a list of " + {int: "integers", float: "numbers",
                           str: "strings"}.get(args[0], str(args[0]))
  return {bool: "true or false", int: "an integer", float: "a number",
          str: "a string", tuple: "a list", type(None): "null"}.get(
              annotation, str(annotation))


def check_field_types(config):
  """Refuses a field whose value is not of its declared type.

  Called first in a config's __post_init__, so that JSON's "false" (a
  string) or "0,1" for a list is refused rather than read as true or as
  characters.

  Raises:
    UserError: naming the config, the field, its value (cut to
      errors.VALUE_LIMIT characters) and what is allowed.
  """
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if not _matches(value, field.type):
      raise UserError("%s adapter config: %s=%s (%s) is not %s" % (
          getattr(config, "kind", type(config).__name__), field.name,
          clip_value(value), type(value).__name__, _describe(field.type)))
