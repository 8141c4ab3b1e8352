"""BERT with named adapters and heads, as Keras 3 layers.

The numbers are those of google-research/bert `modeling.py` with the adapter
insertions of google-research/adapter-bert: tanh-approximated GELU, additive
-10000 attention mask, LayerNorm epsilon 1e-12, the encoder working on
[batch * seq, hidden] matrices, and a classifier head with `output_weights`
[num_labels, hidden] so logits = pooled · Wᵀ + b.

`BertAdapterModel` holds one frozen base and any number of named adapters and
heads, in AdapterHub's manner (`add_adapter`, `set_active_adapters`,
`train_adapter`, `add_classification_head`, `save_adapter`, `load_adapter`)
and is a Keras model (`compile`, `fit`, `evaluate`, `predict`).

Adapters sit at named hook points (`adapters.registry`); each hook point
dispatches to the active setup (`adapters.composition.ActiveSetup`), handed
down every call with the kernel policy (`compute.kernels.KernelPolicy`).

Each layer declares the checkpoint names of its variables (the interface
with Google's checkpoints, e.g.
`bert/encoder/layer_0/attention/output/adapters/weights1`) and a tag saying
what each variable belongs to (the base, a LayerNorm copy, an adapter, a
head); `ModelView.checkpoint_variables` composes them for one adapter and
head, as the reference toolkit's model had them.
"""

import collections
import contextlib
import copy
import dataclasses
import json
import math
import os
from typing import NamedTuple

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from adapter_bert.compute.activations import ACTIVATIONS
from adapter_bert.compute.activations import get_activation
from adapter_bert import adapters as adapters_lib
from adapter_bert.adapters import composition
from adapter_bert.adapters import gating
from adapter_bert.adapters import registry
from adapter_bert.compute import kernels
from adapter_bert.errors import UserError
from adapter_bert.storage import huggingface
from adapter_bert.text import preprocessor as preprocessor_lib
from adapter_bert.text import tokenization
from adapter_bert.storage import checkpoint_io
from adapter_bert.adapters import fusion as fusion_lib
from adapter_bert.model import adapter_io
from adapter_bert.storage import adapterhub
from adapter_bert.compute import optimization
from adapter_bert.model import adapter_drop

LAYER_NORM_EPSILON = 1e-12
MASK_ADDER = -10000.0
# Dropout on the pooled output before the classifier, as the original
# run_classifier.py (keep_prob 0.9) whatever the config says.
CLASSIFIER_DROPOUT = 0.1


class BertConfig:
  """The fields of Google's `bert_config.json`.

  Attributes:
    vocab_size: size of the WordPiece vocabulary.
    hidden_size: width H of every layer.
    num_hidden_layers: number of transformer blocks L.
    num_attention_heads: heads per attention layer; must divide H.
    intermediate_size: width of the feed-forward layer.
    hidden_act: activation of the feed-forward layer ("gelu" = tanh form).
    hidden_dropout_prob: dropout on embeddings and block outputs.
    attention_probs_dropout_prob: dropout on attention probabilities.
    max_position_embeddings: longest sequence the model can take.
    type_vocab_size: number of segment ids.
    initializer_range: stddev of the truncated-normal weight init.
    extra: keys of the JSON file this class does not know, kept verbatim.
  """

  FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers",
            "num_attention_heads", "intermediate_size", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob",
            "max_position_embeddings", "type_vocab_size", "initializer_range")

  def __init__(self, vocab_size, hidden_size=768, num_hidden_layers=12,
               num_attention_heads=12, intermediate_size=3072,
               hidden_act="gelu", hidden_dropout_prob=0.1,
               attention_probs_dropout_prob=0.1, max_position_embeddings=512,
               type_vocab_size=16, initializer_range=0.02, extra=None,
               source="BertConfig"):
    self.vocab_size = vocab_size
    self.hidden_size = hidden_size
    self.num_hidden_layers = num_hidden_layers
    self.num_attention_heads = num_attention_heads
    self.intermediate_size = intermediate_size
    self.hidden_act = hidden_act
    self.hidden_dropout_prob = hidden_dropout_prob
    self.attention_probs_dropout_prob = attention_probs_dropout_prob
    self.max_position_embeddings = max_position_embeddings
    self.type_vocab_size = type_vocab_size
    self.initializer_range = initializer_range
    self.extra = dict(extra or {})
    self.validate(source)

  def validate(self, source="BertConfig"):
    """Checks the values; raises UserError naming `source` and the field."""
    def fail(msg):
      raise UserError("%s: %s" % (source, msg))

    for name in ("vocab_size", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        fail("%s must be a positive integer, got %r" % (name, value))
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, (int, float))
          or not 0.0 <= value < 1.0):
        fail("%s must be in [0, 1), got %r" % (name, value))
    if (isinstance(self.initializer_range, bool)
        or not isinstance(self.initializer_range, (int, float))
        or not self.initializer_range > 0):
      fail("initializer_range must be > 0, got %r" % (self.initializer_range,))
    if self.hidden_size % self.num_attention_heads:
      fail("hidden_size %d is not a multiple of num_attention_heads %d"
           % (self.hidden_size, self.num_attention_heads))
    if str(self.hidden_act).lower() not in ACTIVATIONS:
      fail("unknown hidden_act %r; expected one of %s"
           % (self.hidden_act, ", ".join(sorted(ACTIVATIONS))))

  @classmethod
  def from_dict(cls, json_object, source="BertConfig"):
    """Builds a config from a dict with every key of Google's format.

    Raises:
      UserError: on a missing key or a bad value. Unknown keys are kept in
        `extra` with a warning.
    """
    if not isinstance(json_object, dict):
      raise UserError("%s: expected a JSON object, got %s"
                      % (source, type(json_object).__name__))
    missing = [k for k in cls.FIELDS if k not in json_object]
    if missing:
      raise UserError("%s: missing key(s) %s" % (source, ", ".join(missing)))
    extra = {k: v for k, v in json_object.items() if k not in cls.FIELDS}
    if extra:
      logging.warning("%s: unknown key(s) kept as-is: %s", source,
                      ", ".join(sorted(extra)))
    kwargs = {k: json_object[k] for k in cls.FIELDS}
    return cls(extra=extra, source=source, **kwargs)

  @classmethod
  def from_json_file(cls, json_file):
    """Reads a `bert_config.json`.

    Raises:
      UserError: if the file is missing, unreadable, not JSON, or invalid.
    """
    try:
      with tf.io.gfile.GFile(json_file, "rb") as reader:  # Also gs://...
        data = reader.read()
    except (OSError, tf.errors.OpError) as e:
      reason = getattr(e, "strerror", None) or getattr(e, "message", None) or e
      raise UserError("cannot read BERT config %s: %s"
                      % (json_file, reason)) from None
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise UserError("BERT config %s is not UTF-8 text (%s at byte %d)"
                      % (json_file, e.reason, e.start)) from None
    try:
      json_object = json.loads(text)
    except ValueError as e:
      raise UserError("BERT config %s is not valid JSON: %s"
                      % (json_file, e)) from None
    if huggingface.is_hf_config(json_object):  # A Hugging Face config.json.
      json_object = huggingface.bert_config_dict(json_object, str(json_file))
    return cls.from_dict(json_object, source=str(json_file))

  def to_dict(self):
    output = {k: getattr(self, k) for k in self.FIELDS}
    output.update(copy.deepcopy(self.extra))
    return output

  def to_json_string(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

  def __eq__(self, other):
    return isinstance(other, BertConfig) and self.to_dict() == other.to_dict()

  def __repr__(self):
    return "BertConfig(%s)" % ", ".join(
        "%s=%r" % (k, getattr(self, k)) for k in self.FIELDS)


def _as_bert_config(config):
  """A BertConfig from a BertConfig or its dict (as in get_config)."""
  return config if isinstance(config, BertConfig) else BertConfig.from_dict(config)


class Tag(NamedTuple):
  """What a variable belongs to; trainability is chosen by tags.

  kind: "base" (the pre-trained weights), "layer_norm" (a LayerNorm: the
  base's when owner is None, else the copy an adapter trains), "adapter" or
  "head"; owner: the adapter's or head's name.
  """
  kind: str
  owner: str = None


BASE = Tag("base")
BASE_LAYER_NORM = Tag("layer_norm")
NO_ADAPTERS = composition.ActiveSetup()


def _initializer(config):
  return keras.initializers.TruncatedNormal(stddev=config.initializer_range)


@contextlib.contextmanager
def _unlocked(layer):
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


def _scoped(scope, items):
  return [(scope + "/" + name, variable, tag) for name, variable, tag in items]


def _dense_variables(scope, layer, tag=BASE):
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


def _layer_norm(name):
  # Statistics always in float32 (mixed precision keeps LayerNorm in float32).
  return LayerNorm(axis=-1, epsilon=LAYER_NORM_EPSILON, name=name,
                   dtype="float32")


def _copy_layer_norm(base, name):
  """A new LayerNorm holding the values of `base`."""
  layer = _layer_norm(name)
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


class _LayerNorms:
  """A layer's LayerNorm at one place: the base's and each adapter's copy."""

  def __init__(self, owner, attribute, copies_attribute):
    self.owner = owner
    self.attribute = attribute  # e.g. "attention_layer_norm"
    self.copies = copies_attribute  # e.g. "attention_layer_norms"

  def of(self, name):
    if name is None:
      return getattr(self.owner, self.attribute)
    return getattr(self.owner, self.copies)[name]


def _apply_layer_norm(norms, x, residual, setup, training, policy, dtype):
  """LayerNorm(x + residual) with each branch's LayerNorms.

  x and residual are [n * rows, H] (branch-major) when the setup runs n
  branches side by side.
  """
  if not setup.parallel:
    out = norms.of(setup.branches[0].layer_norms)(
        x, residual=residual, training=training, policy=policy)
    return tf.cast(out, dtype)
  n = len(setup.branches)
  hidden = tf.shape(x)[-1]
  layers = [norms.of(b.layer_norms) for b in setup.branches]
  out = stacked_layer_norm(
      layers, tf.reshape(x, [n, -1, hidden]),
      None if residual is None else tf.reshape(residual, [n, -1, hidden]),
      policy)
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
    with _unlocked(self):
      self.layers_by_adapter[name] = layer

  def remove(self, name):
    with _unlocked(self):
      self.layers_by_adapter.pop(name, None)

  def add_fusion(self, name, layer):
    with _unlocked(self):
      self.fusions[name] = layer

  def remove_fusion(self, name):
    with _unlocked(self):
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
        items += [(scope + "/" + rel, variable, Tag("adapter", name))
                  for rel, variable in listed]
    return items

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


def _add_hooks(layer, points):
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


def _adapter_items(adapters):
  """[(name, config)] from None, a dict or a list of pairs."""
  if not adapters:
    return []
  items = adapters.items() if isinstance(adapters, dict) else adapters
  return [(name, _as_adapter_config(config)) for name, config in items]


def _as_adapter_config(config):
  if config is None:
    return adapters_lib.AdapterConfig()
  if isinstance(config, dict):
    return adapters_lib.config_from_dict(config)
  if isinstance(config, str):
    return adapters_lib.get_preset(config)
  return config


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertEmbeddings(keras.layers.Layer):
  """Word + token-type + position embeddings, then LayerNorm and dropout.

  Hook point: `embedding_output` (after the dropout).
  """

  def __init__(self, config, adapters=None, shared=None, **kwargs):
    super().__init__(**kwargs)
    self.config = _as_bert_config(config)
    c = self.config
    init = _initializer(c)
    self.word_embeddings = self.add_weight(
        name="word_embeddings", shape=(c.vocab_size, c.hidden_size),
        initializer=init, autocast=False)
    self.token_type_embeddings = self.add_weight(
        name="token_type_embeddings", shape=(c.type_vocab_size, c.hidden_size),
        initializer=init, autocast=False)
    self.position_embeddings = self.add_weight(
        name="position_embeddings",
        shape=(c.max_position_embeddings, c.hidden_size), initializer=init,
        autocast=False)
    self.layer_norm = _layer_norm("LayerNorm")
    self.layer_norm.build((None, None, c.hidden_size))
    self.layer_norms = {}  # Each adapter's copy, by adapter name.
    self._norms = _LayerNorms(self, "layer_norm", "layer_norms")
    _add_hooks(self, registry.MODEL_HOOKS)
    self.adapter_configs = {}
    for name, adapter_config in _adapter_items(adapters):
      self.add_adapter(name, adapter_config, (shared or {}).get(name))

  def add_adapter(self, name, adapter_config, shared=None):
    """Adds adapter `name`'s layers (and LayerNorm copy, if it trains one);
    `shared` is its model-level layer, if its method has one."""
    with _unlocked(self):
      self.adapter_configs[name] = adapter_config
      if registry.owns_layer_norms(adapter_config):
        self.layer_norms[name] = _copy_layer_norm(self.layer_norm, "LayerNorm")
      for point, layer in registry.layers_for(
          adapter_config, self.config, "embeddings", shared).items():
        getattr(self, point).add(name, layer)

  def delete_adapter(self, name):
    with _unlocked(self):
      self.adapter_configs.pop(name, None)
      self.layer_norms.pop(name, None)
      for point in registry.MODEL_HOOKS:
        getattr(self, point).remove(name)

  def checkpoint_variables(self, branch, serving=False):
    """[(name under `embeddings/`, variable, tag)] of one branch."""
    owner = branch.layer_norms
    items = [("word_embeddings", self.word_embeddings, BASE),
             ("token_type_embeddings", self.token_type_embeddings, BASE),
             ("position_embeddings", self.position_embeddings, BASE)]
    items += self._norms.of(owner).checkpoint_variables(
        "LayerNorm", Tag("layer_norm", owner))
    for point in registry.MODEL_HOOKS:
      items += _strip_scope(getattr(self, point).checkpoint_variables(
          registry.HOOK_SCOPES[point], branch.adapters, serving),
                            "embeddings/")
    return items

  def call(self, input_ids, segment_ids, setup=None, training=False,
           seed=None, policy=None):
    """[batch, seq] ids -> [n * batch, seq, H] (n branches side by side)."""
    setup = setup or NO_ADAPTERS
    policy = kernels.policy_or_default(policy)
    seq_length = tf.shape(input_ids)[1]
    output = tf.gather(self.word_embeddings, input_ids)  # [batch, seq, H]
    output += tf.gather(self.token_type_embeddings, segment_ids)
    # The original's last addition, done by the LayerNorm kernel (as the
    # layers' residual sums are), so that one compiled LayerNorm serves all.
    positions = tf.broadcast_to(
        self.position_embeddings[tf.newaxis, :seq_length, :],
        tf.shape(output))  # [batch, seq, H]
    if setup.parallel:
      # The lookups once; each branch's LayerNorm on the same sum.
      shape = tf.shape(output)
      summed = tf.reshape(output + positions, [1, -1, shape[-1]])
      output = stacked_layer_norm(
          [self._norms.of(b.layer_norms) for b in setup.branches], summed,
          None, policy)  # [n, batch * seq, H]
      output = tf.reshape(output, [-1, shape[1], shape[2]])
    else:
      output = self._norms.of(setup.branches[0].layer_norms)(
          output, residual=positions, training=training, policy=policy)
    output = policy.dropout(output, self.config.hidden_dropout_prob, training,
                            seed)
    output = tf.cast(output, self.compute_dtype)
    if self.embedding_output.is_active(setup):
      shape = tf.shape(output)
      output = tf.reshape(self.embedding_output(
          tf.reshape(output, [-1, shape[-1]]), setup=setup,
          training=training, policy=policy), shape)
    return output

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    base["adapters"] = [[n, c.to_dict()] for n, c in self.adapter_configs.items()]
    return base


def _strip_scope(items, prefix):
  return [(n[len(prefix):] if n.startswith(prefix) else n, v, t)
          for n, v, t in items]


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertSelfAttention(keras.layers.Layer):
  """Multi-head self-attention with [H, H] query/key/value kernels.

  Works on [batch * seq, H] matrices as the original; returns the context
  before the output projection. Hook points: `query`, `key`, `value` (each
  projection) and `attention_keys_values` (the per-head keys and values).
  """

  def __init__(self, config, **kwargs):
    super().__init__(**kwargs)
    self.config = _as_bert_config(config)
    c = self.config
    self.num_heads = c.num_attention_heads
    self.head_size = c.hidden_size // c.num_attention_heads
    init = _initializer(c)
    self.query = keras.layers.Dense(c.hidden_size, kernel_initializer=init,
                                    name="query")
    self.key = keras.layers.Dense(c.hidden_size, kernel_initializer=init,
                                  name="key")
    self.value = keras.layers.Dense(c.hidden_size, kernel_initializer=init,
                                    name="value")
    for layer in (self.query, self.key, self.value):
      layer.build((None, c.hidden_size))
    self.hooks = {point: AdapterHook(point, name=point + "_hook")
                  for point in ("query", "key", "value",
                                "attention_keys_values")}

  def checkpoint_variables(self, branch, serving=False):
    """[(name under `attention/self/`, variable, tag)] of one branch."""
    items = []
    for part in ("query", "key", "value"):
      items += _dense_variables(part, getattr(self, part))
      items += _strip_scope(self.hooks[part].checkpoint_variables(
          registry.HOOK_SCOPES[part], branch.adapters, serving),
                            "attention/self/")
    items += _strip_scope(self.hooks["attention_keys_values"]
                          .checkpoint_variables(
                              registry.HOOK_SCOPES["attention_keys_values"],
                              branch.adapters, serving), "attention/self/")
    return items

  def _split_heads(self, x, batch, seq, parts):
    """[batch * seq, parts * H] -> `parts` tensors [batch, heads, seq, size]."""
    x = tf.reshape(x, [batch, seq, parts, self.num_heads, self.head_size])
    x = tf.transpose(x, [2, 0, 3, 1, 4])  # [parts, batch, heads, seq, size]
    # unstack, not x[i]: the gradient of a slice is a zero-filled copy of
    # the whole tensor per slice, that of unstack one stack.
    return tf.unstack(x, num=parts, axis=0)

  def _project_heads(self, x, batch, seq, output_range, policy):
    """The query, key and value projections as one matrix product.

    Args:
      x: [batch * seq, H].
      output_range: None, or k: queries of the first k positions only.

    Returns:
      q: [batch, heads, seq or k, head_size]; k, v: [batch, heads, seq,
      head_size].
    """
    # One [H, 3H] product instead of three [H, H] ones: a wider matrix runs
    # closer to the machine's peak, and the backward pass gets one product
    # too. The kernels stay three variables (the checkpoint layout).
    layers = (self.query, self.key, self.value)
    kernels_ = [tf.convert_to_tensor(l.kernel) for l in layers]
    biases = [tf.convert_to_tensor(l.bias) for l in layers]
    if output_range is None:
      qkv = policy.projection(x, kernels_, biases)  # [rows, 3H]
      return self._split_heads(qkv, batch, seq, 3)
    k, v = self._split_heads(
        policy.projection(x, kernels_[1:], biases[1:]), batch, seq, 2)
    q = policy.projection(first_positions(x, batch, seq, output_range),
                          kernels_[:1], biases[:1])
    q, = self._split_heads(q, batch, output_range, 1)
    return q, k, v

  def _project_heads_hooked(self, x, batch, seq, output_range, setup,
                            training, policy, tokens=None):
    """As _project_heads, each projection passed through its hook point."""
    hidden = self.config.hidden_size
    qkv = tf.split(policy.projection(
        x, [tf.convert_to_tensor(l.kernel) for l in (self.query, self.key,
                                                      self.value)],
        [tf.convert_to_tensor(l.bias) for l in (self.query, self.key,
                                                self.value)]), 3, axis=1)
    q, k, v = [self.hooks[p](x, t, setup=setup, training=training,
                             policy=policy, tokens=tokens)
               for p, t in zip(("query", "key", "value"), qkv)]
    rows = seq
    if output_range is not None:
      q = first_positions(q, batch, seq, output_range)
      rows = output_range
    q, = self._split_heads(tf.reshape(q, [-1, hidden]), batch, rows, 1)
    k, v = self._split_heads(tf.concat([k, v], axis=1), batch, seq, 2)
    return q, k, v

  def call(self, x, mask_adder, batch, seq, setup=None, training=False,
           seed=None, output_range=None, policy=None, tokens=None):
    """Attention context before the output projection.

    Args:
      x: [batch * seq, H].
      mask_adder: [batch, 1, 1, seq] float32.
      batch, seq: scalar int32 tensors.
      setup: the ActiveSetup (None: no adapters).
      training: python bool.
      seed: optional stateless dropout seed.
      output_range: None (every position attends), or a python int k: only
        the first k positions of each example attend (their rows are the
        same numbers as in the whole computation, dropout masks included).
      policy: the KernelPolicy.
      tokens: the batch's adapters.gating.TokenLayout (for gated adapters).

    Returns:
      [batch * rows, H] with rows = seq, or k with output_range.
    """
    setup = setup or NO_ADAPTERS
    policy = kernels.policy_or_default(policy)
    rows = seq if output_range is None else output_range
    if any(self.hooks[p].is_active(setup) for p in ("query", "key", "value")):
      q, k, v = self._project_heads_hooked(x, batch, seq, output_range,
                                           setup, training, policy, tokens)
    else:
      q, k, v = self._project_heads(x, batch, seq, output_range, policy)
    if self.hooks["attention_keys_values"].is_active(setup):
      k, v, mask_adder = self.hooks["attention_keys_values"](
          k, v, mask_adder, setup=setup, training=training, policy=policy,
          tokens=tokens, x=x)
    # Scaled, masked softmax (float32, also under mixed precision), dropout,
    # times v.
    context = policy.attention_context(
        q, k, v, mask_adder, 1.0 / math.sqrt(self.head_size),
        self.config.attention_probs_dropout_prob, training,
        seed)  # [batch, heads, rows, head_size]
    context = tf.transpose(context, [0, 2, 1, 3])
    return tf.reshape(context, [batch * rows, self.config.hidden_size])

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    return base


@keras.saving.register_keras_serializable(package="adapter_bert")
class TransformerBlock(keras.layers.Layer):
  """One BERT layer with adapter hook points.

  attention -> output dense -> dropout -> [hook "attention_output"] ->
  LayerNorm(+input) -> intermediate dense (act) -> output dense -> dropout ->
  [hook "ffn_output"] -> LayerNorm(+attention output).

  The attention part is pluggable through `attention_cls` (any layer with
  BertSelfAttention's call signature). An adapter that trains LayerNorms
  holds its own copy of both.
  """

  def __init__(self, config, adapters=None, attention_cls=None, shared=None,
               index=0, **kwargs):
    """Args: config, the BertConfig; adapters, (name, config) pairs built
    now; attention_cls, the attention layer; shared, adapters' model-level
    layers by name; index, the layer's depth in the encoder (0: lowest),
    which per-layer adapter choices (leave_out, ...) read."""
    super().__init__(**kwargs)
    self.config = _as_bert_config(config)
    self.index = int(index)
    c = self.config
    h = c.hidden_size
    init = _initializer(c)
    self.attention = (attention_cls or BertSelfAttention)(c, name="attention")
    self.attention_output_dense = keras.layers.Dense(
        h, kernel_initializer=init, name="attention_output_dense")
    self.attention_layer_norm = _layer_norm("attention_output_LayerNorm")
    self.intermediate_dense = keras.layers.Dense(
        c.intermediate_size, kernel_initializer=init, name="intermediate_dense")
    self.output_dense = keras.layers.Dense(h, kernel_initializer=init,
                                           name="output_dense")
    self.output_layer_norm = _layer_norm("output_LayerNorm")
    self.intermediate_act = get_activation(c.hidden_act)
    # "gelu" (the tanh form) gets the fast kernels.
    self._fast_gelu = str(c.hidden_act).lower() == "gelu"
    _add_hooks(self, ("attention_output", "intermediate_projection",
                      "output_projection", "ffn_output"))
    # Each adapter's LayerNorm copies, by adapter name.
    self.attention_layer_norms = {}
    self.output_layer_norms = {}
    self._attention_norms = _LayerNorms(self, "attention_layer_norm",
                                        "attention_layer_norms")
    self._output_norms = _LayerNorms(self, "output_layer_norm",
                                     "output_layer_norms")
    self.adapter_configs = {}
    self.attention_layer_norm.build((None, h))
    self.output_layer_norm.build((None, h))
    # Adapters given here are built before the dense layers: the order in
    # which the random initial values are drawn is the toolkit's of before.
    for name, adapter_config in _adapter_items(adapters):
      self.add_adapter(name, adapter_config, (shared or {}).get(name))
    self.attention_output_dense.build((None, h))
    self.intermediate_dense.build((None, h))
    self.output_dense.build((None, c.intermediate_size))

  def add_adapter(self, name, adapter_config, shared=None):
    """Adds adapter `name`'s layers (and LayerNorm copies, if it trains
    them); `shared` is its model-level layer, if its method has one."""
    with _unlocked(self):
      self.adapter_configs[name] = adapter_config
      if registry.owns_layer_norms(adapter_config):
        self.attention_layer_norms[name] = _copy_layer_norm(
            self.attention_layer_norm, "attention_output_LayerNorm")
        self.output_layer_norms[name] = _copy_layer_norm(
            self.output_layer_norm, "output_LayerNorm")
      for point, layer in registry.layers_for(
          adapter_config, self.config, self.index, shared).items():
        hook = (self.attention.hooks[point] if point in self.attention.hooks
                else getattr(self, point))
        hook.add(name, layer)

  def projections(self):
    """{projection hook point: (its AdapterHook, the base Dense after which
    it sits)}: where LoRA-like layers are and what they merge into."""
    a = self.attention
    return {"query": (a.hooks["query"], a.query),
            "key": (a.hooks["key"], a.key),
            "value": (a.hooks["value"], a.value),
            "intermediate_projection": (self.intermediate_projection,
                                        self.intermediate_dense),
            "output_projection": (self.output_projection, self.output_dense)}

  def delete_adapter(self, name):
    with _unlocked(self):
      self.adapter_configs.pop(name, None)
      self.attention_layer_norms.pop(name, None)
      self.output_layer_norms.pop(name, None)
      for hook in (list(self.attention.hooks.values())
                   + [self.attention_output, self.intermediate_projection,
                      self.output_projection, self.ffn_output]):
        hook.remove(name)

  def checkpoint_variables(self, branch, serving=False):
    """[(name under `encoder/layer_<i>/`, variable, tag)] of one branch."""
    owner = branch.layer_norms
    ln_tag = Tag("layer_norm", owner)
    items = _scoped("attention/self",
                    self.attention.checkpoint_variables(branch, serving))
    items += _dense_variables("attention/output/dense",
                              self.attention_output_dense)
    fusions = composition.fusion_names(branch)
    items += self.attention_output.checkpoint_variables(
        registry.HOOK_SCOPES["attention_output"], branch.adapters, serving,
        fusions)
    items += self._attention_norms.of(owner).checkpoint_variables(
        "attention/output/LayerNorm", ln_tag)
    items += _dense_variables("intermediate/dense", self.intermediate_dense)
    items += self.intermediate_projection.checkpoint_variables(
        registry.HOOK_SCOPES["intermediate_projection"], branch.adapters, serving)
    items += _dense_variables("output/dense", self.output_dense)
    items += self.output_projection.checkpoint_variables(
        registry.HOOK_SCOPES["output_projection"], branch.adapters, serving)
    items += self.ffn_output.checkpoint_variables(
        registry.HOOK_SCOPES["ffn_output"], branch.adapters, serving, fusions)
    items += self._output_norms.of(owner).checkpoint_variables(
        "output/LayerNorm", ln_tag)
    return items

  def intermediate(self, x, setup=None, training=False, policy=None,
                   tokens=None):
    """The intermediate dense layer and its activation: [rows, H] -> [rows, I]."""
    intermediate = _dense(self.intermediate_dense, x)
    intermediate = self.intermediate_projection(
        x, intermediate, setup=setup, training=training, policy=policy,
        tokens=tokens)
    if self._fast_gelu:
      return kernels.policy_or_default(policy).gelu(intermediate, training)
    return self.intermediate_act(intermediate)

  def call(self, x, mask_adder, batch, seq, setup=None, training=False,
           seed=None, output_range=None, policy=None, tokens=None):
    """One layer: [batch * seq, H] -> [batch * seq, H].

    With output_range k (a python int), only the first k positions of each
    example are computed after the keys and values: the output is
    [batch * k, H], the same numbers as those rows of the whole output
    (dropout masks included). The classifier needs the first ([CLS]) row of
    the last layer only: the rest of that layer is work nobody reads
    (TF Model Garden's `output_range`). With n branches side by side,
    `batch` counts n * examples (branch-major).
    """
    # x: [batch * seq, H]
    c = self.config
    setup = setup or NO_ADAPTERS
    policy = kernels.policy_or_default(policy)
    hooks = dict(setup=setup, training=training, policy=policy,
                 tokens=tokens)
    rows, residual = seq, x
    attention_args = {}
    if output_range is not None:
      rows = output_range
      residual = first_positions(x, batch, seq, output_range)  # [batch * k, H]
      attention_args["output_range"] = output_range
    attention = self.attention(x, mask_adder, batch, seq, seed=kernels.fold_seed(seed, 0),
                               **hooks, **attention_args)  # [batch * rows, H]
    attention = _dense(self.attention_output_dense, attention)
    attention = policy.token_dropout(attention, c.hidden_dropout_prob,
                                     training, kernels.fold_seed(seed, 1),
                                     batch, rows)
    attention = self.attention_output(attention, residual=residual,
                                      norms=self._attention_norms, **hooks)
    attention = _apply_layer_norm(self._attention_norms, attention, residual,
                                  setup, training, policy, self.compute_dtype)

    intermediate = self.intermediate(attention, **hooks)
    output = _dense(self.output_dense, intermediate)
    output = self.output_projection(intermediate, output, **hooks)
    output = policy.token_dropout(output, c.hidden_dropout_prob, training,
                                  kernels.fold_seed(seed, 2), batch, rows)
    output = self.ffn_output(output, residual=attention,
                             norms=self._output_norms, **hooks)
    return _apply_layer_norm(self._output_norms, output, attention, setup,
                             training, policy, self.compute_dtype)

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    base["adapters"] = [[n, c.to_dict()] for n, c in self.adapter_configs.items()]
    base["index"] = self.index
    return base


def _dense(layer, x):
  """x · kernel + bias of a keras Dense `layer` (see kernels.dense)."""
  return kernels.dense(x, layer.kernel, layer.bias)


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertPooler(keras.layers.Layer):
  """tanh dense on the first token's hidden state."""

  def __init__(self, config, **kwargs):
    super().__init__(**kwargs)
    self.config = _as_bert_config(config)
    self.dense = keras.layers.Dense(
        self.config.hidden_size, activation="tanh",
        kernel_initializer=_initializer(self.config), name="dense")
    self.dense.build((None, self.config.hidden_size))
    self.built = True

  def call(self, sequence_output):
    # sequence_output: [batch, seq, H] -> [batch, H]
    return self.dense(sequence_output[:, 0, :])

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    return base


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertModel(keras.layers.Layer):
  """The BERT encoder with adapter hook points: embeddings, L blocks, pooler.

  Call with input_ids, input_mask, segment_ids ([batch, seq] int) and the
  active setup; returns (sequence_output [n * batch, seq, H], pooled_output
  [n * batch, H]) for n branches side by side (n = 1 but for Parallel).
  """

  def __init__(self, config, adapters=None, **kwargs):
    super().__init__(**kwargs)
    self.config = _as_bert_config(config)
    items = _adapter_items(adapters)
    # Each adapter's model-level layer, if its method has one (variables
    # shared by its layers in every block; see adapters.registry).
    self.shared = {}
    for name, adapter_config in items:
      layer = registry.shared_for(adapter_config, self.config)
      if layer is not None:
        self.shared[name] = layer
    self.embeddings = BertEmbeddings(self.config, items, self.shared,
                                     name="embeddings")
    self.blocks = [
        TransformerBlock(self.config, items, shared=self.shared, index=i,
                         name="layer_%d" % i)
        for i in range(self.config.num_hidden_layers)
    ]
    self.pooler = BertPooler(self.config, name="pooler")
    # Adapters that read every hidden state of the (frozen) encoder.
    self.encoder_output = AdapterHook("encoder_output", name="encoder_output")
    for name, adapter_config in items:
      self._add_encoder_layers(name, adapter_config)

  def _add_encoder_layers(self, name, adapter_config):
    for point, layer in registry.layers_for(
        adapter_config, self.config, "encoder",
        self.shared.get(name)).items():
      getattr(self, point).add(name, layer)

  def add_adapter(self, name, adapter_config):
    shared = registry.shared_for(adapter_config, self.config)
    if shared is not None:
      with _unlocked(self):
        self.shared[name] = shared
    self.embeddings.add_adapter(name, adapter_config, shared)
    for block in self.blocks:
      block.add_adapter(name, adapter_config, shared)
    with _unlocked(self):
      self._add_encoder_layers(name, adapter_config)

  def delete_adapter(self, name):
    self.embeddings.delete_adapter(name)
    for block in self.blocks:
      block.delete_adapter(name)
    self.encoder_output.remove(name)
    with _unlocked(self):
      self.shared.pop(name, None)

  def checkpoint_variables(self, branch, serving=False):
    """[(checkpoint name, variable, tag)] of one branch, in the original's
    order (embeddings, layers, pooler), then the adapters' model-level
    variables. With `serving`, the adapters as saved and served (see
    adapters.registry)."""
    items = _scoped("bert/embeddings",
                    self.embeddings.checkpoint_variables(branch, serving))
    for i, block in enumerate(self.blocks):
      items += _scoped("bert/encoder/layer_%d" % i,
                       block.checkpoint_variables(branch, serving))
    items += self.encoder_output.checkpoint_variables(
        "bert/" + registry.HOOK_SCOPES["encoder_output"], branch.adapters,
        serving)
    items += _dense_variables("bert/pooler/dense", self.pooler.dense)
    for name in branch.adapters:
      layer = self.shared.get(name)
      if layer is None:
        continue
      listed = (layer.serving_checkpoint_variables() if serving and hasattr(
          layer, "serving_checkpoint_variables")
                else layer.checkpoint_variables())
      items += [("bert/" + rel, v, Tag("adapter", name)) for rel, v in listed]
    return items

  def call(self, input_ids, input_mask, segment_ids, setup=None,
           training=False, seed=None, output_range=None, policy=None,
           frozen_states=None):
    """Returns (sequence_output, pooled_output).

    output_range: None, or a python int k: the last layer computes the
    first k positions only and sequence_output is [batch, k, H] (the pooled
    output needs k = 1; same numbers as the whole computation).
    frozen_states: None, or the frozen encoder's states that an
    encoder-level adapter reads, [batch, seq, L', H], computed before
    (data.frozen_activations): the encoder is then not run.
    """
    setup = setup or NO_ADAPTERS
    policy = kernels.policy_or_default(policy)
    if self.encoder_output.is_active(setup):
      return self._read_frozen_encoder(input_ids, input_mask, segment_ids,
                                       setup, training, seed, output_range,
                                       policy, frozen_states)
    if setup.split is not None:
      raise ValueError("BertModel runs one branch or Parallel ones; the "
                       "model divides a BatchSplit or MultiTask batch")
    n = len(setup.branches)
    skip = setup.skip_layers
    base = setup.without_adapters()
    # AdapterDrop: the layers below the first one with adapters are the
    # base model's; Parallel branches run them once, then split the batch.
    lead = 0
    while lead < len(self.blocks) and lead in skip:
      lead += 1
    shared = setup.parallel and lead > 0
    width = 1 if shared else n  # Branches in the batch before layer `lead`.
    shape = tf.shape(input_ids)
    batch, seq = shape[0] * width, shape[1]
    embed_setup = NO_ADAPTERS if shared else (base if 0 in skip else setup)
    embedded = self.embeddings(input_ids, segment_ids, setup=embed_setup,
                               training=training,
                               seed=kernels.fold_seed(seed, 0), policy=policy)
    if self.embeddings.prompts.is_active(embed_setup):
      # Prompt tuning: soft tokens join the sequence (and the mask).
      embedded, input_mask = self.embeddings.prompts(
          embedded, input_mask, setup=embed_setup, training=training,
          policy=policy)
      seq = tf.shape(embedded)[1]

    def layout(width):
      """The additive mask [width * batch, 1, 1, seq] (0 where attended,
      -10000 where padded) and the TokenLayout (where each example's rows
      are: gated adapters average over them), branch-major."""
      mask = tf.cast(input_mask, tf.float32)  # [batch, seq]
      mask = tf.tile(mask, [width, 1]) if width > 1 else mask
      mask_adder = (1.0 - mask[:, tf.newaxis, tf.newaxis, :]) * MASK_ADDER
      return mask_adder, gating.TokenLayout(shape[0] * width, seq, mask)

    mask_adder, tokens = layout(width)
    x = tf.reshape(embedded, [batch * seq, self.config.hidden_size])
    last = len(self.blocks) - 1
    for i, block in enumerate(self.blocks):
      if shared and i == lead:
        x = tf.tile(x, [n, 1])  # [n * batch * seq, H], branch-major.
        batch *= n
        mask_adder, tokens = layout(n)
      block_args = {"output_range": output_range} if (
          i == last and output_range is not None) else {}
      block_setup = (NO_ADAPTERS if shared and i < lead else
                     base if i in skip else setup)
      x = block(x, mask_adder, batch, seq, setup=block_setup,
                training=training, seed=kernels.fold_seed(seed, i + 1),
                policy=policy, tokens=tokens, **block_args)
    if shared and lead == len(self.blocks):
      x = tf.tile(x, [n, 1])  # Every layer skipped: the branches differ
      batch *= n              # in their heads only.
    rows = seq if output_range is None or not self.blocks else output_range
    sequence_output = tf.reshape(x, [batch, rows, self.config.hidden_size])
    pooled_output = self.pooler(sequence_output)
    return sequence_output, pooled_output

  def token_rows(self, sequence, setup, branch):
    """A branch's rows of `sequence` that are input tokens: without the
    soft tokens its prompt tuning put in (none where layer 0 is skipped)."""
    if 0 in setup.skip_layers:
      return sequence
    for layer in reversed(self.embeddings.prompts.branch_layers(branch)):
      sequence = layer.token_rows(sequence)
    return sequence

  def frozen_states(self, input_ids, input_mask, segment_ids, setup,
                    policy=None):
    """The frozen encoder's hidden states that the setup's encoder-level
    adapter reads, in inference mode: [batch, seq, L', H] (L' of the
    embedding output and the L layers' outputs), cut from the gradient."""
    shape = tf.shape(input_ids)
    batch, seq = shape[0], shape[1]
    h = self.config.hidden_size
    embedded = self.embeddings(input_ids, segment_ids, training=False,
                               policy=policy)  # [batch, seq, H]
    mask = tf.cast(input_mask, tf.float32)[:, tf.newaxis, tf.newaxis, :]
    mask_adder = (1.0 - mask) * MASK_ADDER
    x = tf.reshape(embedded, [batch * seq, h])
    states = [embedded]
    for block in self.blocks:
      x = block(x, mask_adder, batch, seq, training=False, policy=policy)
      states.append(tf.reshape(x, [batch, seq, h]))
    layer, = self.encoder_output.branch_layers(setup.branches[0])
    return tf.stop_gradient(tf.stack([states[i] for i in layer.read_layers],
                                     axis=2))

  def _read_frozen_encoder(self, input_ids, input_mask, segment_ids, setup,
                           training, seed, output_range, policy,
                           frozen_states=None):
    """An encoder_output adapter (layer attention) on the frozen encoder.

    The encoder runs in inference mode and its hidden states are cut from
    the gradient: training computes nothing below the adapter (and nothing
    at all of the encoder with `frozen_states` given). The pooled output is
    the adapter's first ([CLS]) row (not the frozen pooler).
    """
    if setup.parallel or len(setup.branches[0].adapters) > 1:
      raise UserError("a layer_attention adapter reads the frozen encoder: "
                      "it runs alone, not stacked or side by side with "
                      "other adapters (%s)" % ", ".join(
                          n for b in setup.branches for n in b.adapters))
    if frozen_states is None:
      frozen_states = self.frozen_states(input_ids, input_mask, segment_ids,
                                         setup, policy)
    frozen_states = tf.cast(frozen_states, self.compute_dtype)
    layer, = self.encoder_output.branch_layers(setup.branches[0])
    sequence_output = layer(frozen_states, input_mask, training=training,
                            policy=policy,
                            seed=kernels.fold_seed(seed, len(self.blocks) + 1),
                            output_range=output_range)
    return sequence_output, sequence_output[:, 0]

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    base["adapters"] = self.embeddings.get_config()["adapters"]
    return base


@keras.saving.register_keras_serializable(package="adapter_bert")
class ClassifierHead(keras.layers.Layer):
  """Dropout 0.1 on the pooled output, then logits = pooled · Wᵀ + b.

  `output_weights` is [num_labels, H] and `output_bias` [num_labels], as the
  original run_classifier.py. Logits are float32. One output is a
  regression head (STS-B).

  AdapterHub's heads too: with `layers` = n > 1, n - 1 hidden layers of
  dropout, dense H -> H (`classifier/dense_<i>/kernel` [H, H], `.../bias`)
  and `activation_function` (AdapterHub's names: "gelu" is the erf form)
  come before; with `use_pooler=False` the head reads the first token's
  final hidden state instead of BERT's pooler (AdapterHub's default:
  layers=2, use_pooler=False).
  """

  def __init__(self, num_labels, hidden_size, initializer_range=0.02,
               dropout_rate=CLASSIFIER_DROPOUT, layers=1,
               activation_function="tanh", use_pooler=True, per_token=False,
               **kwargs):
    super().__init__(**kwargs)
    # A tagging head: logits for every token of the sequence output.
    self.per_token = bool(per_token)
    if self.per_token:
      use_pooler = False
    self.dropout_rate = dropout_rate
    self.num_labels = num_labels
    self.hidden_size = hidden_size
    self.initializer_range = initializer_range
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
      raise UserError("a head's layers must be an int >= 1, got %r"
                      % (layers,))
    if activation_function not in HEAD_ACTIVATIONS:
      raise UserError("unknown head activation_function %r; expected one "
                      "of %s" % (activation_function,
                                 ", ".join(sorted(HEAD_ACTIVATIONS))))
    self.layers = layers
    self.activation_function = activation_function
    self.use_pooler = bool(use_pooler)
    self._act = get_activation(HEAD_ACTIVATIONS[activation_function])
    init = keras.initializers.TruncatedNormal(stddev=initializer_range)
    self.hidden = []
    for i in range(layers - 1):
      self.hidden.append((
          self.add_weight(name="dense_%d_kernel" % i,
                          shape=(hidden_size, hidden_size),
                          initializer=init),
          self.add_weight(name="dense_%d_bias" % i, shape=(hidden_size,),
                          initializer="zeros")))
    self.output_weights = self.add_weight(
        name="output_weights", shape=(num_labels, hidden_size),
        initializer=init)
    self.output_bias = self.add_weight(
        name="output_bias", shape=(num_labels,), initializer="zeros")

  @property
  def is_regression(self):
    return self.num_labels == 1

  def head_config(self):
    """The structure beyond the reference's (None for the reference head)."""
    if self.layers == 1 and self.use_pooler and not self.per_token:
      return None
    config = {"layers": self.layers, "use_pooler": self.use_pooler,
              "activation_function": self.activation_function}
    if self.per_token:
      config["per_token"] = True
    return config

  def checkpoint_variables(self, tag):
    items = []
    for i, (kernel, bias) in enumerate(self.hidden):
      items += [("classifier/dense_%d/kernel" % i, kernel, tag),
                ("classifier/dense_%d/bias" % i, bias, tag)]
    return items + [("output_weights", self.output_weights, tag),
                    ("output_bias", self.output_bias, tag)]

  def call(self, pooled_output, training=False, seed=None, policy=None):
    # pooled_output: [batch, H] (or the first token's state, use_pooler
    # False) -> logits [batch, num_labels]; a tagging head: [batch, seq, H]
    # -> [batch, seq, num_labels].
    policy = kernels.policy_or_default(policy)
    if not self.per_token:
      return self._logits(pooled_output, training, seed, policy)
    shape = tf.shape(pooled_output)  # Each row alone.
    logits = self._logits(tf.reshape(pooled_output, [-1, self.hidden_size]),
                          training, seed, policy)
    return tf.reshape(logits, [shape[0], shape[1], self.num_labels])

  def _logits(self, x, training, seed, policy):
    """x [rows, H] -> float32 logits [rows, num_labels]."""
    for i, (kernel, bias) in enumerate(self.hidden):
      x = policy.dropout(x, self.dropout_rate, training,
                         kernels.fold_seed(seed, i + 1))
      x = self._act(tf.matmul(x, tf.cast(kernel, x.dtype))
                    + tf.cast(bias, x.dtype))
    x = policy.dropout(x, self.dropout_rate, training, seed)
    x = tf.cast(x, tf.float32)
    logits = tf.matmul(x, tf.cast(self.output_weights, tf.float32),
                       transpose_b=True)
    return logits + tf.cast(self.output_bias, tf.float32)

  def get_config(self):
    base = super().get_config()
    base.update(num_labels=self.num_labels, hidden_size=self.hidden_size,
                initializer_range=self.initializer_range,
                dropout_rate=self.dropout_rate, layers=self.layers,
                activation_function=self.activation_function,
                use_pooler=self.use_pooler, per_token=self.per_token)
    return base


# AdapterHub's head activation names -> compute.activations.
HEAD_ACTIVATIONS = {"tanh": "tanh", "relu": "relu", "gelu": "gelu_exact",
                    "gelu_new": "gelu", "swish": "swish", "silu": "swish"}


# ---------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------

TRAIN_MODES = ("adapters", "full", "head")
INPUT_NAMES = ("input_ids", "input_mask", "segment_ids")


class ModelView:
  """One branch of a BertAdapterModel as the reference toolkit's model had it.

  The base, one adapter per hook point, the LayerNorms that branch uses and
  its head, under google-research/adapter-bert's checkpoint names. Loading,
  saving, adapter directories and the reference layout all go through a
  view (`checkpoint_name_map`); it has the attributes of the reference's
  model that they read (`config`, `adapter_config`, `num_labels`).
  """

  def __init__(self, model, branch, serving=False):
    self.model = model
    self.branch = branch
    # The adapters as saved and served (see adapters.registry): what a
    # prefix tuning MLP computes rather than the MLP.
    self.serving = serving
    self.config = model.config
    names = branch.adapters
    self.adapter_config = (model.adapter_configs[names[-1]] if names else
                           adapters_lib.AdapterConfig(size=0))
    self.head = model.heads[branch.head] if branch.head else None
    self.num_labels = self.head.num_labels if self.head is not None else None

  @property
  def classifier(self):
    return self.head

  def serving_view(self):
    """This view with its adapters as saved and served."""
    return ModelView(self.model, self.branch, serving=True)

  def checkpoint_variables(self):
    """OrderedDict {checkpoint name: (variable, Tag)}, the original's order.

    Raises:
      UserError: if two of the branch's adapters would take one name (two
        adapters at one hook point: the reference names hold one).
    """
    items = self.model.bert.checkpoint_variables(self.branch, self.serving)
    if self.head is not None:
      items += self.head.checkpoint_variables(Tag("head", self.branch.head))
    out = collections.OrderedDict()
    for name, variable, tag in items:
      if name in out:
        raise UserError(
            "adapters %s both have %s: a checkpoint in the reference layout "
            "holds one adapter per hook point"
            % (" and ".join(self.branch.adapters), name))
      out[name] = (variable, tag)
    return out

  def checkpoint_name_map(self):
    """OrderedDict {checkpoint name: variable}."""
    return collections.OrderedDict(
        (name, variable) for name, (variable, _) in
        self.checkpoint_variables().items())

  def adapter_names(self):
    """Checkpoint names of the branch's adapter-method variables (tags
    "adapter" and "fusion", whatever the method calls them): those
    `adapter_weight_decay_rate` decays."""
    return [name for name, (_, tag) in self.checkpoint_variables().items()
            if tag.kind in ("adapter", "fusion")]

  def trainable_names(self, train_mode):
    """Checkpoint names trained in `train_mode`, chosen by the tags.

    adapters: the branch's adapters, the LayerNorm copies of an adapter
    whose method trains them (adapter-bert) and its head; with no adapter at
    all (adapter size 0), the base's LayerNorms and the head, as the
    reference; methods that train no LayerNorm (AdapterHub's) leave them
    frozen. full: everything in the view (original BERT fine-tuning); head:
    the head.
    """
    if train_mode not in TRAIN_MODES:
      raise UserError("unknown train_mode %r; expected one of %s"
                      % (train_mode, ", ".join(TRAIN_MODES)))
    names = []
    no_adapters = not self.branch.adapters
    for name, (_, tag) in self.checkpoint_variables().items():
      if train_mode == "full" or tag.kind == "head":
        names.append(name)
      elif train_mode == "adapters" and tag.kind != "base" and (
          tag.kind != "layer_norm" or tag.owner is not None or no_adapters):
        names.append(name)
    return names


def _split_features(data):
  """(features, labels or None) from a (features, labels) pair or a dict."""
  if isinstance(data, (tuple, list)):
    features = data[0]
    labels = data[1] if len(data) > 1 else None
  else:
    features, labels = data, None
  if labels is None and isinstance(features, dict):
    labels = features.get("label_ids")
  return features, labels


def model_inputs(features):
  """The int32 model inputs of a feature dict."""
  missing = [k for k in INPUT_NAMES if k not in features]
  if missing:
    raise UserError("features lack %s; expected int32 %s [batch, seq]"
                    % (", ".join(missing), ", ".join(INPUT_NAMES)))
  inputs = {k: tf.cast(features[k], tf.int32) for k in INPUT_NAMES}
  if "task_ids" in features:  # MultiTask's routing, [batch].
    inputs["task_ids"] = tf.cast(features["task_ids"], tf.int32)
  if "frozen_states" in features:  # data.frozen_activations.
    inputs["frozen_states"] = features["frozen_states"]
  return inputs


def per_example_loss(logits, labels, num_labels, is_regression):
  """Loss per example as the original run_classifier.py.

  Args:
    logits: float32 [batch, num_labels] (one column for regression), or
      [batch, seq, num_labels] of a tagging head.
    labels: int [batch] class ids, or float [batch] targets for regression,
      or int [batch, seq] tags (-1: not scored).
    num_labels: number of classes.
    is_regression: mean squared error instead of cross-entropy.

  Returns:
    float32 [batch].
  """
  logits = tf.cast(logits, tf.float32)
  if is_regression:
    return tf.square(logits[:, 0] - tf.cast(labels, tf.float32))
  log_probs = tf.nn.log_softmax(logits, axis=-1)
  one_hot = tf.one_hot(tf.cast(labels, tf.int32), depth=num_labels,
                       dtype=tf.float32)
  losses = -tf.reduce_sum(one_hot * log_probs, axis=-1)
  if logits.shape.rank == 3:
    # A tagging head: [batch, seq] token losses; label -1 (a word's later
    # pieces, padding) counts nothing. Each example's mean over its
    # labelled tokens.
    labelled = tf.cast(tf.greater_equal(labels, 0), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(losses * labelled, axis=-1),
                                 tf.reduce_sum(labelled, axis=-1))
  return losses


def _fusions_of(block):
  """The fusion names in a composition block (or None)."""
  if block is None:
    return []
  if isinstance(block, composition.Fuse):
    return [block.name]
  out = []
  for child in block.children:
    if isinstance(child, composition.AdapterCompositionBlock):
      out += [n for n in _fusions_of(child) if n not in out]
  return out


def cpu_only_host():
  """Whether this process sees no GPU or TPU (the Keras default strategy)."""
  return not (tf.config.list_logical_devices("GPU")
              or tf.config.list_logical_devices("TPU"))


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertAdapterModel(keras.Model):
  """One BERT base with named adapters and heads (AdapterHub's model API).

  Call with a dict of int32 `input_ids`, `input_mask`, `segment_ids`
  [batch, seq]; returns the active head's float32 logits [batch,
  num_labels] (a dict by head name when several heads run side by side).
  `dropout_seed`, an int [2] tensor, makes dropout masks a pure function of
  the seed (reproducible runs and resumes); `policy` picks the kernels.

  Adapters and heads are added by name; `set_active_adapters` chooses what
  a forward pass runs; `train_adapter` freezes all but one adapter and its
  head. The active head is the one named like the active adapter unless set
  (`active_head`), or the only head.
  """

  def __init__(self, config, adapters=None, heads=None,
               classifier_dropout=CLASSIFIER_DROPOUT, **kwargs):
    """Builds the model with fresh weights.

    Args:
      config: BertConfig (or its dict).
      adapters: optional [(name, adapter config)] (or a dict) built with the
        model; the first becomes active.
      heads: optional [(name, num_labels)] (or a dict).
      classifier_dropout: dropout on the pooled output before a head.
    """
    super().__init__(**kwargs)
    self.config = _as_bert_config(config)
    self.classifier_dropout = classifier_dropout
    items = _adapter_items(adapters)
    for name, _ in items:
      _check_name(name, "adapter")
    self.adapter_configs = dict(items)
    self.bert = BertModel(self.config, items, name="bert")
    self.heads = {}
    for name, num_labels in (heads.items() if isinstance(heads, dict)
                             else heads or []):
      self.add_classification_head(name, num_labels)
    self._active = composition.parse(items[0][0]) if items else None
    self._skip_layers = frozenset()
    self._active_head = None
    self.fusions = {}  # name -> (adapter names, AdapterFusionConfig)
    self._fit_seed = 0
    self._loss_fn = None  # compile(loss=...); None: the built-in loss.
    self._preprocessor = None
    self._text_settings = None  # (vocab, lower case, length), built lazily.
    self.built = True

  # ---------------------------------------------------------------- loading

  @classmethod
  def from_pretrained(cls, path, vocab_file=None, init_checkpoint=None,
                      do_lower_case=None, max_seq_length=128, **kwargs):
    """A model holding a pre-trained base, without adapters or heads.

    Args:
      path: a directory in Google's format (`bert_config.json`,
        `vocab.txt`, `bert_model.ckpt`), a Hugging Face BERT directory
        (`config.json`, `model.safetensors` or `pytorch_model.bin`,
        `vocab.txt`), or the path of a
        `bert_config.json` with `vocab_file` and `init_checkpoint` given.
      vocab_file, init_checkpoint: the other two paths, when `path` is a
        config file.
      do_lower_case, max_seq_length: how the model's `preprocessor` turns
        raw text into features (`fit`, `evaluate` and `predict` take
        strings); do_lower_case None: as the base's name says ("uncased",
        "cased"), or a Hugging Face directory's tokenizer_config.json;
        uncased when neither says.

    Returns:
      The model; `vocab_file` and `init_checkpoint` hold the paths used.

    Raises:
      UserError: for a missing file or a checkpoint that does not fit.
    """
    if huggingface.is_hf_dir(path):  # config.json, model.safetensors, vocab.
      config_file = os.path.join(path, huggingface.CONFIG_FILE)
      vocab_file = vocab_file or os.path.join(path, "vocab.txt")
      init_checkpoint = init_checkpoint or path
    elif os.path.isdir(path):
      config_file = os.path.join(path, "bert_config.json")
      vocab_file = vocab_file or os.path.join(path, "vocab.txt")
      init_checkpoint = init_checkpoint or os.path.join(path,
                                                        "bert_model.ckpt")
    else:
      config_file = path
      if init_checkpoint is None:
        raise UserError("from_pretrained(%s): give init_checkpoint= (or a "
                        "directory holding bert_config.json, vocab.txt and "
                        "bert_model.ckpt)" % path)
    if vocab_file is not None and not os.path.isfile(vocab_file):
      raise UserError("from_pretrained(%s): vocabulary %s not found"
                      % (path, vocab_file))
    model = cls(BertConfig.from_json_file(config_file), **kwargs)
    model.load_base_checkpoint(init_checkpoint)
    model.vocab_file = vocab_file
    model.init_checkpoint = init_checkpoint
    if vocab_file is not None:
      if do_lower_case is None:
        do_lower_case = _base_lower_case(path, init_checkpoint)
      model.set_preprocessor(vocab_file, do_lower_case, max_seq_length)
    # The base's name, recorded in adapters written in AdapterHub's layout
    # (its `model_name`): a Hugging Face directory's own, else the path.
    model.base_name = os.path.abspath(path)
    if huggingface.is_hf_dir(path):
      with open(os.path.join(path, huggingface.CONFIG_FILE),
                encoding="utf-8") as f:
        model.base_name = json.load(f).get("_name_or_path") or model.base_name
    return model

  def set_preprocessor(self, vocab_file, do_lower_case=True,
                       max_seq_length=128):
    """How raw text becomes features for `fit`, `evaluate` and `predict`
    (`preprocessor_lib.BertPreprocessor`, built on first use).

    Raises:
      UserError: for a missing vocabulary or a max_seq_length below 3.
    """
    if not os.path.isfile(vocab_file):
      raise UserError("vocabulary %s not found" % vocab_file)
    if int(max_seq_length) < 3:
      raise UserError("max_seq_length must be at least 3, got %r"
                      % (max_seq_length,))
    self._text_settings = (vocab_file, bool(do_lower_case),
                           int(max_seq_length))
    self._preprocessor = None

  @property
  def preprocessor(self):
    """The BertPreprocessor for raw text, or None (no vocabulary given:
    `from_pretrained` or `set_preprocessor` give one)."""
    if self._preprocessor is None and self._text_settings is not None:
      self._preprocessor = preprocessor_lib.BertPreprocessor(
          *self._text_settings)
    return self._preprocessor

  def _text_features(self, x):
    if self.preprocessor is None:
      raise UserError("raw text needs a vocabulary: build the model with "
                      "from_pretrained(...) or call set_preprocessor("
                      "vocab_file, do_lower_case, max_seq_length)")
    return self.preprocessor(x)

  def load_base_checkpoint(self, path, flag_name="init_checkpoint"):
    """Restores the base from a BERT checkpoint (original names).

    The base's variables and LayerNorms come from the checkpoint; each
    adapter's LayerNorm copies start again from them; adapters and the head
    of the active view are restored too when the checkpoint has them (one
    written by google-research/adapter-bert), else keep their values.
    """
    checkpoint_io.load_checkpoint(self.view(composition.Branch()), path,
                                  flag_name=flag_name)
    for name in self.adapter_configs:
      self.reset_layer_norms(name)
    view = self.view()
    own = [n for n, (_, tag) in view.checkpoint_variables().items()
           if tag.kind != "base" and tag.owner is not None]
    if own:
      checkpoint_io.load_checkpoint(view, path, flag_name=flag_name,
                                    require_base=False, names=own,
                                    log_restored=False)

  def reset_layer_norms(self, name):
    """Sets adapter `name`'s LayerNorm copies to the base's values."""
    layers = [(self.bert.embeddings.layer_norms, self.bert.embeddings.layer_norm)]
    for block in self.bert.blocks:
      layers.append((block.attention_layer_norms, block.attention_layer_norm))
      layers.append((block.output_layer_norms, block.output_layer_norm))
    for copies, base in layers:
      if name in copies:
        copies[name].gamma.assign(base.gamma)
        copies[name].beta.assign(base.beta)

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
    _check_name(name, "adapter")
    if name in self.adapter_configs:
      raise UserError("an adapter named %r exists already; delete it first "
                      "or choose another name" % name)
    config = _as_adapter_config(config)
    registry.method_of(config)  # An unknown method fails before any change.
    self.adapter_configs[name] = config
    try:
      with _unlocked(self):
        self.bert.add_adapter(name, config)
    except BaseException:
      # A config that does not fit this model (a size, a layer index) fails
      # while the layers are built: take out what was added.
      with _unlocked(self):
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
      combine_strategy: "linear"; for LoRA also "lora_linear_only_negate_b"
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
    strategies = ("linear", "lora_linear_only_negate_b", "lora_delta_w_svd")
    if combine_strategy not in strategies:
      raise UserError("unknown combine_strategy %r; expected one of %s"
                      % (combine_strategy, ", ".join(strategies)))
    is_lora = config.kind == "lora"
    if combine_strategy != "linear" and not is_lora:
      raise UserError("combine_strategy %r is for lora adapters; %r is %s"
                      % (combine_strategy, names[0], config.kind))
    old_scaling = new_scaling = None
    if combine_strategy == "lora_delta_w_svd":
      if not isinstance(svd_rank, int) or isinstance(svd_rank, bool) or (
          svd_rank < 1):
        raise UserError("combine_strategy 'lora_delta_w_svd' needs svd_rank, "
                        "a positive int, got %r" % (svd_rank,))
      old_scaling = config.alpha / config.r
      config = dataclasses.replace(config, r=svd_rank)
      new_scaling = config.alpha / config.r
    elif svd_rank is not None:
      raise UserError("svd_rank is for combine_strategy 'lora_delta_w_svd'")
    if adapter_name in self.adapter_configs:
      if not overwrite_ok or adapter_name in names:
        raise UserError("an adapter named %r exists already; choose another "
                        "name (or overwrite_ok=True)" % adapter_name)
      self.delete_adapter(adapter_name)
    self.add_adapter(adapter_name, config)
    try:
      sources = [self.adapter_view(n).checkpoint_variables() for n in names]
      for key, (variable, tag) in self.adapter_view(
          adapter_name).checkpoint_variables().items():
        if tag.kind == "base" or tag.owner != adapter_name:
          continue
        values = [src[key][0].numpy().astype(np.float64) for src in sources]
        if combine_strategy == "lora_delta_w_svd" and key.endswith(
            ("/lora_A", "/lora_B")):
          continue  # Below, by pairs.
        signs = ([abs(w) for w in weights]
                 if combine_strategy == "lora_linear_only_negate_b"
                 and key.endswith("/lora_A") else weights)
        variable.assign(sum(w * v for w, v in zip(signs, values)).astype(
            np.float32))
      if combine_strategy == "lora_delta_w_svd":
        view = self.adapter_view(adapter_name).checkpoint_variables()
        for key in view:
          if not key.endswith("/lora_A"):
            continue
          scope = key[:-len("/lora_A")]
          delta = sum(
              w * (src[scope + "/lora_A"][0].numpy().astype(np.float64)
                   @ src[scope + "/lora_B"][0].numpy().astype(np.float64))
              for w, src in zip(weights, sources))  # [in, out]
          delta *= old_scaling / new_scaling
          u, sv, vt = np.linalg.svd(delta, full_matrices=False)
          r = config.r
          a = np.zeros(view[key][0].shape)
          b = np.zeros(view[scope + "/lora_B"][0].shape)
          k = min(r, len(sv))
          a[:, :k] = u[:, :k] * sv[:k]
          b[:k] = vt[:k]
          view[key][0].assign(a.astype(np.float32))
          view[scope + "/lora_B"][0].assign(b.astype(np.float32))
    except BaseException:
      self.delete_adapter(adapter_name)
      raise
    if set_active:
      self.set_active_adapters(adapter_name)

  # ------------------------------------------------------------- fusion

  def _fusion_name(self, adapter_names, name=None):
    """(fusion name, adapter names) from a Fuse, a list or "a,b"."""
    if isinstance(adapter_names, composition.Fuse):
      return name or adapter_names.name, tuple(adapter_names.children)
    if isinstance(adapter_names, str):
      names = tuple(adapter_names.split(","))
      return name or adapter_names, names
    names = tuple(adapter_names)
    return name or ",".join(names), names

  def _fusion_places(self):
    """[(hook, where)] of every place a fusion can sit."""
    return [(getattr(block, point), "%s of layer %d" % (point, i))
            for i, block in enumerate(self.bert.blocks)
            for point in ("attention_output", "ffn_output")]

  def add_adapter_fusion(self, adapter_names, config=None, name=None,
                         overwrite_ok=False, set_active=False):
    """Adds an AdapterFusion of adapters (adapters.fusion), fresh weights.

    Args:
      adapter_names: a Fuse, a list of adapter names or "a,b".
      config: "dynamic" (default), "static", a dict or an
        adapters.AdapterFusionConfig.
      name: the fusion's name (default: the adapter names joined by commas).
      overwrite_ok: replace a fusion of that name.
      set_active: make `Fuse(*adapter_names)` the active setup.

    Raises:
      UserError: for unknown adapters, adapters that are not sequential
        bottlenecks, adapters at different places, or a name taken.
    """
    name, names = self._fusion_name(adapter_names, name)
    config = fusion_lib.get_fusion_config(config)
    if len(names) < 2 or len(set(names)) != len(names):
      raise UserError("a fusion takes two or more different adapters, got %s"
                      % ", ".join(names))
    for n in names:
      self._check_adapter(n)
      c = self.adapter_configs[n]
      if getattr(c, "kind", None) != "bn" or c.is_parallel:
        raise UserError(
            "adapter %r (%s) cannot be fused: AdapterFusion combines "
            "sequential bottleneck adapters (pfeiffer, houlsby, compacter, "
            "...)%s" % (n, getattr(c, "kind", "bottleneck"),
                        "; adapter-bert adapters train their own LayerNorms"
                        if getattr(c, "kind", None) == "bottleneck" else ""))
    if name in self.fusions:
      if not overwrite_ok:
        raise UserError("a fusion named %r exists already (overwrite_ok="
                        "True replaces it)" % name)
      self.delete_adapter_fusion(name)
    places = []
    for hook, where in self._fusion_places():
      present = [n for n in names if n in hook.layers_by_adapter]
      if present and len(present) < len(names):
        raise UserError("adapters %s cannot be fused: at %s only %s ha%s a "
                        "bottleneck" % (", ".join(names), where,
                                        ", ".join(present),
                                        "s" if len(present) == 1 else "ve"))
      if present:
        places.append(hook)
    dropout = (config.dropout_prob if config.dropout_prob is not None
               else self.config.attention_probs_dropout_prob)
    for hook in places:
      hook.add_fusion(name, fusion_lib.FusionLayer(
          config, self.config.hidden_size, dropout,
          name="adapter_fusion"))
    self.fusions[name] = (names, config)
    if set_active:
      self.set_active_adapters(composition.Fuse(*names, name=name))

  def delete_adapter_fusion(self, adapter_names):
    """Removes a fusion (its name, a Fuse, a list of names).

    Raises:
      UserError: for an unknown fusion.
    """
    name, _ = self._fusion_name(adapter_names)
    if name not in self.fusions:
      raise UserError("unknown fusion %r; this model has %s" % (
          name, ", ".join(sorted(self.fusions)) or "no fusions"))
    for hook, _ in self._fusion_places():
      hook.remove_fusion(name)
    del self.fusions[name]
    if self._active is not None and name in _fusions_of(self._active):
      self._active = None
    self._forget_traced_steps()

  def _fusion_layers(self, name):
    return [hook.fusions[name] for hook, _ in self._fusion_places()
            if name in hook.fusions]

  def train_adapter_fusion(self, adapter_setup, unfreeze_adapters=False):
    """Activates a setup with a Fuse and freezes all but its fusions and
    heads (and, with `unfreeze_adapters`, the fused adapters).

    Returns:
      The list of trained variables.

    Raises:
      UserError: for a setup without a fusion, or an unknown one.
    """
    if isinstance(adapter_setup, (list, tuple)) or (
        isinstance(adapter_setup, str) and "," in adapter_setup):
      name, names = self._fusion_name(adapter_setup)
      adapter_setup = composition.Fuse(*names, name=name)
    self.set_active_adapters(adapter_setup)
    fusions = _fusions_of(self._active)
    if not fusions:
      raise UserError("train_adapter_fusion needs a setup with a Fuse, got "
                      "%r" % (self._active,))
    for variable in self.weights:
      variable.trainable = False
    trained = []
    for name in fusions:
      for layer in self._fusion_layers(name):
        trained += [v for _, v in layer.checkpoint_variables()]
      if unfreeze_adapters:
        for n in self.fusions[name][0]:
          trained += [v for key, (v, tag) in self.adapter_view(
              n).checkpoint_variables().items()
                      if tag.kind != "base" and tag.owner == n]
    for branch in self.active_setup().branches:
      if branch.head is not None:
        trained += [v for _, v, _ in self.heads[
            branch.head].checkpoint_variables(None)]
    for variable in trained:
      variable.trainable = True
    self._forget_traced_steps()
    return trained

  def fusion_regularization_loss(self):
    """AdapterHub's 0.01·||I - V||² summed over the trained value matrices of
    the active setup's fusions (0.0 where none)."""
    losses = []
    for name in _fusions_of(self._active):
      for layer in self._fusion_layers(name):
        loss = layer.regularization_loss()
        if loss is not None and layer.value.trainable:
          losses.append(loss)
    return tf.add_n(losses) if losses else tf.constant(0.0)

  def fusion_variables(self, name):
    """OrderedDict {checkpoint name: variable} of fusion `name`."""
    if name not in self.fusions:
      raise UserError("unknown fusion %r; this model has %s" % (
          name, ", ".join(sorted(self.fusions)) or "no fusions"))
    out = collections.OrderedDict()
    for i, block in enumerate(self.bert.blocks):
      for point in ("attention_output", "ffn_output"):
        scope = "bert/encoder/layer_%d/%s" % (i, registry.HOOK_SCOPES[point])
        for key, variable, _ in getattr(block, point).checkpoint_variables(
            scope, (), fusions=(name,)):
          out[key] = variable
    return out

  def save_adapter_fusion(self, directory, name, with_adapters=False,
                          with_head=False, format="toolkit"):  # pylint: disable=redefined-builtin
    """Writes fusion `name` (its config, fused adapter names and weights) to
    `directory`, atomically; with `with_adapters`, each fused adapter (with
    its head) in `directory/<adapter name>/` too.

    Args:
      with_head: False, or the name of a head to save with the fusion (as
        AdapterHub's `with_head`; True: the active head), which
        `load_adapter_fusion` adds back.

    Raises:
      UserError: for an unknown fusion or head, or a directory that cannot
        be written.
    """
    name, _ = self._fusion_name(name)
    variables = self.fusion_variables(name)
    names, config = self.fusions[name]
    head = None
    if with_head:
      head = self.active_head if with_head is True else with_head
      if head not in self.heads:
        raise UserError("save_adapter_fusion: no head named %r; this model "
                        "has %s" % (head, ", ".join(sorted(self.heads))
                                    or "no heads"))
    if format == "adapterhub":  # AdapterHub's save_adapter_fusion layout.
      if head is not None:
        raise UserError("save_adapter_fusion: with_head is written in this "
                        "toolkit's format only; save the head's adapter "
                        "with save_adapter")
      adapterhub.save_fusion(self, directory, name,
                             getattr(self, "base_name", None))
    elif format == "toolkit":
      adapter_io.save_fusion(self, directory, name, names, config, variables,
                             head=head)
    else:
      raise UserError("save_adapter_fusion format %r is not one of toolkit, "
                      "adapterhub" % (format,))
    if with_adapters:
      for n in names:
        self.save_adapter(os.path.join(directory, n), n, format=format)

  def load_adapter_fusion(self, directory, load_as=None, set_active=False,
                          with_head=True):
    """Loads a fusion written by `save_adapter_fusion`; its adapters must be
    in the model, or in `directory/<adapter name>/` (loaded then); with
    `with_head`, the head saved with it (made the active head).

    Returns:
      The fusion's name in the model.

    Raises:
      UserError: for a directory that is not a fusion of this base, or
        adapters missing.
    """
    if adapterhub.is_adapterhub_fusion_dir(directory):
      return adapterhub.load_fusion(self, directory, load_as, set_active)
    return adapter_io.load_fusion(self, directory, load_as, set_active,
                                  with_head)

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

  def _mergeable_layers(self, name):
    """[(LoRA/(IA)^3 layer, base Dense)] of adapter `name`."""
    pairs = []
    for block in self.bert.blocks:
      for hook, dense in block.projections().values():
        layer = hook.layers_by_adapter.get(name)
        if layer is not None:
          pairs.append((layer, dense))
    return pairs

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
    self._check_adapter(name)
    pairs = self._mergeable_layers(name)
    kind = self.adapter_configs[name].kind
    if not pairs or kind not in ("lora", "ia3"):
      raise UserError("adapter %r (%s) cannot be merged: only lora and ia3 "
                      "adapters fold into the base weights" % (name, kind))
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
      for name in _fusions_of(block):
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

  # ------------------------------------------------------------------ heads

  def add_classification_head(self, name, num_labels=2, overwrite_ok=False,
                              layers=1, activation_function="tanh",
                              use_pooler=True):
    """Adds a classification head (one output: regression, as STS-B).

    The default is the reference's head (dropout and one dense layer on
    BERT's pooler). AdapterHub's default is `layers=2, use_pooler=False`
    (dropout, dense H -> H, tanh, dropout, dense on the first token's final
    state); see ClassifierHead.

    Raises:
      UserError: for a name taken (unless overwrite_ok) or a bad size.
    """
    self._add_head(name, num_labels, 1, overwrite_ok, layers=layers,
                   activation_function=activation_function,
                   use_pooler=use_pooler)

  def add_tagging_head(self, name, num_labels=2, layers=1,
                       activation_function="tanh", overwrite_ok=False):
    """Adds a tagging head (AdapterHub's `add_tagging_head`): logits for
    every token, [batch, seq, num_labels], from the sequence output
    (`layers` - 1 hidden layers before, as ClassifierHead's).

    Raises:
      UserError: for a name taken (unless overwrite_ok) or a bad size.
    """
    self._add_head(name, num_labels, 2, overwrite_ok, layers=layers,
                   activation_function=activation_function, per_token=True)

  def _add_head(self, name, num_labels, fewest, overwrite_ok, **kwargs):
    _check_name(name, "head")
    if (isinstance(num_labels, bool) or not isinstance(num_labels, int)
        or num_labels < fewest):
      raise UserError("num_labels must be an integer >= %d, got %r"
                      % (fewest, num_labels))
    if name in self.heads and not overwrite_ok:
      raise UserError("a head named %r exists already" % name)
    with _unlocked(self):
      self.heads[name] = ClassifierHead(
          num_labels, self.config.hidden_size, self.config.initializer_range,
          dropout_rate=self.classifier_dropout, name=name, **kwargs)

  def add_head_from_config(self, name, num_labels, head_config=None):
    """Adds a head as a saved one describes itself (ClassifierHead's
    head_config(): None for the reference head; per_token for tagging)."""
    head_config = dict(head_config or {})
    if head_config.pop("per_token", False):
      head_config.pop("use_pooler", None)
      self.add_tagging_head(name, num_labels, **head_config)
    else:
      self.add_classification_head(name, num_labels, **head_config)

  def delete_head(self, name):
    if name not in self.heads:
      raise UserError("unknown head %r; this model has %s"
                      % (name, ", ".join(sorted(self.heads)) or "no heads"))
    with _unlocked(self):
      del self.heads[name]
    if self._active_head == name:
      self._active_head = None

  @property
  def active_head(self):
    setup = self.active_setup()
    heads = [b.head for b in setup.branches]
    return heads[0] if len(heads) == 1 else heads

  @active_head.setter
  def active_head(self, name):
    if name is not None and name not in self.heads:
      raise UserError("unknown head %r; this model has %s"
                      % (name, ", ".join(sorted(self.heads)) or "no heads"))
    self._active_head = name

  # Reference-model attributes of the active view, for the command line.
  @property
  def classifier(self):
    return self.view().head

  @property
  def num_labels(self):
    return self.view().num_labels

  @property
  def adapter_config(self):
    return self.view().adapter_config

  def checkpoint_name_map(self):
    """{checkpoint name: variable} of the active view."""
    return self.view().checkpoint_name_map()

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
            tag.kind != "base" and tag.owner == names[0])
        if variable.trainable:
          trainable.append((key, variable))
      return trainable
    trainable, seen = [], set()
    for name in names:
      for key, (variable, tag) in self.adapter_view(
          name).checkpoint_variables().items():
        if tag.kind not in ("base", "head") and tag.owner == name and (
            id(variable) not in seen):
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

  # ---------------------------------------------------------------- forward

  def encode(self, features, training=False, dropout_seed=None,
             output_range=None, policy=None, setup=None):
    """Returns (sequence_output, pooled_output) for a feature dict.

    output_range: see BertModel.call (None: every position's output).
    """
    return self.bert(features["input_ids"], features["input_mask"],
                     features["segment_ids"],
                     setup=setup or self.active_setup(), training=training,
                     seed=kernels.fold_seed(dropout_seed, 0),
                     output_range=output_range, policy=policy,
                     frozen_states=features.get("frozen_states"))

  def call(self, features, training=False, dropout_seed=None, policy=None,
           setup=None):
    setup = setup or self.active_setup()
    if any(b.head is None for b in setup.branches):
      raise UserError("no active head: add one (add_classification_head) or "
                      "name it (model.active_head = ...)")
    if setup.split is not None:
      return self._call_split(features, setup, training, dropout_seed, policy)
    # Only the [CLS] row of the last layer reaches the pooler (unless a
    # gated adapter there averages over every token, or a tagging head
    # reads every token).
    gated = any(gating.uses_gating(self.adapter_configs[name])
                for b in setup.branches for name in b.adapters)
    tagging = any(self.heads[b.head].per_token for b in setup.branches)
    sequence, pooled = self.encode(features, training=training,
                                   dropout_seed=dropout_seed,
                                   output_range=(None if gated or tagging
                                                 else 1),
                                   policy=policy, setup=setup)
    seed = kernels.fold_seed(dropout_seed, 1)

    def head_input(head, pooled, sequence, branch):
      # BERT's pooler, the first token (AdapterHub's default head), or every
      # input token (a tagging head; soft prompt tokens are not tagged).
      if head.per_token:
        return self.bert.token_rows(sequence, setup, branch)
      return pooled if head.use_pooler else sequence[:, 0]

    if not setup.parallel:
      branch = setup.branches[0]
      head = self.heads[branch.head]
      return head(head_input(head, pooled, sequence, branch),
                  training=training, seed=seed, policy=policy)
    n = len(setup.branches)
    return {b.head: self.heads[b.head](
        head_input(self.heads[b.head], p, q, b), training=training,
        seed=seed, policy=policy) for b, p, q in zip(
            setup.branches, tf.split(pooled, n, axis=0),
            tf.split(sequence, n, axis=0))}

  def _call_split(self, features, setup, training, dropout_seed, policy):
    """BatchSplit / MultiTask: each branch's examples through it alone.

    Returns {head name: float32 [batch, its labels]}, each row computed by
    the head of the branch the example went through, NaN in the rows of the
    other branches' examples.
    """
    n = len(setup.branches)
    batch = tf.shape(features["input_ids"])[0]
    if setup.split == "sizes":
      sizes = tf.constant(setup.batch_sizes, tf.int32)
      tf.debugging.assert_equal(
          tf.reduce_sum(sizes), batch,
          message="BatchSplit(batch_sizes=%s) needs batches of %d examples"
          % (list(setup.batch_sizes), sum(setup.batch_sizes)))
      order = tf.range(batch)
    else:
      if "task_ids" not in features:
        raise UserError("MultiTask routes each example by its 'task_ids' "
                        "feature (int [batch], 0..%d); the features have "
                        "none" % (n - 1))
      task_ids = tf.cast(features["task_ids"], tf.int32)
      tf.debugging.assert_less(
          task_ids, n, message="task_ids must be 0..%d (one per element of "
          "the MultiTask)" % (n - 1))
      tf.debugging.assert_non_negative(
          task_ids, message="task_ids must be 0..%d" % (n - 1))
      order = tf.argsort(task_ids, stable=True)
      sizes = tf.math.bincount(task_ids, minlength=n, maxlength=n,
                               dtype=tf.int32)
    ends = tf.cumsum(sizes)
    outputs = {}
    for i, branch in enumerate(setup.branches):
      rows = order[ends[i] - sizes[i]:ends[i]]  # This branch's examples.
      part = {k: tf.gather(features[k], rows) for k in INPUT_NAMES}
      logits = self.call(part, training=training, dropout_seed=dropout_seed,
                         policy=policy, setup=setup.alone(branch))
      full = tf.fill(tf.concat([[batch], tf.shape(logits)[1:]], 0),
                     float("nan"))  # [batch, labels] or [batch, seq, labels]
      full = tf.tensor_scatter_nd_update(full, rows[:, tf.newaxis], logits)
      if branch.head in outputs:  # Two elements with one head.
        full = tf.where(tf.math.is_nan(full), outputs[branch.head], full)
      outputs[branch.head] = full
    return outputs

  # ------------------------------------------------------------------ Keras

  def compile(self, optimizer="adam_weight_decay", loss=None,
              jit_compile=None, seed=0, adapter_drop=False, **kwargs):
    """Keras compile; the loss defaults to the command line's.

    Args:
      optimizer: an optimization.AdamWeightDecay (converted to its Keras
        form), a Keras optimizer, or "adam_weight_decay".
      loss: None: the command line's loss (cross entropy over the classes,
        squared error for one output, a tagging head's mean over its
        labelled tokens; under several heads their sum). Else a Keras loss
        (an object, a function or a name for `keras.losses.get`) called as
        `loss(labels, logits)` on each head's rows. A Keras loss that is
        the built-in one (`SparseCategoricalCrossentropy(from_logits=True)`
        on a classification head, `MeanSquaredError()` on a regression head,
        both with their default reduction and no ignore_class) runs the
        built-in's kernel, so it trains exactly as the default.
      jit_compile: None: as the command line (the whole step compiled by XLA
        on GPU/TPU; on a CPU host only the element-wise kernels).
      seed: base of the dropout seeds (mask = f(seed, step)).
      adapter_drop: AdapterDrop's training recipe: each step of `fit` skips
        the adapters of a random number of the lowest layers (none at
        evaluate and predict; see model.adapter_drop). With the default
        optimizer a variable a step did not reach keeps its value and
        moments; other Keras optimizers see a zero gradient for it.
      **kwargs: passed to keras.Model.compile (metrics, ...).

    Raises:
      UserError: for a loss Keras does not know.
    """
    self._loss_fn = _as_loss(loss)
    optimizer = optimization.as_keras_optimizer(optimizer)
    if isinstance(optimizer, optimization.KerasAdamWeightDecay):
      optimizer.set_checkpoint_names(self._names_by_variable(),
                                     self._adapter_variable_ids())
    if jit_compile is None:
      jit_compile = self._resolve_auto_jit_compile()
    self._fit_seed = int(seed)
    self._adapter_drop = bool(adapter_drop)
    super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

  def _resolve_auto_jit_compile(self):
    # The command line's rule: XLA compiles the whole step on GPUs and TPUs;
    # on a host with CPUs only, the element-wise kernels alone.
    return not cpu_only_host()

  def _keras_policy(self):
    """The kernels of compile/fit/evaluate/predict's steps."""
    return kernels.KernelPolicy(fused=True, cpu_host=(
        not self.jit_compile and cpu_only_host()))

  def _names_by_variable(self):
    """{id(variable): checkpoint name} over every adapter's view."""
    names = {}
    views = [self.view(composition.Branch())]
    views += [self.adapter_view(n) for n in self.adapter_configs]
    for view in views:
      for name, variable in view.checkpoint_name_map().items():
        names.setdefault(id(variable), name)
    for head_name, head in self.heads.items():
      for key, variable, _ in head.checkpoint_variables(None):
        names[id(variable)] = key
    return names

  def _adapter_variable_ids(self):
    """ids of every adapter method's variables (tags adapter and fusion):
    those the optimizer decays at its adapter rate."""
    ids = set()
    views = [self.adapter_view(n) for n in self.adapter_configs]
    for view in views:
      for _, (variable, tag) in view.checkpoint_variables().items():
        if tag.kind in ("adapter", "fusion"):
          ids.add(id(variable))
    for name in self.fusions:
      for variable in self.fusion_variables(name).values():
        ids.add(id(variable))
    return ids

  def _loss(self, logits, labels):
    """The mean of the command line's per-example loss (summed over heads;
    under BatchSplit or MultiTask, each head's mean over its examples), or
    compile's loss on each head's rows."""
    if isinstance(logits, dict):
      return tf.add_n([self._loss(value, labels[name] if isinstance(
          labels, dict) else labels) for name, value in logits.items()])
    num_labels = int(logits.shape[-1])
    builtin = self._loss_fn is None or _is_builtin_loss(self._loss_fn,
                                                        num_labels)
    if self.active_setup().split is None:
      if not builtin:
        return self._loss_fn(labels, logits)
      return tf.reduce_mean(per_example_loss(logits, labels, num_labels,
                                             num_labels == 1))
    first = tf.reshape(logits, [tf.shape(logits)[0], -1])[:, 0]
    mine = tf.logical_not(tf.math.is_nan(first))  # This head's rows.
    if not builtin:
      return self._loss_fn(tf.boolean_mask(labels, mine),
                           tf.boolean_mask(logits, mine))
    where = tf.reshape(mine, [-1] + [1] * (logits.shape.rank - 1))
    losses = per_example_loss(tf.where(where, logits, 0.0), labels,
                              num_labels, num_labels == 1)
    count = tf.reduce_sum(tf.cast(mine, tf.float32))
    return tf.math.divide_no_nan(
        tf.reduce_sum(tf.where(mine, losses, 0.0)), count)

  def train_step(self, data):
    features, labels = _split_features(data)
    if labels is None:
      raise UserError("fit needs labels: (features, labels) pairs or "
                      "features with label_ids")
    step = tf.cast(self.optimizer.iterations, tf.int64)
    seed = tf.stack([tf.constant(self._fit_seed, tf.int64), step])
    variables = self.trainable_variables
    inputs = model_inputs(features)

    def loss_and_grads(skip_layers=None):
      setup = None
      if skip_layers is not None:
        setup = dataclasses.replace(self.active_setup(),
                                    skip_layers=skip_layers)
      with tf.GradientTape() as tape:
        logits = self(inputs, training=True, dropout_seed=seed,
                      policy=self._keras_policy(), setup=setup)
        loss = self._loss(logits, labels)
        if self.fusions:
          loss += self.fusion_regularization_loss()
      return loss, tape.gradient(loss, variables), logits

    if getattr(self, "_adapter_drop", False):
      layers = self.config.num_hidden_layers
      loss, grads, present, logits = adapter_drop.switch(
          adapter_drop.layers_to_skip(self._fit_seed, step, layers), layers,
          loss_and_grads, variables)
      if hasattr(self.optimizer, "set_present"):
        self.optimizer.set_present(variables, present)
      self.optimizer.apply_gradients(zip(grads, variables))
      if hasattr(self.optimizer, "set_present"):
        self.optimizer.set_present(variables, None)
      return self._metrics_result(loss, labels, logits)
    loss, grads, logits = loss_and_grads()
    self.optimizer.apply_gradients(zip(grads, variables))
    return self._metrics_result(loss, labels, logits)

  def test_step(self, data):
    features, labels = _split_features(data)
    logits = self(model_inputs(features), training=False,
                  policy=self._keras_policy())
    loss = self._loss(logits, labels)
    return self._metrics_result(loss, labels, logits)

  def predict_step(self, data):
    features, _ = _split_features(data)
    return self(model_inputs(features), training=False,
                policy=self._keras_policy())

  def _metrics_result(self, loss, labels, logits):
    for metric in self.metrics:
      if metric.name == "loss":
        metric.update_state(loss)
      else:
        metric.update_state(labels, logits)
    return {m.name: m.result() for m in self.metrics}

  def predict(self, x, batch_size=None, **kwargs):
    """Keras predict; a bare feature dict or (features, labels) works too,
    and raw text: a list of strings, or a pair (texts_a, texts_b), through
    `preprocessor`."""
    if preprocessor_lib.is_raw_text(x):
      x = self._text_features(x)
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], dict):
      x = x[0]
    if isinstance(x, dict):
      x = model_inputs(x)
    return super().predict(x, batch_size=batch_size, **kwargs)

  def fit(self, x=None, y=None, **kwargs):
    """Keras fit; x may also be raw text (see `predict`) with labels y."""
    if preprocessor_lib.is_raw_text(x):
      x = self._text_features(x)
    return super().fit(x, y, **kwargs)

  def evaluate(self, x=None, y=None, **kwargs):
    """Keras evaluate; x may also be raw text (see `predict`) with labels y."""
    if preprocessor_lib.is_raw_text(x):
      x = self._text_features(x)
    return super().evaluate(x, y, **kwargs)

  # ------------------------------------------------------------ adapter I/O

  def save_adapter(self, directory, name, with_head=True, metadata=None,
                   format="toolkit"):  # pylint: disable=redefined-builtin
    """Writes adapter `name` (and its head) as an adapter directory.

    format "toolkit": the format of the command line's `output_dir/adapter`:
    the variables under the reference's TF1 names, the adapter config and
    metadata with the base fingerprint. format "adapterhub": AdapterHub's
    layout (storage.adapterhub.save), which its `load_adapter` reads.

    Raises:
      UserError: for an unknown adapter.
    """
    self._check_adapter(name)
    if self.merged_adapters:
      raise UserError("adapter %r is merged into the base weights; "
                      "reset_adapter() before saving adapters"
                      % self.merged_adapters[0])
    if format == "adapterhub":
      return adapterhub.save(self, directory, name, with_head=with_head,
                             model_name=getattr(self, "base_name", None))
    if format != "toolkit":
      raise UserError("save_adapter format %r is not one of toolkit, "
                      "adapterhub" % (format,))
    view = self.adapter_view(name)
    if not with_head:
      view = ModelView(self, composition.Branch(view.branch.adapters,
                                                view.branch.layer_norms, None))
    trainable = view.trainable_names("adapters")
    return adapter_io.save_adapter(
        view, trainable, directory, adapter_config=self.adapter_configs[name],
        run_config=dict(metadata or {}, train_mode="adapters"),
        bert_config=self.config, processor=_NamedTask(name, metadata),
        init_checkpoint=getattr(self, "init_checkpoint", None),
        adapter_name=name)

  def save_all_adapters(self, directory):
    """Writes every adapter (with its head) to `directory/<name>`.

    Returns:
      {name: directory written}.
    """
    return {name: self.save_adapter(os.path.join(directory, name), name)
            for name in self.adapter_configs}

  def load_adapter(self, directory, load_as=None, with_head=True,
                   set_active=False, flag_name="adapter"):
    """Loads an adapter directory (and its head) under a name: this
    toolkit's, or one written by AdapterHub's save_adapter (see
    storage.adapterhub).

    Args:
      directory: written by `save_adapter` or the command line
        (`output_dir/adapter`).
      load_as: the name to use (default: the name it was saved under).
      with_head: also load its head (named like the adapter).
      set_active: make it the active adapter.

    Returns:
      The name it was loaded under.

    Raises:
      UserError: for a directory of another base (fingerprint), another BERT
        config, a broken directory or a name taken. Nothing changes then.
    """
    if adapterhub.is_adapterhub_dir(directory):  # AdapterHub's save_adapter.
      return adapterhub.load(self, directory, load_as, with_head, set_active)
    metadata, adapter_config, _ = adapter_io.read_metadata(directory,
                                                           flag_name)
    name = (load_as or metadata.get("adapter_name") or metadata.get("task_name")
            or os.path.basename(os.path.normpath(directory)))
    if name in self.adapter_configs:
      raise UserError("an adapter named %r exists already; load it with "
                      "load_as=..." % name)
    if with_head and name in self.heads:
      raise UserError("a head named %r exists already; load the adapter "
                      "with load_as=..." % name)
    adapter_io.check_base_config(self.config, directory, metadata, flag_name)
    base = self.view(composition.Branch()).checkpoint_variables()
    shared = sorted(n for n in metadata["variables"]
                    if n in base and base[n][1] == BASE)
    if shared:
      raise UserError(
          "--%s=%s changes base weights shared by every task and adapter "
          "(e.g. %s; train_mode=%s); it cannot share a base"
          % (flag_name, directory, shared[0], metadata.get("train_mode")))
    has_head = any(checkpoint_io.is_head_name(n)
                   for n in metadata["variables"])
    self.add_adapter(name, adapter_config)
    added_head = False
    try:
      if with_head and has_head:
        head_config = metadata.get("head_config")
        self.add_head_from_config(name, int(metadata["num_labels"]),
                                  head_config)
        added_head = True
      view = self.adapter_view(name, head=name if added_head else None)
      adapter_io.load_adapter(view, directory, flag_name=flag_name,
                              init_checkpoint=getattr(self, "init_checkpoint",
                                                      None),
                              skip_head=not added_head)
    except BaseException:
      if added_head:
        self.delete_head(name)
      self.delete_adapter(name)
      raise
    if set_active:
      self.set_active_adapters(name)
    return name

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(),
                adapters=[[n, c.to_dict()] for n, c in
                          self.adapter_configs.items()],
                heads=[[n, h.num_labels] for n, h in self.heads.items()],
                classifier_dropout=self.classifier_dropout)
    return base


class _NamedTask:
  """What an adapter directory records of the task, for the Python API."""

  def __init__(self, name, metadata):
    metadata = metadata or {}
    self.name = metadata.get("task_name", name)
    self.is_regression = bool(metadata.get("is_regression", False))
    self._labels = metadata.get("label_list")

  def get_labels(self):
    return self._labels


def _base_lower_case(path, init_checkpoint):
  """Whether a base's text is lower-cased: a Hugging Face directory's
  tokenizer_config.json, else the base's name; uncased when neither says."""
  config = os.path.join(path, "tokenizer_config.json") if os.path.isdir(
      path) else None
  if config and os.path.isfile(config):
    try:
      with open(config, encoding="utf-8") as f:
        value = json.load(f).get("do_lower_case")
    except (OSError, ValueError) as e:
      raise UserError("cannot read %s: %s" % (config, e)) from None
    if isinstance(value, bool):
      return value
  for name in (init_checkpoint, path):
    casing = tokenization.casing_of_checkpoint(name)
    if casing is not None:
      return casing == "uncased"
  return True


def _as_loss(loss):
  """compile's loss: None (the built-in) or a callable(labels, logits)."""
  if loss is None:
    return None
  try:
    fn = keras.losses.get(loss)
  except (ValueError, TypeError) as e:
    raise UserError("compile(loss=%r): %s" % (loss, e)) from None
  if fn is None or not callable(fn):
    raise UserError("compile(loss=%r): not a Keras loss" % (loss,))
  return fn


def _is_builtin_loss(loss, num_labels):
  """Whether a Keras loss object is the built-in loss of a head with
  `num_labels` outputs (see BertAdapterModel.compile)."""
  if type(loss) not in (keras.losses.SparseCategoricalCrossentropy,
                        keras.losses.MeanSquaredError):
    return False
  config = loss.get_config()
  if config.get("reduction") != "sum_over_batch_size":
    return False
  if isinstance(loss, keras.losses.MeanSquaredError):
    return num_labels == 1
  return (num_labels > 1 and config.get("from_logits") is True
          and config.get("ignore_class") is None)


def _check_name(name, what):
  if not isinstance(name, str) or not name or "/" in name:
    raise UserError("%s name must be a non-empty string without '/', got %r"
                    % (what, name))


def BertClassifier(config, num_labels, adapter_config=None,  # pylint: disable=invalid-name
                   classifier_dropout=CLASSIFIER_DROPOUT, adapter_name="default",
                   **kwargs):
  """The reference toolkit's model: one adapter and one head, active.

  A BertAdapterModel holding adapter `adapter_name` (none when
  `adapter_config` is None or of size 0) and a head of that name with
  `num_labels` outputs; variables are created in the order of the
  reference's model.
  """
  config = _as_bert_config(config)
  if isinstance(adapter_config, dict):
    adapter_config = adapters_lib.config_from_dict(adapter_config)
  enabled = adapter_config is not None and getattr(adapter_config, "enabled",
                                                   True)
  return BertAdapterModel(
      config, adapters=[(adapter_name, adapter_config)] if enabled else None,
      heads=[(adapter_name, num_labels)],
      classifier_dropout=classifier_dropout, **kwargs)


def set_train_mode(model, train_mode):
  """Marks each variable of `model` trainable or frozen for `train_mode`.

  adapters: the active adapter, the LayerNorms it uses (every LayerNorm, the
  embeddings' too, for the reference adapter) and the head; full:
  everything (original BERT fine-tuning); head: the head only.

  Returns:
    The list of (checkpoint_name, variable) that are trainable.
  """
  return model.set_train_mode(train_mode)


def trainable_names(model, train_mode):
  """The checkpoint names of the active view trained in `train_mode`."""
  view = model if isinstance(model, ModelView) else model.view()
  return view.trainable_names(train_mode)


def checkpoint_name_map(model):
  """{checkpoint name: variable} of a model's active view (or of a view)."""
  return model.checkpoint_name_map()
