"""Composition blocks, with AdapterHub's names, and the active setup.

`set_active_adapters` takes an adapter name, a list of names (a Stack, as
in AdapterHub) or a block:

  Stack(a, b, ...)     at every hook point, a's layer, then b's, ...
  Parallel(a, b, ...)  the batch runs through each element side by side
                       (one forward pass, the shared base's products done
                       once on the stacked batch), each with its own head.
  Average(a, b, ..., weights=None, normalize_weights=True)
                       at every hook point, the weighted sum of what each
                       element's layers output from the same input (weights
                       equal, or normalised to sum 1, by default).
  BatchSplit(a, b, ..., batch_sizes=[...])
                       the first batch_sizes[0] examples through a (and its
                       head), the next batch_sizes[1] through b, ...
  MultiTask(a, b, ...) each example through the element its `task_ids`
                       feature names (0 for a, 1 for b, ...): one batch may
                       mix tasks, and no example runs through another's
                       adapters.
  Fuse(a, b, ..., name=None)
                       AdapterFusion: at every place where each has a
                       bottleneck, an attention over their outputs (the
                       fusion added with `add_adapter_fusion`).

Nesting follows AdapterHub's rules for the blocks built here (Stack holds
any; Parallel, BatchSplit and MultiTask hold names, Stacks and Averages;
Average holds names and Stacks), with one block that splits the batch
(Parallel, BatchSplit or MultiTask) per setup. Every example runs on its
own through BERT, so a Stack around a BatchSplit or MultiTask is the same
as each of its elements stacked alone: the setup resolves to one branch
per element.

The model resolves the block into an `ActiveSetup`: its branches, each an
ordered tuple of steps (adapter names, or an `AverageStep`) with the
LayerNorms and head it uses, how the branches share the batch, and the
layers whose adapters are skipped (AdapterDrop). Every hook point
dispatches through that one object.
"""

import dataclasses

from adapter_bert.errors import UserError


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

  def _options(self):
    """The block's keyword arguments (weights, batch sizes), as a tuple of
    (name, value) pairs."""
    return ()

  def __eq__(self, other):
    return (type(self) is type(other) and self.children == other.children
            and self._options() == other._options())

  def __hash__(self):
    return hash((type(self).__name__, self.children, self._options()))

  def __repr__(self):
    parts = [repr(c) for c in self.children]
    parts += ["%s=%r" % (k, list(v)) for k, v in self._options()]
    return "%s(%s)" % (type(self).__name__, ", ".join(parts))


class Stack(AdapterCompositionBlock):
  """Adapters applied one after the other at every hook point."""


class Parallel(AdapterCompositionBlock):
  """The batch through each element side by side, each with its head."""


class Average(AdapterCompositionBlock):
  """The weighted sum of the elements' outputs at every hook point.

  Args:
    *children: adapter names or Stacks of them.
    weights: one number per element (default: equal).
    normalize_weights: divide the weights by their sum (AdapterHub's
      default); False sums the outputs with the weights as given.

  Raises:
    UserError: for weights of another length, or summing to zero.
  """

  def __init__(self, *children, weights=None, normalize_weights=True):
    super().__init__(*children)
    if weights is None:
      weights = [1.0] * len(self.children)
    try:
      weights = [float(w) for w in weights]
    except (TypeError, ValueError):
      raise UserError("Average weights must be numbers, got %r"
                      % (weights,)) from None
    if len(weights) != len(self.children):
      raise UserError("Average of %d adapters got %d weights"
                      % (len(self.children), len(weights)))
    if normalize_weights:
      total = sum(weights)
      if total == 0:
        raise UserError("Average weights %r sum to zero" % (weights,))
      weights = [w / total for w in weights]
    self.weights = tuple(weights)

  def _options(self):
    return (("weights", self.weights),)


class BatchSplit(AdapterCompositionBlock):
  """Consecutive slices of the batch, each through one element.

  Args:
    *children: adapter names, Stacks or Averages.
    batch_sizes: one count per element, or one int for all; the batch must
      hold their sum.

  Raises:
    UserError: for sizes of another length or not counts.
  """

  def __init__(self, *children, batch_sizes):
    super().__init__(*children)
    if isinstance(batch_sizes, int) and not isinstance(batch_sizes, bool):
      batch_sizes = [batch_sizes] * len(self.children)
    sizes = list(batch_sizes) if isinstance(batch_sizes,
                                            (list, tuple)) else None
    if sizes is None or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 0
        for n in sizes):
      raise UserError("BatchSplit batch_sizes must be counts (ints >= 0), "
                      "got %r" % (batch_sizes,))
    if len(sizes) != len(self.children):
      raise UserError("BatchSplit of %d adapters got %d batch_sizes"
                      % (len(self.children), len(sizes)))
    self.batch_sizes = tuple(sizes)

  def _options(self):
    return (("batch_sizes", self.batch_sizes),)


class MultiTask(AdapterCompositionBlock):
  """Each example through the element its `task_ids` feature names."""


class Fuse(AdapterCompositionBlock):
  """AdapterFusion of the named adapters (see adapters.fusion).

  Args:
    *children: adapter names.
    name: the fusion's name (default: the names joined by commas), as given
      to `add_adapter_fusion`.
  """

  def __init__(self, *children, name=None):
    super().__init__(*children)
    if name is not None and (not isinstance(name, str) or not name):
      raise UserError("a Fuse name must be a non-empty string, got %r"
                      % (name,))
    self._name = name

  @property
  def name(self):
    return self._name or ",".join(self.flatten())

  def _options(self):
    default = ",".join(self.flatten())
    return ((("name", (self._name,)),) if self._name not in (None, default)
            else ())


# The blocks that divide the batch among branches; one per setup.
_SPLITTING = (Parallel, BatchSplit, MultiTask)

# AdapterHub's nesting rules (its ALLOWED_NESTINGS) for the blocks here.
ALLOWED_NESTINGS = {
    Stack: (str, Stack, Parallel, BatchSplit, MultiTask, Average, Fuse),
    Parallel: (str, Stack, Average),
    BatchSplit: (str, Stack, Average),
    MultiTask: (str, Stack, Average, Fuse),
    Average: (str, Stack),
    Fuse: (str,),
}


def validate(block):
  """Raises UserError for a nesting outside ALLOWED_NESTINGS."""
  for child in block.children:
    if type(child) not in ALLOWED_NESTINGS[type(block)]:
      raise UserError("%s cannot be nested in %s: %r" % (
          type(child).__name__, type(block).__name__, block))
    if isinstance(child, AdapterCompositionBlock):
      validate(child)


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
  if spec is None:
    return spec
  if isinstance(spec, AdapterCompositionBlock):
    validate(spec)
    return spec
  if isinstance(spec, str):
    return Stack(spec)
  if isinstance(spec, (list, tuple)):
    return Stack(*spec)
  raise UserError("set_active_adapters takes an adapter name, a list of "
                  "names or a composition block, got %r" % (spec,))


@dataclasses.dataclass(frozen=True)
class AverageStep:
  """One step of a branch: the weighted sum of several paths' outputs.

  Attributes:
    paths: tuple of tuples of adapter names, each applied in order.
    weights: one float per path.
  """
  paths: tuple
  weights: tuple

  def names(self):
    out = []
    for path in self.paths:
      out += [n for n in path if n not in out]
    return out


@dataclasses.dataclass(frozen=True)
class FuseStep:
  """One step of a branch: the AdapterFusion `fusion` of `names`."""
  names: tuple
  fusion: str


@dataclasses.dataclass(frozen=True)
class Branch:
  """One path through the model.

  Attributes:
    adapters: every adapter name of the branch, in order of first use.
    layer_norms: the adapter whose LayerNorms are used (None: the base's).
    head: the head that reads this branch's output (None: no head).
    steps: what runs at each hook point, in order: adapter names and
      AverageSteps (None: the adapters, one after the other).
  """
  adapters: tuple = ()
  layer_norms: str = None
  head: str = None
  steps: tuple = None

  @property
  def step_list(self):
    return self.adapters if self.steps is None else self.steps


@dataclasses.dataclass(frozen=True)
class ActiveSetup:
  """What a forward pass runs.

  Attributes:
    branches: one Branch, or several.
    split: how several branches share the batch: None (Parallel: each
      branch sees the whole batch, side by side), "sizes" (BatchSplit:
      consecutive slices of `batch_sizes`) or "task_ids" (MultiTask: by the
      examples' task_ids feature).
    batch_sizes: the BatchSplit's sizes.
    skip_layers: encoder layers that run without any adapter, as the base
      model's (AdapterDrop); when layer 0 is skipped, the embeddings too.
  """
  branches: tuple = (Branch(),)
  split: str = None
  batch_sizes: tuple = None
  skip_layers: frozenset = frozenset()

  @property
  def parallel(self):
    """Several branches side by side on the whole batch (Parallel)."""
    return len(self.branches) > 1 and self.split is None

  @property
  def several(self):
    return len(self.branches) > 1

  @property
  def adapter_names(self):
    names = []
    for branch in self.branches:
      names += [n for n in branch.adapters if n not in names]
    return names

  def alone(self, branch):
    """The setup of one of the branches on its own."""
    return ActiveSetup((branch,), skip_layers=self.skip_layers)

  def without_adapters(self):
    """The same branches (and heads) with no adapter: a skipped layer."""
    return ActiveSetup(tuple(Branch((), None, b.head)
                             for b in self.branches), self.split,
                       self.batch_sizes)


def fusion_names(branch):
  """The names of the fusions a branch runs."""
  return [s.fusion for s in branch.step_list if isinstance(s, FuseStep)]


def _steps(node, outer):
  """The steps of a name, Stack or Average (no block that splits the batch).

  Raises:
    UserError: for a Parallel, BatchSplit or MultiTask inside `outer`.
  """
  if isinstance(node, str):
    return (node,)
  if isinstance(node, _SPLITTING):
    raise UserError("%s can only be used once per setup, outside other "
                    "blocks but Stack: %r" % (type(node).__name__, outer))
  if isinstance(node, Average):
    paths = tuple(_flat_names(_steps(c, outer)) for c in node.children)
    return (AverageStep(paths, node.weights),)
  if isinstance(node, Fuse):
    return (FuseStep(tuple(node.children), node.name),)
  out = ()
  for child in node.children:
    out += _steps(child, outer)
  return out


def _flat_names(steps):
  names = []
  for step in steps:
    for name in (step.names() if isinstance(step, AverageStep) else
                 step.names if isinstance(step, FuseStep) else [step]):
      if name not in names:
        names.append(name)
  return tuple(names)


def resolve(block, owns_layer_norms, head_for, skip_layers=()):
  """The ActiveSetup of a block.

  Args:
    block: None or a block of this module (see `parse`).
    owns_layer_norms: callable(name) -> whether that adapter holds its own
      LayerNorms; a branch uses those of its last adapter that does.
    head_for: callable(branch adapters, several branches) -> head name or
      None.
    skip_layers: encoder layer indices whose adapters are skipped.

  Raises:
    UserError: for a composition this model cannot run.
  """
  skip_layers = frozenset(skip_layers)
  if block is None:
    return ActiveSetup((Branch((), None, head_for((), False)),),
                       skip_layers=skip_layers)
  if isinstance(block, _SPLITTING):
    prefix, splitter, suffix = (), block, ()
  else:
    children = list(block.children) if isinstance(block, Stack) else [block]
    splitting = [i for i, c in enumerate(children)
                 if isinstance(c, _SPLITTING)]
    if len(splitting) > 1:
      raise UserError("one Parallel, BatchSplit or MultiTask per setup: %r"
                      % (block,))
    if not splitting:
      prefix, splitter, suffix = _steps(block, block), None, ()
    else:
      i = splitting[0]
      splitter = children[i]
      if isinstance(splitter, Parallel):
        raise UserError("Parallel inside Stack is not supported yet: %r"
                        % (block,))
      prefix = _steps(Stack(*children[:i]), block) if i else ()
      suffix = (_steps(Stack(*children[i + 1:]), block)
                if i + 1 < len(children) else ())
  if splitter is None:
    paths = [prefix]
  else:
    paths = [prefix + _steps(child, block) + suffix
             for child in splitter.children]
  several = len(paths) > 1
  branches = []
  for steps in paths:
    for step in steps:
      if isinstance(step, AverageStep):
        owners = [n for n in step.names() if owns_layer_norms(n)]
        if owners:
          raise UserError(
              "Average cannot combine %s: %s train%s their own LayerNorms, "
              "which the averaged outputs would have to share; "
              "average_adapter() writes one adapter of the averaged weights "
              "instead" % (", ".join(step.names()), ", ".join(owners),
                           "s" if len(owners) == 1 else ""))
      if isinstance(step, FuseStep):
        owners = [n for n in step.names if owns_layer_norms(n)]
        if owners:
          raise UserError(
              "Fuse cannot combine %s: %s train%s their own LayerNorms, "
              "which the fused outputs would have to share (fuse AdapterHub-"
              "style adapters: pfeiffer, houlsby, ...)"
              % (", ".join(step.names), ", ".join(owners),
                 "s" if len(owners) == 1 else ""))
    names = _flat_names(steps)
    plain = all(isinstance(s, str) for s in steps)
    owners = [n for n in names if owns_layer_norms(n)]
    branches.append(Branch(names, owners[-1] if owners else None,
                           head_for(names, several),
                           None if plain and steps == names else steps))
  split = None
  if isinstance(splitter, BatchSplit):
    split = "sizes"
  elif isinstance(splitter, MultiTask):
    split = "task_ids"
  return ActiveSetup(tuple(branches), split,
                     splitter.batch_sizes if split == "sizes" else None,
                     skip_layers)
