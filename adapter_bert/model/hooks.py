"""Variable tags, LayerNorms, and the hook points where adapters run.

Each layer declares its variables' checkpoint names and a `Tag` (the base,
a LayerNorm copy, an adapter, a head); `AdapterHook` holds every adapter's
layer at one hook point and applies the active setup's.
"""

import contextlib
from typing import NamedTuple

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import keras
import tensorflow as tf

from adapter_bert import adapters as adapters_lib
from adapter_bert.adapters import composition
from adapter_bert.adapters import gating
from adapter_bert.adapters import registry
from adapter_bert.compute import kernels
from adapter_bert.errors import UserError
from adapter_bert.model.config import LAYER_NORM_EPSILON


class Tag(NamedTuple):
  """What a variable belongs to; trainability is chosen by tags.

  kind: "base" (the pre-trained weights), "layer_norm" (a LayerNorm: the
  base's when owner is None, else the copy an adapter trains), "adapter" or
  "head"; owner: the adapter's or head's name; frozen: see below.
  """
  kind: str
  owner: str = None
  # Never trained, in any train mode: a variable its layer declares frozen
  # (`frozen_variables()`, e.g. VeRA's shared random projections).
  frozen: bool = False

  @property
  def of_adapter_method(self):
    """Whether the variable belongs to an adapter method (its layers or a
    fusion over them), whatever the method calls it: those the optimizer
    decays at its adapter rate."""
    return self.kind in ("adapter", "fusion")


BASE = Tag("base")
BASE_LAYER_NORM = Tag("layer_norm")
NO_ADAPTERS = composition.ActiveSetup()


def frozen_names(layer):
  """The names (as its `checkpoint_variables` gives them) of the variables
  `layer` declares frozen: its `frozen_variables()`, if it has one."""
  declared = getattr(layer, "frozen_variables", None)
  return set(declared()) if declared is not None else set()


def weight_initializer(config):
  return keras.initializers.TruncatedNormal(stddev=config.initializer_range)


@contextlib.contextmanager
def unlocked(layer):
  """Lets a built Keras layer take new sublayers (an adapter added later)."""
  tracker = getattr(layer, "_tracker", None)
  locked = tracker is not None and tracker.locked
  if locked:
    tracker.unlock()
  try:
    yield
  finally:
    if locked:
      tracker.lock()


def scoped(scope, items):
  return [(scope + "/" + name, variable, tag) for name, variable, tag in items]


def dense_variables(scope, layer, tag=BASE):
  return [(scope + "/kernel", layer.kernel, tag),
          (scope + "/bias", layer.bias, tag)]


@keras.saving.register_keras_serializable(package="adapter_bert")
class LayerNorm(keras.layers.LayerNormalization):
  """keras.layers.LayerNormalization over the last axis, optionally of a sum.

  Same variables (`gamma`, `beta`) and numbers as the Keras layer; `call(x,
  residual)` normalizes x + residual in one fused kernel.
  """

  def call(self, inputs, residual=None, training=False, policy=None):
    outputs = kernels.policy_or_default(policy).layer_norm(
        inputs, residual, tf.convert_to_tensor(self.gamma),
        tf.convert_to_tensor(self.beta), self.epsilon, training)
    return tf.cast(outputs, self.compute_dtype)

  def checkpoint_variables(self, scope, tag):
    return [(scope + "/gamma", self.gamma, tag),
            (scope + "/beta", self.beta, tag)]


def new_layer_norm(name):
  # Statistics always in float32 (mixed precision keeps LayerNorm in float32).
  return LayerNorm(axis=-1, epsilon=LAYER_NORM_EPSILON, name=name,
                   dtype="float32")


def copy_layer_norm(base, name):
  """A new LayerNorm holding the values of `base`."""
  layer = new_layer_norm(name)
  layer.build(base.gamma.shape)
  layer.gamma.assign(base.gamma)
  layer.beta.assign(base.beta)
  return layer


def stacked_layer_norm(layers, x, residual, policy):
  """Each branch's LayerNorm(x + residual) on its slice (inference).

  Args:
    layers: one LayerNorm per branch, in stacking order.
    x: [n or 1, rows, H] (a leading 1 broadcasts over the branches).
    residual: None or [n, rows, H].
    policy: the KernelPolicy.

  Returns:
    float32 [n, rows, H].
  """
  gamma = tf.stack([tf.convert_to_tensor(l.gamma) for l in layers])[
      :, tf.newaxis, :]  # [n, 1, H]
  beta = tf.stack([tf.convert_to_tensor(l.beta) for l in layers])[
      :, tf.newaxis, :]
  forward = (kernels.layer_norm_inference_xla if policy.fused
             else kernels.layer_norm_inference)
  return forward(x, residual, gamma, beta, layers[0].epsilon)


class LayerNormCopies:
  """A layer's LayerNorm at one place: the base's and each adapter's copy."""

  def __init__(self, owner, attribute, copies_attribute):
    self.owner = owner
    self.attribute = attribute  # e.g. "attention_layer_norm"
    self.copies = copies_attribute  # e.g. "attention_layer_norms"

  def of(self, name):
    if name is None:
      return getattr(self.owner, self.attribute)
    return getattr(self.owner, self.copies)[name]


def apply_layer_norm(norms, x, residual, setup, training, policy, dtype,
                     done=()):
  """LayerNorm(x + residual) with each branch's LayerNorms.

  x and residual are [n * rows, H] (branch-major) when the setup runs n
  branches side by side. `done` (per branch; AdapterHook.
  returns_block_output) marks the branches whose x is already the block's
  output: they pass through.
  """
  if done and all(done):
    return tf.cast(x, dtype)
  if not setup.parallel:
    out = norms.of(setup.branches[0].layer_norms)(
        x, residual=residual, training=training, policy=policy)
    return tf.cast(out, dtype)
  n = len(setup.branches)
  hidden = tf.shape(x)[-1]
  layers = [norms.of(b.layer_norms) for b in setup.branches]
  parts = tf.reshape(x, [n, -1, hidden])
  out = stacked_layer_norm(
      layers, parts,
      None if residual is None else tf.reshape(residual, [n, -1, hidden]),
      policy)  # [n, rows, H]
  if any(done):
    out = tf.stack([tf.cast(parts[i], out.dtype) if done[i] else out[i]
                    for i in range(n)])
  return tf.cast(tf.reshape(out, [-1, hidden]), dtype)


# ---------------------------------------------------------------------------
# Hook points.
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="adapter_bert")
class AdapterHook(keras.layers.Layer):
  """A named hook point holding each adapter's layer placed there.

  Called with the active setup, it applies the layers of that setup's
  adapters (in Stack order) and is the identity where none has a layer. With
  several branches side by side, the tensors are [n * rows, ...]
  (branch-major) and each branch's layers see their slice.
  """

  def __init__(self, point, **kwargs):
    super().__init__(**kwargs)
    self.point = point
    self.layers_by_adapter = {}
    self.fusions = {}  # AdapterFusion layers here, by fusion name.
    self.built = True  # No variables of its own; its adapters are built.

  def add(self, name, layer):
    with unlocked(self):
      self.layers_by_adapter[name] = layer

  def remove(self, name):
    with unlocked(self):
      self.layers_by_adapter.pop(name, None)

  def add_fusion(self, name, layer):
    with unlocked(self):
      self.fusions[name] = layer

  def remove_fusion(self, name):
    with unlocked(self):
      self.fusions.pop(name, None)

  def is_active(self, setup):
    return any(self._branch_steps(b) for b in setup.branches)

  def checkpoint_variables(self, scope, adapter_names, serving=False,
                           fusions=()):
    """[(name, variable, tag)] of the named adapters' layers here, then the
    named fusions'; with `serving`, what the adapters keep as saved and
    served (a layer's `serving_variables()`, tensors, where it has them)."""
    items = []
    for name in fusions:
      layer = self.fusions.get(name)
      if layer is not None:
        items += [(scope + "/" + rel, variable, Tag("fusion", name))
                  for rel, variable in layer.checkpoint_variables()]
    for name in adapter_names:
      layer = self.layers_by_adapter.get(name)
      if layer is not None:
        listed = (layer.serving_variables() if serving and hasattr(
            layer, "serving_variables") else layer.checkpoint_variables())
        frozen = frozen_names(layer)
        items += [(scope + "/" + rel, variable,
                   Tag("adapter", name, frozen=rel in frozen))
                  for rel, variable in listed]
    return items

  def returns_block_output(self, setup):
    """Per branch of `setup`: whether what this hook returns is the block's
    output itself, no LN(. + r) after it. The last adapter that runs here
    decides (its layer's `returns_block_output`), as in AdapterHub, where
    the last adapter's original_ln_after does."""
    return tuple(bool(getattr(_last_layer(self._branch_steps(branch)),
                              "returns_block_output", False))
                 for branch in setup.branches)

  def branch_layers(self, branch):
    """The layers of a branch's adapters here, in order (at the
    FIRST_ADAPTER_HOOKS, the first adapter's only, as AdapterHub)."""
    names = branch.adapters
    if self.point in registry.FIRST_ADAPTER_HOOKS:
      names = names[:1]
    return [self.layers_by_adapter[n] for n in names
            if n in self.layers_by_adapter]

  def _branch_steps(self, branch):
    """What runs here for a branch, in order: layers, and an _Averaged for
    each Average step with a layer here; [] where nothing does."""
    if self.point in registry.FIRST_ADAPTER_HOOKS:
      return self.branch_layers(branch)
    steps = []
    for step in branch.step_list:
      if isinstance(step, composition.AverageStep):
        paths = [[self.layers_by_adapter[n] for n in path
                  if n in self.layers_by_adapter] for path in step.paths]
        if any(paths):
          steps.append(_Averaged(paths, step.weights))
      elif isinstance(step, composition.FuseStep):
        layers = [self.layers_by_adapter[n] for n in step.names
                  if n in self.layers_by_adapter]
        if layers:
          if step.fusion not in self.fusions:
            raise UserError("fusion %r has no layer at %s, where %s ha%s "
                            "adapters" % (step.fusion, self.point, ", ".join(
                                n for n in step.names
                                if n in self.layers_by_adapter),
                                          "s" if len(layers) == 1 else "ve"))
          steps.append(_Fused(layers, self.fusions[step.fusion]))
      elif step in self.layers_by_adapter:
        steps.append(self.layers_by_adapter[step])
    return steps

  def call(self, *args, setup=None, training=False, policy=None,
           residual=None, norms=None, tokens=None, x=None):
    """Applies the active adapters' layers here.

    Residual hook points also take the block's `residual` (the sub-layer's
    input, [rows, H]) and `norms` (its LayerNorms: the base's and each
    adapter's copy), which layers with `uses_block_residual` read. Layers
    with `uses_tokens` (gates) also get `tokens`, the batch's
    adapters.gating.TokenLayout, and at attention_keys_values `x`, the
    attention input [rows, H].
    """
    setup = setup or NO_ADAPTERS
    if not self.is_active(setup):
      # The identity: x; a projection's output; (k, v, mask_adder).
      if self.point in registry.RESIDUAL_HOOKS:
        return args[0]
      if self.point in registry.PROJECTION_HOOKS:
        return args[1]
      return args
    if self.point in registry.RESIDUAL_HOOKS:
      return self._residual(args[0], setup, training, policy, residual, norms,
                            tokens)
    if self.point in registry.PROJECTION_HOOKS:
      return self._projection(args[0], args[1], setup, training, policy,
                              tokens)
    # attention_keys_values: (k, v, mask_adder); prompts: (x, input_mask).
    if setup.parallel:
      raise UserError("adapters at %s cannot yet run side by side "
                      "(Parallel)" % self.point)
    steps = self._branch_steps(setup.branches[0])
    if any(isinstance(step, (_Averaged, _Fused)) for step in steps):
      raise UserError("Average and Fuse are not defined for adapters at %s "
                      "(prefix or prompt tuning; AdapterHub has neither): %s"
                      % (self.point, ", ".join(setup.branches[0].adapters)))
    for layer in steps:
      extra = (dict(tokens=tokens, x=x)
               if getattr(layer, "uses_tokens", False) else {})
      args = layer(*args, training=training, policy=policy, **extra)
    return args

  def _apply(self, layers, x, branch, residual, norms, training, policy,
             tokens=None):
    for layer in layers:
      if isinstance(layer, _Fused):
        x = self._fuse(layer, x, branch, residual, norms, training, policy,
                       tokens)
        continue
      if isinstance(layer, _Averaged):
        # Average: sum_i w_i * (path i's output from the same x).
        x = tf.add_n([
            tf.cast(weight, x.dtype) * self._apply(
                path, x, branch, residual, norms, training, policy, tokens)
            for path, weight in zip(layer.paths, layer.weights)])
        continue
      extra = ({"tokens": tokens} if getattr(layer, "uses_tokens", False)
               else {})
      if getattr(layer, "uses_block_residual", False):
        if residual is None or norms is None:
          raise ValueError("%s: adapter layer %s needs the block's residual "
                           "and LayerNorm" % (self.point, layer.name))
        x = layer(x, residual=residual, layer_norm=norms.of(
            branch.layer_norms), training=training, policy=policy, **extra)
      else:
        x = layer(x, training=training, policy=policy, **extra)
    return x

  def _fuse(self, fused, x, branch, residual, norms, training, policy,
            tokens):
    """AdapterFusion (adapters.fusion): the last adapter's pre-processing,
    each adapter's up-projection, the fusion's attention over them."""
    if residual is None or norms is None:
      raise ValueError("%s: a fusion needs the block's residual and "
                       "LayerNorm" % self.point)
    last = fused.layers[-1]
    h, adapter_residual = last.pre_forward(
        x, residual, norms.of(branch.layer_norms), training, policy)
    query = x if fused.fusion.config.query_before_ln else h
    ups = tf.stack([layer.bottleneck(h, training, tokens)
                    for layer in fused.layers], axis=1)  # [rows, n, H]
    return fused.fusion(query, ups, adapter_residual, training=training)

  def _residual(self, x, setup, training, policy, residual=None, norms=None,
                tokens=None):
    if not setup.parallel:
      branch = setup.branches[0]
      return self._apply(self._branch_steps(branch), x, branch, residual,
                         norms, training, policy, tokens)
    n = len(setup.branches)
    hidden = tf.shape(x)[-1]
    parts = tf.reshape(x, [n, -1, hidden])  # [n, rows, H]
    per_branch = [self._branch_steps(b) for b in setup.branches]
    if (not training and all(len(l) == 1 for l in per_branch)
        and all(hasattr(l[0], "call_batched") for l in per_branch)
        and len({l[0].batch_key() for l in per_branch}) == 1):
      out = type(per_branch[0][0]).call_batched([l[0] for l in per_branch],
                                                parts)
    else:
      residuals = ([None] * n if residual is None else
                   tf.unstack(tf.reshape(residual, [n, -1, hidden]), n))
      outs = []
      branch_tokens = _branch_tokens(tokens, n)
      for branch, layers, part, res in zip(setup.branches, per_branch,
                                           tf.unstack(parts, n), residuals):
        outs.append(self._apply(layers, part, branch, res, norms, training,
                                policy, branch_tokens))
      out = tf.stack(outs)
    return tf.reshape(out, [-1, hidden])

  def _projection(self, x, projected, setup, training, policy, tokens=None):
    if not setup.parallel:
      return self._project(self._branch_steps(setup.branches[0]), x,
                           projected, training, policy, tokens)
    n = len(setup.branches)
    xs = tf.split(x, n, axis=0)
    ps = tf.split(projected, n, axis=0)
    branch_tokens = _branch_tokens(tokens, n)
    return tf.concat([
        self._project(self._branch_steps(branch), xi, pi, training, policy,
                      branch_tokens)
        for branch, xi, pi in zip(setup.branches, xs, ps)], axis=0)

  def _project(self, layers, x, projected, training, policy, tokens):
    for layer in layers:
      if isinstance(layer, _Averaged):
        projected = tf.add_n([
            tf.cast(weight, projected.dtype) * self._project(
                path, x, projected, training, policy, tokens)
            for path, weight in zip(layer.paths, layer.weights)])
        continue
      extra = ({"tokens": tokens} if getattr(layer, "uses_tokens", False)
               else {})
      projected = layer(x, projected, training=training, policy=policy,
                        **extra)
    return projected

  def get_config(self):
    base = super().get_config()
    base["point"] = self.point
    return base


def _last_layer(steps):
  """The layer that runs last among a branch's steps (None if none)."""
  if not steps:
    return None
  step = steps[-1]
  if isinstance(step, _Fused):
    return step.layers[-1]
  if isinstance(step, _Averaged):
    return _last_layer(step.paths[-1])
  return step


class _Averaged(NamedTuple):
  """An Average step at one hook point: each path's layers, its weight."""
  paths: list
  weights: tuple


class _Fused(NamedTuple):
  """A Fuse step at one hook point: the fused adapters' layers here, the
  fusion layer."""
  layers: list
  fusion: keras.layers.Layer


def _branch_tokens(tokens, n):
  """The TokenLayout of one of n branches side by side (branch-major)."""
  if tokens is None or n == 1:
    return tokens
  batch = tokens.batch // n
  return gating.TokenLayout(batch, tokens.seq, tokens.mask[:batch])


def add_hooks(layer, points):
  """Gives `layer` one AdapterHook attribute per point (named as the point)."""
  for point in points:
    setattr(layer, point, AdapterHook(point, name=point))


# ---------------------------------------------------------------------------
# Layers.
# ---------------------------------------------------------------------------


def first_positions(x, batch, seq, k):
  """The rows of the first k positions of each example.

  Args:
    x: [batch * seq, H] token rows, example-major.
    batch, seq: scalar int32 tensors; k: python int, k <= seq.

  Returns:
    [batch * k, H].
  """
  hidden = tf.shape(x)[-1]
  rows = tf.reshape(x, [batch, seq, hidden])[:, :k, :]  # [batch, k, H]
  return tf.reshape(rows, [batch * k, hidden])


def adapter_items(adapters):
  """[(name, config)] from None, a dict or a list of pairs."""
  if not adapters:
    return []
  items = adapters.items() if isinstance(adapters, dict) else adapters
  return [(name, as_adapter_config(config)) for name, config in items]


def as_adapter_config(config):
  if config is None:
    return adapters_lib.AdapterConfig()
  if isinstance(config, dict):
    return adapters_lib.config_from_dict(config)
  if isinstance(config, str):
    return adapters_lib.get_preset(config)
  return config



def check_name(name, what):
  if not isinstance(name, str) or not name or "/" in name:
    raise UserError("%s name must be a non-empty string without '/', got %r"
                    % (what, name))


def strip_scope(items, prefix):
  return [(n[len(prefix):] if n.startswith(prefix) else n, v, t)
          for n, v, t in items]
