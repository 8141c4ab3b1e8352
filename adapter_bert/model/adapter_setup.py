"""Named adapters on one base (`AdaptersMixin`): add, delete, average,
merge and reset; the active setup (composition, AdapterDrop's skipped
layers); views; which variables train.
"""

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import numpy as np

from adapter_bert.adapters import composition
from adapter_bert.adapters import registry
from adapter_bert.errors import UserError
from adapter_bert.model.hooks import as_adapter_config
from adapter_bert.model.hooks import check_name
from adapter_bert.model.hooks import unlocked
from adapter_bert.model.view import ModelView
from adapter_bert.model.view import fusions_of


class AdaptersMixin:
  """Named adapters on one base: add, delete, average, merge and reset; the
  active setup (composition, AdapterDrop's skipped layers); views; which
  variables train.

  Reads and keeps: `config`, `bert` (the BertModel whose hook points hold
  every adapter's layers), `adapter_configs`, `heads`, `fusions`,
  `_active`, `_skip_layers`, `_active_head`.
  """

  # --------------------------------------------------------------- adapters

  @property
  def adapters(self):
    """{name: config} of every adapter, in the order added."""
    return dict(self.adapter_configs)

  def add_adapter(self, name, config=None, set_active=False):
    """Adds adapter `name` to every layer (fresh weights).

    Args:
      name: a new adapter name.
      config: an adapter config, a preset name or its dict; None: the
        reference adapter-bert adapter (bottleneck, size 64).
      set_active: make it the active adapter.

    Raises:
      UserError: for a name taken or a bad config.
    """
    check_name(name, "adapter")
    if name in self.adapter_configs:
      raise UserError("an adapter named %r exists already; delete it first "
                      "or choose another name" % name)
    config = as_adapter_config(config)
    registry.method_of(config)  # An unknown method fails before any change.
    self.adapter_configs[name] = config
    try:
      with unlocked(self):
        self.bert.add_adapter(name, config)
      self.start_from_base(name)
    except BaseException:
      # A config that does not fit this model (a size, a layer index) fails
      # while the layers are built: take out what was added.
      with unlocked(self):
        self.bert.delete_adapter(name)
      del self.adapter_configs[name]
      raise
    if set_active:
      self.set_active_adapters(name)

  def average_adapter(self, adapter_name, adapter_list, weights=None,
                      combine_strategy="linear", normalize_weights=True,
                      overwrite_ok=False, set_active=False, svd_rank=None):
    """Adds adapter `adapter_name`, the weighted average of others' weights.

    As AdapterHub's `average_adapter`: every variable of the adapters (their
    LayerNorm copies and model-level variables included; not their heads)
    is averaged with the weights.

    Args:
      adapter_name: the new adapter's name.
      adapter_list: names of adapters of one config, or {name: weight}.
      weights: one per adapter (default: equal).
      combine_strategy: "linear", or one the adapters' method declares
        (registry.combine_strategy); LoRA's: "lora_linear_only_negate_b"
        (lora_A averaged with |weight|) and "lora_delta_w_svd" (the products
        lora_A·lora_B averaged, then split again by SVD at rank `svd_rank`;
        the new adapter's scaling alpha / svd_rank is taken into account,
        so that its product equals the averaged products where the rank
        allows).
      normalize_weights: divide the weights by their sum.
      overwrite_ok: replace an adapter of that name.
      set_active: make the new adapter the active one.
      svd_rank: the rank of "lora_delta_w_svd".

    Raises:
      UserError: for unknown adapters, configs that differ, a strategy that
        does not fit the method, or bad weights.
    """
    if isinstance(adapter_list, dict):
      if weights is not None:
        raise UserError("average_adapter: give the weights in adapter_list "
                        "or in weights, not both")
      names, weights = list(adapter_list), list(adapter_list.values())
    else:
      names = [adapter_list] if isinstance(adapter_list, str) else list(
          adapter_list)
    if not names:
      raise UserError("average_adapter needs at least one adapter")
    for name in names:
      self._check_adapter(name)
    weights = composition.Average(
        *names, weights=weights, normalize_weights=normalize_weights).weights
    config = self.adapter_configs[names[0]]

    def essential(c):  # AdapterHub ignores dropout and init when comparing.
      return {k: v for k, v in c.to_dict().items()
              if "dropout" not in k and not k.startswith("init")}

    for name in names[1:]:
      if essential(self.adapter_configs[name]) != essential(config):
        raise UserError("average_adapter: adapters %r and %r have different "
                        "configs; only adapters of one config average"
                        % (names[0], name))
    strategy = registry.combine_strategy(config, combine_strategy)
    if strategy is None and svd_rank is not None:
      raise UserError("svd_rank is not used by combine_strategy 'linear'")
    sources = [
        {key: variable.numpy().astype(np.float64) for key, (variable, tag)
         in self.adapter_view(n).checkpoint_variables().items()
         if tag.kind not in ("base", "head") and tag.owner == n}
        for n in names]
    linear = {key: sum(w * src[key] for w, src in zip(weights, sources))
              for key in sources[0]}
    values = dict(linear)
    if strategy is not None:
      config, special = strategy(config, weights, sources, linear, svd_rank)
      values.update(special)
    if adapter_name in self.adapter_configs:
      if not overwrite_ok or adapter_name in names:
        raise UserError("an adapter named %r exists already; choose another "
                        "name (or overwrite_ok=True)" % adapter_name)
      self.delete_adapter(adapter_name)
    self.add_adapter(adapter_name, config)
    try:
      for key, (variable, tag) in self.adapter_view(
          adapter_name).checkpoint_variables().items():
        if tag.kind != "base" and tag.owner == adapter_name:
          variable.assign(values[key].astype(np.float32))
    except BaseException:
      self.delete_adapter(adapter_name)
      raise
    if set_active:
      self.set_active_adapters(adapter_name)

  def delete_adapter(self, name):
    """Removes adapter `name` (its layers and LayerNorm copies).

    Raises:
      UserError: for an unknown name.
    """
    self._check_adapter(name)
    for fusion, (names, _) in list(self.fusions.items()):
      if name in names:
        self.delete_adapter_fusion(fusion)
    self.reset_adapter(name)
    self.bert.delete_adapter(name)
    del self.adapter_configs[name]
    if self._active is not None and name in self._active.flatten():
      self._active = None

  def start_from_base(self, name):
    """Lets adapter `name`'s layers that read the projection they sit on
    (`start_from_base(dense)`, e.g. DoRA's magnitudes) take its current
    weights: when the adapter is added, and again when the base is loaded.
    """
    for layer, dense in self._mergeable_layers(name):
      start = getattr(layer, "start_from_base", None)
      if start is not None:
        start(dense)

  def _mergeable_layers(self, name):
    """[(layer, base Dense)] of adapter `name` on the projections."""
    pairs = []
    for block in self.bert.blocks:
      for hook, dense in block.projections().values():
        layer = hook.layers_by_adapter.get(name)
        if layer is not None:
          pairs.append((layer, dense))
    return pairs

  def can_merge(self, name):
    """Whether adapter `name` folds into the base weights: it has layers
    only on projections, and each owns its merge (`merge_into` and
    `reset_from`, as LoRA's and (IA)^3's layers do).

    Raises:
      UserError: for an unknown adapter.
    """
    self._check_adapter(name)
    pairs = self._mergeable_layers(name)
    return (bool(pairs)
            and self.hook_points(name) <= set(registry.PROJECTION_HOOKS)
            and all(hasattr(layer, "merge_into") and hasattr(
                layer, "reset_from") for layer, _ in pairs))

  @property
  def merged_adapters(self):
    """Names of the adapters folded into the base weights."""
    return [n for n in self.adapter_configs
            if any(l.merged for l, _ in self._mergeable_layers(n))]

  def merge_adapter(self, name):
    """Folds LoRA or (IA)^3 adapter `name` into the frozen projections.

    Afterwards the model computes what it computed with `name` active, at
    the cost of the plain model, whatever the active setup: the base
    weights themselves changed (one merged adapter at a time, as in
    AdapterHub). `reset_adapter(name)` undoes it.

    Raises:
      UserError: for an unknown adapter, a method that cannot be merged, or
        another adapter merged already.
    """
    if not self.can_merge(name):
      raise UserError("adapter %r (%s) cannot be merged: only adapters whose "
                      "layers all fold into the projections they sit on (their "
                      "method owns merge_into and reset_from) merge into the "
                      "base weights"
                      % (name, self.adapter_configs[name].kind))
    pairs = self._mergeable_layers(name)
    others = [n for n in self.merged_adapters if n != name]
    if others:
      raise UserError("adapter %r is merged already; reset_adapter(%r) "
                      "before merging %r" % (others[0], others[0], name))
    for layer, dense in pairs:
      layer.merge_into(dense)
    self._forget_traced_steps()

  def reset_adapter(self, name=None):
    """Takes merged adapter `name` (None: whichever is merged) out of the
    base weights again.

    Raises:
      UserError: for an unknown adapter.
    """
    names = [name] if name is not None else self.merged_adapters
    for n in names:
      self._check_adapter(n)
      for layer, dense in self._mergeable_layers(n):
        layer.reset_from(dense)
    self._forget_traced_steps()

  def _sharing_layers(self, adapter_names):
    """Each adapter's projection layers, checked for sharing: known, of
    one method whose layers share (`share_from`), at the same places."""
    if isinstance(adapter_names, composition.AdapterCompositionBlock):
      adapter_names = adapter_names.flatten()
    elif isinstance(adapter_names, str):
      adapter_names = adapter_names.split(",")
    names = list(adapter_names)
    if not names:
      raise UserError("share_parameters needs at least one adapter name")
    layers = {}
    for name in names:
      self._check_adapter(name)
      pairs = self._mergeable_layers(name)
      if not pairs or not all(hasattr(l, "share_from") for l, _ in pairs):
        raise UserError("adapter %r (%s) cannot share parameters: only "
                        "multi-task methods' layers do (AdapterHub's "
                        "MultiTaskConfig)" % (name,
                                              self.adapter_configs[name].kind))
      layers[name] = [l for l, _ in pairs]
    kinds = {self.adapter_configs[n].kind for n in names}
    if len(kinds) > 1 or len({len(l) for l in layers.values()}) > 1 or any(
        self.hook_points(n) != self.hook_points(names[0]) for n in names):
      raise UserError("adapters %s cannot share parameters: they are not of "
                      "one method on the same projections"
                      % ", ".join(map(repr, names)))
    return names, layers

  def share_parameters(self, adapter_names, name=None,
                       reference_adapter_name=None):
    """Ties the sharable variables of several adapters (AdapterHub's
    `share_parameters`; MTL-LoRA: the tasks' A and B) to the reference's.

    Args:
      adapter_names: a MultiTask block, a list of names or "a,b".
      name: AdapterHub's name of the shared set (accepted; unused here).
      reference_adapter_name: whose values they all take (default: the
        first adapter's).

    Raises:
      UserError: for an unknown adapter, a method whose layers do not
        share, adapters of other methods or places, or a reference not
        among them.
    """
    del name
    names, layers = self._sharing_layers(adapter_names)
    reference = reference_adapter_name or names[0]
    if reference not in layers:
      raise UserError("reference adapter %r is not among %s"
                      % (reference, ", ".join(map(repr, names))))
    for n in names:
      for layer, source in zip(layers[n], layers[reference]):
        layer.share_from(source)
    self._forget_traced_steps()

  def unshare_parameters(self, adapter_names, name=None):
    """Gives each adapter its own copy of what it shared (starting from the
    shared values; AdapterHub's `unshare_parameters`).

    Raises:
      UserError: as share_parameters.
    """
    del name
    _, layers = self._sharing_layers(adapter_names)
    for adapter_layers in layers.values():
      for layer in adapter_layers:
        layer.unshare()
    self._forget_traced_steps()

  def hook_points(self, name):
    """The hook points where adapter `name` has layers (a set)."""
    self._check_adapter(name)
    hooks = [getattr(self.bert.embeddings, p) for p in registry.MODEL_HOOKS]
    hooks.append(self.bert.encoder_output)
    for block in self.bert.blocks:
      hooks += list(block.attention.hooks.values())
      hooks += [getattr(block, p) for p in registry.BLOCK_HOOKS
                if p not in block.attention.hooks]
    return {h.point for h in hooks if name in h.layers_by_adapter}

  def _check_adapter(self, name):
    if name not in self.adapter_configs:
      raise UserError("unknown adapter %r; this model has %s"
                      % (name, ", ".join(sorted(self.adapter_configs))
                         or "no adapters"))

  def set_active_adapters(self, adapter_setup, skip_layers=None):
    """Chooses what forward passes run.

    Args:
      adapter_setup: an adapter name, a list of names (a Stack), a
        composition block (`adapters.composition`), or None (the base alone).
      skip_layers: encoder layer indices (0 = the lowest) that run without
        adapters, as the base model's (AdapterDrop, at inference); with
        layer 0, the embeddings too. Parallel branches share the layers
        below their first adapted one.

    Raises:
      UserError: for an unknown name, a composition that cannot run or a
        layer out of range.
    """
    block = composition.parse(adapter_setup)
    if block is not None:
      for name in block.flatten():
        self._check_adapter(name)
      for name in fusions_of(block):
        if name not in self.fusions:
          raise UserError("no fusion %r: add it with add_adapter_fusion(%r)"
                          % (name, name))
    skip = self._check_skip_layers(skip_layers)
    previous = self._active, self._skip_layers
    self._active, self._skip_layers = block, skip
    try:
      self.active_setup()  # Checks the composition and its heads.
    except UserError:
      self._active, self._skip_layers = previous
      raise
    self._forget_traced_steps()

  def _check_skip_layers(self, skip_layers):
    if skip_layers is None:
      return frozenset()
    layers = self.config.num_hidden_layers
    try:
      values = list(skip_layers)
    except TypeError:
      values = [skip_layers]
    bad = [v for v in values if isinstance(v, bool) or not isinstance(
        v, int) or not 0 <= v < layers]
    if bad:
      raise UserError("skip_layers %r: layer %r is not one of 0..%d (this "
                      "model has %d layers)"
                      % (skip_layers, bad[0], layers - 1, layers))
    return frozenset(values)

  @property
  def skip_layers(self):
    """The active setup's skipped layers (AdapterDrop), sorted."""
    return sorted(self._skip_layers)

  def _forget_traced_steps(self):
    """Keras retraces fit/evaluate/predict on their next call: what they
    traced read the active setup and merged adapters as they were."""
    self.train_function = self.test_function = self.predict_function = None

  @property
  def active_adapters(self):
    """The active composition block (a Stack for one name), or None."""
    return self._active

  def active_setup(self):
    """The resolved ActiveSetup of the active adapters and head."""
    return self.resolve_setup(self._active)

  def resolve_setup(self, adapter_setup):
    """The ActiveSetup of any adapter setup (a name, list or block), for a
    call with `setup=` that leaves the active adapters as they are."""
    block = composition.parse(adapter_setup)
    if block is not None:
      for name in block.flatten():
        self._check_adapter(name)
    return composition.resolve(
        block, lambda n: registry.owns_layer_norms(self.adapter_configs[n]),
        self._head_for, self._skip_layers)

  def _head_for(self, path, several):
    if several:
      name = path[-1]
      if name not in self.heads:
        raise UserError("Parallel, BatchSplit and MultiTask run each "
                        "element with the head of its (last) adapter's "
                        "name; adapter %r has no head (add_classification_"
                        "head(%r, ...))" % (name, name))
      return name
    if self._active_head is not None:
      return self._active_head
    for name in reversed(path):
      if name in self.heads:
        return name
    return next(iter(self.heads)) if len(self.heads) == 1 else None

  def view(self, branch=None):
    """The ModelView of a branch (default: the active one)."""
    if branch is None:
      setup = self.active_setup()
      if setup.several:
        raise UserError("several adapters run side by side (%r); name the "
                        "one adapter meant" % (self._active,))
      branch = setup.branches[0]
    return ModelView(self, branch)

  def adapter_view(self, name, head=None):
    """The ModelView of adapter `name` alone with `head` (default: its own)."""
    self._check_adapter(name)
    owns = registry.owns_layer_norms(self.adapter_configs[name])
    if head is None and name in self.heads:
      head = name
    return ModelView(self, composition.Branch((name,), name if owns else None,
                                              head))

  # --------------------------------------------------------------- training

  def set_train_mode(self, train_mode):
    """Freezes all but what `train_mode` trains in the active view.

    Returns:
      [(checkpoint name, variable)] trained, in the view's order.
    """
    view = self.view()
    names = set(view.trainable_names(train_mode))
    for variable in self.weights:
      variable.trainable = False
    trainable = []
    for name, variable in view.checkpoint_name_map().items():
      variable.trainable = name in names
      if variable.trainable:
        trainable.append((name, variable))
    return trainable

  def train_adapter(self, adapter_setup):
    """Activates a setup and freezes all but its adapters and heads.

    Args:
      adapter_setup: an adapter name, or (as AdapterHub's) a list of names
        or a composition block, whose every adapter trains (Parallel,
        BatchSplit, MultiTask: several tasks at once).

    The adapters' own LayerNorm copies train with them (for methods that
    train LayerNorms); the base, its LayerNorms and every other adapter and
    head stay frozen, so no other adapter's predictions change.

    Returns:
      [(checkpoint name, variable)] trained: for one adapter in its view's
      order, for a block each adapter's then each head's.
    """
    if isinstance(adapter_setup, str):
      self._check_adapter(adapter_setup)
    self.set_active_adapters(adapter_setup)
    setup = self.active_setup()
    names = setup.adapter_names
    for variable in self.weights:
      variable.trainable = False
    if not setup.several and len(names) == 1:
      trainable = []
      for key, (variable, tag) in self.view().checkpoint_variables().items():
        variable.trainable = tag.kind == "head" or (
            tag.kind != "base" and tag.owner == names[0] and not tag.frozen)
        if variable.trainable:
          trainable.append((key, variable))
      return trainable
    trainable, seen = [], set()
    for name in names:
      for key, (variable, tag) in self.adapter_view(
          name).checkpoint_variables().items():
        if tag.kind not in ("base", "head") and tag.owner == name and (
            not tag.frozen and id(variable) not in seen):
          trainable.append((key, variable))
          seen.add(id(variable))
    for branch in setup.branches:
      head = self.heads.get(branch.head)
      if head is not None and id(head.output_weights) not in seen:
        for key, variable, _ in head.checkpoint_variables(None):
          trainable.append((key, variable))
          seen.add(id(variable))
    for _, variable in trainable:
      variable.trainable = True
    self._forget_traced_steps()
    return trainable
