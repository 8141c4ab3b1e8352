"""Several tasks on one frozen base model.

Adapter tuning leaves the base BERT untouched: every task trained from the
same `--init_checkpoint` shares the embedding tables, all dense kernels and
biases of the encoder, and the pooler. A task owns only its adapters, its
LayerNorms and its classifier head. `MultiTaskModel` holds the shared base
once and one `TaskBranch` per task, so that

  - `add_task(adapter_dir)` loads a task without touching the base (the
    adapter's base fingerprint is checked against the shared weights);
  - `predict(task, features)` runs any one task;
  - `predict_all(features)` runs every task on the same batch in one call
    (one graph): the embedding lookup is done once; then, with
    `stack_tasks=True` (the default), the task-stacked batch
    [tasks * batch * seq, H] goes through each shared dense layer in one
    matmul and each task's adapters and LayerNorms work on its slice (by
    broadcasting and batched products, without splitting the batch), or,
    with `stack_tasks=False`, each task's blocks run side by side.

Every task's hidden states differ from its first LayerNorm on, so the
arithmetic of the encoder is the same for one call as for N calls; what one
call saves is the repeated lookups, per-call overhead and (stacked) small
matmuls. `scripts/benchmark_multitask.py` measures both ways.

The forward pass is that of `modeling.BertModel` / `TransformerBlock` step by
step, with modeling's own layers (attention, dense, LayerNorm, adapters,
classifier head), so each task's outputs equal those of a
`modeling.BertClassifier` holding the same weights.
"""

import collections
import os
import re
import types

from compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
from absl import logging
import numpy as np
import tensorflow as tf

from storage import adapter_io
import adapters as adapters_lib
from storage import checkpoint_io
from compute import kernels
import modeling
from training.errors import UserError


def task_key(name):
  """A signature-friendly key for a task name: "SST-2" -> "sst_2"."""
  key = re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")
  return key or "task"


def outputs_from_logits(logits, is_regression):
  """What run_classifier's test_results.tsv holds: probabilities or score.

  Args:
    logits: float32 [batch, num_labels].
    is_regression: STS-B style single-output task.

  Returns:
    float32 [batch, num_labels] softmax probabilities, or [batch] scores.
  """
  if is_regression:
    return logits[:, 0]
  return tf.nn.softmax(logits, axis=-1)


class TaskBranch(tf.Module):
  """One task's own weights: LayerNorms, adapters and classifier head.

  Attributes:
    task_name: the task's name (unique within a MultiTaskModel).
    metadata: the adapter directory's metadata (or an equivalent dict).
    config: the BertConfig of the base.
    adapter_config: this task's AdapterConfig.
    num_labels: outputs of the head.
    label_list: label strings (None for regression).
    is_regression: whether the head outputs a score.
  """

  def __init__(self, task_name, config, adapter_config, num_labels,
               metadata=None):
    super().__init__(name=task_key(task_name))
    self.task_name = task_name
    # Plain Python values, kept out of TensorFlow's object tracking.
    _untracked(self, "metadata", dict(metadata or {}))
    self.config = config
    self.adapter_config = adapter_config
    self.num_labels = int(num_labels)
    _untracked(self, "label_list", self.metadata.get("label_list"))
    self.is_regression = bool(self.metadata.get("is_regression", False))
    h = config.hidden_size
    # modeling's own LayerNorm settings (epsilon, float32 statistics).
    layer_norm = modeling._layer_norm  # pylint: disable=protected-access
    self.embeddings_layer_norm = layer_norm("LayerNorm")
    self.embeddings_layer_norm.build((None, None, h))
    self.attention_layer_norms = []
    self.output_layer_norms = []
    self.block_adapters = []
    for i in range(config.num_hidden_layers):
      attention_ln = layer_norm("layer_%d_attention_output_LayerNorm" % i)
      output_ln = layer_norm("layer_%d_output_LayerNorm" % i)
      attention_ln.build((None, h))
      output_ln.build((None, h))
      self.attention_layer_norms.append(attention_ln)
      self.output_layer_norms.append(output_ln)
      block = {}
      if adapter_config.enabled:
        for location in adapter_config.locations:
          layer = adapters_lib.make_adapter(
              adapter_config, name="layer_%d_adapter_%s" % (i, location))
          layer.build((None, h))
          block[location] = layer
      self.block_adapters.append(block)
    self.classifier = modeling.ClassifierHead(
        self.num_labels, h, config.initializer_range, name="classifier")

  def adapter_hook(self, layer_index, location, x):
    """The task's adapter at (layer, location), or the identity."""
    layer = self.block_adapters[layer_index].get(location)
    return x if layer is None else layer(x)


class MultiTaskModel(tf.Module):
  """One frozen BERT base shared by several adapter-tuned tasks.

  Build it with the base's BertConfig, load the base with `load_base`, then
  add tasks with `add_task(adapter_dir)`. Features are dicts of int32
  `input_ids`, `input_mask`, `segment_ids` [batch, seq] as in
  `input_pipeline`.
  """

  def __init__(self, bert_config, jit_compile=False, stack_tasks=True,
               name="multitask"):
    """Constructs the shared base (no adapters) with fresh weights.

    Args:
      bert_config: modeling.BertConfig of the base.
      jit_compile: compile the forward passes with XLA.
      stack_tasks: how `predict_all` runs the tasks: True, the shared dense
        layers once on the task-stacked batch [tasks * batch * seq, H];
        False, each task's blocks side by side in the same graph.
      name: module name.
    """
    super().__init__(name=name)
    self.config = bert_config
    self.jit_compile = bool(jit_compile)
    self.stack_tasks = bool(stack_tasks)
    # The shared base: a BertModel without adapters. Its LayerNorms are the
    # base's own values, copied into each new task before its adapter loads.
    self.bert = modeling.BertModel(bert_config, None, name="bert")
    self.branches = []
    self.base_checkpoint = None
    _untracked(self, "_functions", {})

  # -------------------------------------------------------------- loading

  @property
  def task_names(self):
    return [b.task_name for b in self.branches]

  def branch(self, task_name):
    """The TaskBranch named `task_name`.

    Raises:
      UserError: for an unknown task, listing the loaded ones.
    """
    for b in self.branches:
      if b.task_name == task_name:
        return b
    for b in self.branches:  # Case-insensitive, "sst-2" or "sst_2".
      if task_key(b.task_name) == task_key(task_name):
        return b
    raise UserError("unknown task %r; loaded tasks: %s"
                    % (task_name, ", ".join(self.task_names) or "(none)"))

  def load_base(self, init_checkpoint, flag_name="init_checkpoint"):
    """Restores the shared base from a BERT checkpoint (original names).

    Must be called before any task is added.
    """
    if self.branches:
      raise ValueError("load_base must come before add_task")
    checkpoint_io.load_checkpoint(types.SimpleNamespace(bert=self.bert),
                                  init_checkpoint, flag_name=flag_name)
    self.base_checkpoint = init_checkpoint

  def task_view(self, branch):
    """An object that looks like a BertClassifier to checkpoint_io/adapter_io.

    Its variables are the shared base's, except the branch's LayerNorms,
    adapters and head, so `checkpoint_io.checkpoint_name_map(view)` is the
    full name map of this task's model.
    """
    base = self.bert
    emb = base.embeddings
    embeddings = types.SimpleNamespace(
        word_embeddings=emb.word_embeddings,
        token_type_embeddings=emb.token_type_embeddings,
        position_embeddings=emb.position_embeddings,
        layer_norm=branch.embeddings_layer_norm)
    blocks = []
    for i, shared in enumerate(base.blocks):
      blocks.append(types.SimpleNamespace(
          attention=shared.attention,
          attention_output_dense=shared.attention_output_dense,
          adapters=dict(branch.block_adapters[i]),
          attention_layer_norm=branch.attention_layer_norms[i],
          intermediate_dense=shared.intermediate_dense,
          output_dense=shared.output_dense,
          output_layer_norm=branch.output_layer_norms[i]))
    bert = types.SimpleNamespace(embeddings=embeddings, blocks=blocks,
                                 pooler=base.pooler)
    return types.SimpleNamespace(
        bert=bert, classifier=branch.classifier, config=self.config,
        adapter_config=branch.adapter_config, num_labels=branch.num_labels)

  def _shared_names(self):
    """Checkpoint names of the shared (base) variables but the LayerNorms."""
    names = checkpoint_io.checkpoint_name_map(
        types.SimpleNamespace(bert=self.bert))
    return {n for n in names if "LayerNorm" not in n}

  def _new_branch(self, task_name, adapter_config, num_labels, metadata):
    if any(task_key(b.task_name) == task_key(task_name) for b in self.branches):
      raise UserError("task %r is loaded twice; give each adapter its own "
                      "name (NAME=DIR)" % task_name)
    branch = TaskBranch(task_name, self.config, adapter_config, num_labels,
                        metadata)
    # LayerNorms a task did not train are the base's.
    base = self.bert
    pairs = [(branch.embeddings_layer_norm, base.embeddings.layer_norm)]
    for i, shared in enumerate(base.blocks):
      pairs.append((branch.attention_layer_norms[i],
                    shared.attention_layer_norm))
      pairs.append((branch.output_layer_norms[i], shared.output_layer_norm))
    for mine, theirs in pairs:
      mine.gamma.assign(theirs.gamma)
      mine.beta.assign(theirs.beta)
    return branch

  def add_task(self, adapter_dir, task_name=None, flag_name="adapter_dir"):
    """Loads an adapter directory as a new task on the shared base.

    Args:
      adapter_dir: a directory written by `adapter_io.save_adapter`.
      task_name: name to use (default: the task name in its metadata).
      flag_name: the flag to name in errors.

    Returns:
      The new TaskBranch.

    Raises:
      UserError: if the directory is malformed, was trained on another base
        (fingerprint), changes shared weights (train_mode=full), or the name
        is taken.
    """
    metadata, adapter_config, _ = adapter_io.read_metadata(adapter_dir,
                                                           flag_name)
    shared = sorted(self._shared_names() & set(metadata["variables"]))
    if shared:
      raise UserError(
          "--%s=%s changes base weights shared by every task (e.g. %s; "
          "train_mode=%s); it cannot share a base"
          % (flag_name, adapter_dir, shared[0], metadata.get("train_mode")))
    name = task_name or metadata.get("task_name") or os.path.basename(
        os.path.normpath(adapter_dir))
    branch = self._new_branch(name, adapter_config, metadata["num_labels"],
                              metadata)
    adapter_io.load_adapter(self.task_view(branch), adapter_dir,
                            init_checkpoint=self.base_checkpoint,
                            flag_name=flag_name)
    self.branches.append(branch)
    self._functions.clear()
    return branch

  def add_task_from_checkpoint(self, checkpoint, task_name, adapter_config,
                               num_labels, metadata=None,
                               flag_name="checkpoint"):
    """Adds a task from a full model checkpoint (this or the reference layout).

    The task's LayerNorms, adapters and head are read from `checkpoint`; its
    shared weights must equal the loaded base (load the base from the same
    checkpoint for a single-task model).

    Returns:
      The new TaskBranch.
    """
    metadata = dict(metadata or {})
    branch = self._new_branch(task_name, adapter_config, num_labels, metadata)
    view = self.task_view(branch)
    prefix, reader = checkpoint_io.read_checkpoint(checkpoint, flag_name)
    shared = self._shared_names()
    mine, _ = adapter_io.base_fingerprint(
        view, exclude=set(checkpoint_io.checkpoint_name_map(view)) - shared)
    theirs = _checkpoint_fingerprint(reader, view, shared)
    if mine != theirs:
      raise UserError("--%s=%s: its base weights differ from the shared base "
                      "(fingerprint %s, shared %s)"
                      % (flag_name, prefix, theirs[:16], mine[:16]))
    names = [n for n in checkpoint_io.checkpoint_name_map(view)
             if n not in shared]
    checkpoint_io.load_checkpoint(view, prefix, flag_name=flag_name,
                                  require_base=True, names=names)
    self.branches.append(branch)
    self._functions.clear()
    return branch

  # -------------------------------------------------------------- forward

  def _encode(self, branches, features, stack_tasks):
    """Pooled outputs of each branch on the same batch.

    Args:
      branches: the TaskBranches to run.
      features: dict of int32 [batch, seq] model inputs.
      stack_tasks: run the shared dense layers once on the task-stacked
        batch; else each task's blocks separately (in the same graph).

    Returns:
      list of [batch, H] pooled outputs, one per branch.
    """
    input_ids = features["input_ids"]  # [batch, seq]
    input_mask = features["input_mask"]  # [batch, seq]
    segment_ids = features["segment_ids"]  # [batch, seq]
    shape = tf.shape(input_ids)
    batch, seq = shape[0], shape[1]

    # Embeddings as BertEmbeddings.call up to its LayerNorm: the lookups are
    # done once for every task.
    emb = self.bert.embeddings
    summed = tf.gather(emb.word_embeddings, input_ids)  # [batch, seq, H]
    summed += tf.gather(emb.token_type_embeddings, segment_ids)
    summed += emb.position_embeddings[tf.newaxis, :seq, :]
    # Additive mask as BertModel.call.
    mask = tf.cast(input_mask, tf.float32)[:, tf.newaxis, tf.newaxis, :]
    mask_adder = (1.0 - mask) * modeling.MASK_ADDER  # [batch, 1, 1, seq]

    groups = [branches] if stack_tasks else [[b] for b in branches]
    pooled = []
    for group in groups:
      pooled += self._encode_group(group, summed, mask_adder, batch, seq)
    return pooled

  def _encode_group(self, branches, summed, mask_adder, batch, seq):
    """The encoder and pooler for tasks stacked along the batch axis.

    Hidden states are [tasks, batch * seq, H] (task-major): the shared dense
    layers see them as one [tasks * batch * seq, H] matrix, and each task's
    LayerNorms and adapters are applied to its slice by broadcasting its
    parameters ([tasks, 1, H]) and batched products, without splitting and
    re-joining the hidden states.
    """
    base = self.bert
    num_tasks = len(branches)
    hidden = self.config.hidden_size
    rows = batch * num_tasks  # The task-stacked batch: task-major.
    dtype = base.compute_dtype
    summed = tf.reshape(summed, [1, batch * seq, hidden])
    x = _task_layer_norm([b.embeddings_layer_norm for b in branches], summed,
                         None, dtype)  # [tasks, batch * seq, H]
    if num_tasks > 1:
      mask_adder = tf.tile(mask_adder, [num_tasks, 1, 1, 1])
    last = len(base.blocks) - 1
    for i, shared in enumerate(base.blocks):
      # The pooler reads the first ([CLS]) row of the last layer only.
      x = self._block(i, shared, branches, x, mask_adder, rows, seq,
                      output_range=1 if i == last else None)
    sequence_output = tf.reshape(x, [rows, -1, hidden])  # [rows, 1, H]
    pooled = base.pooler(sequence_output)  # [tasks * batch, H]
    return _unstack(pooled, num_tasks)

  def _block(self, index, shared, branches, x, mask_adder, rows, seq,
             output_range=None):
    """TransformerBlock.call (inference) with shared dense layers.

    With output_range k, only the first k positions of each example after
    the keys and values (see TransformerBlock.call).
    """
    # x: [tasks, batch * seq, H]
    dtype = shared.compute_dtype
    hidden = self.config.hidden_size
    n = len(branches)
    # pylint: disable=protected-access
    flat = tf.reshape(x, [-1, hidden])  # [tasks * batch * seq, H]
    attention_args = {}
    if output_range is not None:
      attention_args["output_range"] = output_range
      x = tf.reshape(modeling.first_positions(flat, rows, seq, output_range),
                     [n, -1, hidden])  # [tasks, batch * k, H]
    attention = shared.attention(flat, mask_adder, rows, seq,
                                 **attention_args)
    dense = shared.attention_output_dense
    attention = kernels.dense(attention, dense.kernel, dense.bias)
    attention = _task_adapters(branches, index, "attention_output",
                               tf.reshape(attention, [n, -1, hidden]))
    attention = _task_layer_norm(
        [b.attention_layer_norms[index] for b in branches], attention, x,
        dtype)  # [tasks, batch * seq, H]

    intermediate = shared.intermediate(tf.reshape(attention, [-1, hidden]))
    dense = shared.output_dense
    output = kernels.dense(intermediate, dense.kernel, dense.bias)
    output = _task_adapters(branches, index, "ffn_output",
                            tf.reshape(output, [n, -1, hidden]))
    return _task_layer_norm([b.output_layer_norms[index] for b in branches],
                            output, attention, dtype)

  def _logits(self, branches, features, stack_tasks=None):
    if stack_tasks is None:
      stack_tasks = self.stack_tasks
    pooled = self._encode(branches, features, stack_tasks)
    return [b.classifier(p) for b, p in zip(branches, pooled)]

  def _function(self, task_names, stack_tasks=None):
    """A tf.function computing the logits of `task_names` (cached)."""
    if stack_tasks is None:
      stack_tasks = self.stack_tasks
    key = (tuple(task_names), bool(stack_tasks))
    if key not in self._functions:
      branches = [self.branch(t) for t in task_names]

      def forward(features):
        logits = self._logits(branches, features, stack_tasks)
        return {b.task_name: l for b, l in zip(branches, logits)}

      spec = {k: tf.TensorSpec([None, None], tf.int32, name=k)
              for k in _INPUT_NAMES}
      self._functions[key] = tf.function(
          forward, input_signature=[spec], jit_compile=self.jit_compile,
          autograph=False)
    return self._functions[key]

  def logits(self, task_name, features):
    """float32 [batch, num_labels] logits of one task."""
    branch = self.branch(task_name)
    return self._function([branch.task_name])(_model_inputs(features))[
        branch.task_name]

  def logits_all(self, features, task_names=None, stack_tasks=None):
    """{task: float32 [batch, num_labels] logits} of every task, one call.

    Args:
      features: dict of int [batch, seq] input_ids, input_mask, segment_ids.
      task_names: the tasks to run (default: all, in the order added).
      stack_tasks: override the model's `stack_tasks` for this call.
    """
    names = ([self.branch(t).task_name for t in task_names]
             if task_names is not None else self.task_names)
    if not names:
      raise UserError("no task loaded")
    return dict(self._function(names, stack_tasks)(_model_inputs(features)))

  def predict(self, task_name, features):
    """One task's probabilities [batch, labels] (regression: [batch])."""
    branch = self.branch(task_name)
    return outputs_from_logits(self.logits(task_name, features),
                               branch.is_regression)

  def predict_all(self, features, task_names=None, stack_tasks=None):
    """{task: probabilities (or scores)} of every task on the same batch."""
    logits = self.logits_all(features, task_names, stack_tasks)
    return collections.OrderedDict(
        (name, outputs_from_logits(value, self.branch(name).is_regression))
        for name, value in logits.items())

  def call_graph(self, task_names, features, stack_tasks=None):
    """Logits of `task_names` for use inside another tf.function.

    Returns:
      list of float32 [batch, num_labels], in the order of `task_names`.
    """
    return self._logits([self.branch(t) for t in task_names], features,
                        stack_tasks)


def _untracked(obj, name, value):
  """Sets an attribute that tf.Module / SavedModel tracking ignores."""
  object.__setattr__(obj, name, value)


_INPUT_NAMES = ("input_ids", "input_mask", "segment_ids")


def _model_inputs(features):
  return {k: tf.cast(features[k], tf.int32) for k in _INPUT_NAMES}


def _unstack(value, num_tasks):
  """Splits a task-stacked tensor into its per-task slices."""
  return [value] if num_tasks == 1 else tf.split(value, num_tasks, axis=0)


def _task_layer_norm(layers, x, residual, dtype):
  """Each task's LayerNorm(x + residual) on its slice of the stacked axis.

  Args:
    layers: one modeling.LayerNorm per task.
    x: [tasks or 1, rows, H] (a leading 1 broadcasts over the tasks).
    residual: None or [tasks, rows, H].
    dtype: the output dtype.

  Returns:
    [tasks, rows, H].
  """
  # pylint: disable=protected-access
  gamma = tf.stack([tf.convert_to_tensor(l.gamma) for l in layers])[
      :, tf.newaxis, :]  # [tasks, 1, H]
  beta = tf.stack([tf.convert_to_tensor(l.beta) for l in layers])[
      :, tf.newaxis, :]
  forward = (kernels.layer_norm_inference_xla
             if kernels.fused_kernels_enabled()
             else kernels.layer_norm_inference)
  return tf.cast(forward(x, residual, gamma, beta, layers[0].epsilon), dtype)


def _task_adapters(branches, index, location, x):
  """Each task's adapter at (layer `index`, `location`) on its slice.

  Bottleneck adapters of one size and activation (the usual case) run as
  two batched products over the tasks; anything else runs task by task.

  Args:
    branches: the TaskBranches, in stacking order.
    index: layer index.
    location: adapter location ("attention_output", "ffn_output").
    x: [tasks, rows, H].

  Returns:
    [tasks, rows, H].
  """
  layers = [b.block_adapters[index].get(location) for b in branches]
  if all(l is None for l in layers):
    return x
  uniform = all(type(l) is adapters_lib.BottleneckAdapter for l in layers) and (
      len({(l.adapter_size, l.activation) for l in layers}) == 1)
  if not uniform:
    return tf.stack([b.adapter_hook(index, location, part) for b, part in
                     zip(branches, tf.unstack(x, len(branches)))])
  dtype = x.dtype

  def stacked(name):
    return tf.stack([tf.cast(getattr(l, name), dtype) for l in layers])

  h = tf.matmul(x, stacked("weights1")) + stacked("biases1")  # [tasks, rows, m]
  h = layers[0]._act(h)  # pylint: disable=protected-access
  return tf.matmul(h, stacked("weights2")) + stacked("biases2") + x


def _checkpoint_fingerprint(reader, view, names):
  """adapter_io.base_fingerprint of the `names` entries of a checkpoint."""
  name_map = checkpoint_io.checkpoint_name_map(view)
  available = reader.get_variable_to_shape_map()
  missing = sorted(n for n in names if n not in available)
  if missing:
    raise UserError("checkpoint lacks %d base variable(s), e.g. %s"
                    % (len(missing), ", ".join(missing[:3])))
  return adapter_io.fingerprint_values(
      (n, lambda n=n: reader.get_tensor(n).astype(np.dtype(name_map[n].dtype)))
      for n in names)[0]


def build_from_adapter_dirs(bert_config, init_checkpoint, adapter_dirs,
                            jit_compile=False, stack_tasks=True):
  """A MultiTaskModel with the base from `init_checkpoint` and N tasks.

  Args:
    bert_config: modeling.BertConfig of the base.
    init_checkpoint: the base checkpoint the adapters were trained on.
    adapter_dirs: list of adapter directories, or of (name, directory).
    jit_compile: compile the forward passes with XLA.
    stack_tasks: see MultiTaskModel.

  Returns:
    The MultiTaskModel.
  """
  model = MultiTaskModel(bert_config, jit_compile=jit_compile,
                         stack_tasks=stack_tasks)
  model.load_base(init_checkpoint)
  for item in adapter_dirs:
    name, directory = item if isinstance(item, (tuple, list)) else (None, item)
    model.add_task(directory, task_name=name)
  logging.info("Multi-task model: %d task(s) on %s: %s", len(model.branches),
               init_checkpoint, ", ".join(model.task_names))
  return model
