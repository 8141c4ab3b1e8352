"""Composition blocks, with AdapterHub's names, and the active setup.

`set_active_adapters` takes an adapter name, a list of names (a Stack, as
in AdapterHub) or a block:

  Stack(a, b, ...)     at every hook point, a's layer, then b's, ...
  Parallel(a, b, ...)  the batch runs through each element side by side
                       (one forward pass, the shared base's products done
                       once on the stacked batch), each with its own head.

The model resolves the block into an `ActiveSetup`: its branches, each an
ordered tuple of adapter names with the LayerNorms and head it uses. Every
hook point dispatches through that one object.
"""

import dataclasses

from training.errors import UserError


class AdapterCompositionBlock:
  """A composition of adapter names and nested blocks."""

  def __init__(self, *children):
    if not children:
      raise UserError("%s() needs at least one adapter"
                      % type(self).__name__)
    self.children = tuple(c if isinstance(c, AdapterCompositionBlock) else
                          _name(c) for c in children)

  def flatten(self):
    """Every adapter name in the block, in order."""
    names = []
    for child in self.children:
      names += (child.flatten() if isinstance(child, AdapterCompositionBlock)
                else [child])
    return names

  def __eq__(self, other):
    return type(self) is type(other) and self.children == other.children

  def __hash__(self):
    return hash((type(self).__name__, self.children))

  def __repr__(self):
    return "%s(%s)" % (type(self).__name__,
                       ", ".join(repr(c) for c in self.children))


class Stack(AdapterCompositionBlock):
  """Adapters applied one after the other at every hook point."""


class Parallel(AdapterCompositionBlock):
  """The batch through each element side by side, each with its head."""


def _name(value):
  if not isinstance(value, str) or not value:
    raise UserError("an adapter name must be a non-empty string, got %r"
                    % (value,))
  return value


def parse(spec):
  """A block from a name, a list of names (a Stack) or a block; None stays.

  Raises:
    UserError: for anything else.
  """
  if spec is None or isinstance(spec, AdapterCompositionBlock):
    return spec
  if isinstance(spec, str):
    return Stack(spec)
  if isinstance(spec, (list, tuple)):
    return Stack(*spec)
  raise UserError("set_active_adapters takes an adapter name, a list of "
                  "names or a composition block, got %r" % (spec,))


@dataclasses.dataclass(frozen=True)
class Branch:
  """One path through the model.

  Attributes:
    adapters: adapter names applied in this order at each hook point.
    layer_norms: the adapter whose LayerNorms are used (None: the base's).
    head: the head that reads this branch's output (None: no head).
  """
  adapters: tuple = ()
  layer_norms: str = None
  head: str = None


@dataclasses.dataclass(frozen=True)
class ActiveSetup:
  """What a forward pass runs: one branch, or several side by side."""
  branches: tuple = (Branch(),)

  @property
  def parallel(self):
    return len(self.branches) > 1

  @property
  def adapter_names(self):
    names = []
    for branch in self.branches:
      names += [n for n in branch.adapters if n not in names]
    return names


def resolve(block, owns_layer_norms, head_for):
  """The ActiveSetup of a block.

  Args:
    block: None, a Stack or a Parallel (whose elements are names or Stacks).
    owns_layer_norms: callable(name) -> whether that adapter holds its own
      LayerNorms; a branch uses those of its last adapter that does.
    head_for: callable(branch adapters, is_parallel) -> head name or None.

  Raises:
    UserError: for a composition this model cannot run.
  """
  if block is None:
    return ActiveSetup((Branch((), None, head_for((), False)),))
  if isinstance(block, Parallel):
    paths = []
    for child in block.children:
      if isinstance(child, Parallel):
        raise UserError("Parallel inside Parallel is not supported: %r"
                        % (block,))
      paths.append(tuple(child.flatten()) if isinstance(child, Stack)
                   else (child,))
  elif isinstance(block, Stack):
    if any(isinstance(c, Parallel) for c in block.children):
      raise UserError("Parallel inside Stack is not supported yet: %r"
                      % (block,))
    paths = [tuple(block.flatten())]
  else:
    raise UserError("unsupported composition block %r" % (block,))
  parallel = len(paths) > 1
  branches = []
  for path in paths:
    owners = [n for n in path if owns_layer_norms(n)]
    branches.append(Branch(path, owners[-1] if owners else None,
                           head_for(path, parallel)))
  return ActiveSetup(tuple(branches))
