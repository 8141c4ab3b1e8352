"""How a method's variables are named in AdapterHub's files.

A method that AdapterHub also has declares, in its own file, an
`AdapterHubLayout`: one `HubTensor` per kind of variable, pairing this
model's checkpoint name with AdapterHub's state-dict name as templates, and
saying whether the value is transposed (torch's Linear weights are [out,
in]) or reshaped. `storage.adapterhub` reads and writes AdapterHub's
directories from these declarations alone; it names no method.

Templates hold placeholders in braces:

  {layer}    a block index (digits), the same on both sides
  {adapter}  the adapter's name (AdapterHub's side only)
  {x}        one of the choices given for x: {ours: theirs} pairs, e.g.
             place={"attention/output": "attention.output"}

For example, the down-projection of AdapterHub's bottleneck adapters:

  HubTensor("bert/encoder/layer_{layer}/{place}/adapters/weights1",
            "bert.encoder.layer.{layer}.{place}.adapters.{adapter}."
            "adapter_down.0.weight", transpose=True, choices=PLACES)
"""

import dataclasses
import re
from typing import Callable, Mapping, Optional, Tuple

import numpy as np

_PLACEHOLDER = re.compile(r"\\\{(\w+)\\\}")


def _pattern(template, choices, side, adapter):
  """A regex of `template` on one side (0: ours, 1: AdapterHub's)."""

  def group(m):
    name = m.group(1)
    if name == "layer":
      return r"(?P<layer>\d+)"
    if name == "adapter":
      return re.escape(adapter)
    options = sorted((pair[side] for pair in choices[name].items()),
                     key=len, reverse=True)
    return "(?P<%s>%s)" % (name, "|".join(re.escape(o) for o in options))

  return "^" + _PLACEHOLDER.sub(group, re.escape(template)) + "$"


@dataclasses.dataclass(frozen=True)
class HubTensor:
  """One kind of variable, as named here and in AdapterHub's state dict.

  Attributes:
    ours: this model's checkpoint name template.
    theirs: AdapterHub's name template.
    transpose: AdapterHub holds the value transposed (a Linear weight;
      beyond two axes, the last two swapped).
    theirs_shape: None (the same shape); "vector": AdapterHub drops a
      leading 1 ([1, m] here, [m] there); "column": [n] here, [n, 1] there.
    choices: {placeholder: {our value: AdapterHub's value}}.
  """
  ours: str
  theirs: str
  transpose: bool = False
  theirs_shape: Optional[str] = None
  choices: Mapping[str, Mapping[str, str]] = dataclasses.field(
      default_factory=dict)

  def convert(self, name, adapter, side):
    """The name on the other side of `name` (side 0: ours, 1: AdapterHub's),
    or None if `name` is not of this kind."""
    m = re.match(_pattern((self.ours, self.theirs)[side], self.choices,
                          side, adapter), name)
    if not m:
      return None
    values = {"adapter": adapter}
    for key, value in m.groupdict().items():
      if key == "layer":
        values[key] = value
      else:
        pairs = self.choices[key].items()
        values[key] = next(p[1 - side] for p in pairs if p[side] == value)
    return (self.theirs, self.ours)[side].format(**values)

  def value_to_theirs(self, value):
    value = np.asarray(value)
    if self.theirs_shape == "vector" and value.ndim == 2 and (
        value.shape[0] == 1):
      value = value[0]
    elif self.theirs_shape == "column":
      value = value.reshape(-1, 1)
    return _swap_last_two(value) if self.transpose else value

  def value_to_ours(self, value):
    value = np.asarray(value)
    if self.theirs_shape == "column":
      value = value.reshape(-1)
    return _swap_last_two(value) if self.transpose else value


def _swap_last_two(value):
  """A Linear weight's transpose, or its last two axes swapped where there
  are more (MTL-LoRA's up projections [n, out, r])."""
  return np.swapaxes(value, -1, -2) if value.ndim >= 2 else value


@dataclasses.dataclass(frozen=True)
class HubGroup:
  """One AdapterHub tensor that holds several of our variables (prefix
  tuning's flat prefixes).

  Attributes:
    theirs: AdapterHub's name template (with {adapter}).
    members: a regex matching our names of the variables it holds.
    split: callable(value, config, bert_config) -> {our name: value}.
    join: callable({our name: value}, config, bert_config) -> its value.
  """
  theirs: str
  members: str
  split: Callable
  join: Callable


@dataclasses.dataclass(frozen=True)
class AdapterHubLayout:
  """A method's variables in AdapterHub's files.

  Attributes:
    tensors: the HubTensors, one per kind of variable.
    skip: regexes (with {adapter}) of AdapterHub names read and ignored:
      copies AdapterHub saves more than once.
    groups: HubGroups.
  """
  tensors: Tuple[HubTensor, ...] = ()
  skip: Tuple[str, ...] = ()
  groups: Tuple[HubGroup, ...] = ()

  def __add__(self, other):
    return AdapterHubLayout(self.tensors + other.tensors,
                            self.skip + other.skip,
                            self.groups + other.groups)

  def tensor_for_theirs(self, theirs, adapter):
    """(our name, HubTensor) of AdapterHub's `theirs`, or None."""
    return self._find(theirs, adapter, 1)

  def tensor_for_ours(self, ours, adapter):
    """(AdapterHub's name, HubTensor) of our `ours`, or None."""
    return self._find(ours, adapter, 0)

  def _find(self, name, adapter, side):
    for tensor in self.tensors:
      other = tensor.convert(name, adapter, side)
      if other is not None:
        return other, tensor
    return None

  def skips(self, theirs, adapter):
    return any(re.match(s.replace("{adapter}", re.escape(adapter)), theirs)
               for s in self.skip)

  def group_for_theirs(self, theirs, adapter):
    return next((g for g in self.groups
                 if g.theirs.format(adapter=adapter) == theirs), None)

  def group_for_ours(self, ours):
    return next((g for g in self.groups if re.match(g.members, ours)), None)
