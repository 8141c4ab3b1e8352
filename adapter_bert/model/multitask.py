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
matmuls. `scripts/lab/benchmark_multitask.py` measures both ways.

There is no forward pass of its own: every task is an adapter and a head of
one `modeling.BertAdapterModel`, and `predict_all` runs that model's forward
pass with `Parallel(task, ...)` active, so each task's outputs equal those of
a `modeling.BertClassifier` holding the same weights.
"""

import collections
import os
import re

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
from absl import logging
import numpy as np
import tensorflow as tf

from adapter_bert.adapters import composition
from adapter_bert.adapters import registry
from adapter_bert.model import modeling
from adapter_bert.model import adapter_io
from adapter_bert.storage import checkpoint_io
from adapter_bert.errors import UserError


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


class TaskBranch:
  """What MultiTaskModel knows of one task (its weights are the model's).

  Attributes:
    task_name: the task's name (unique within a MultiTaskModel).
    adapter_name: the name of its adapter and head in the model.
    metadata: the adapter directory's metadata (or an equivalent dict).
    adapter_config: the task's adapter config.
    num_labels: outputs of the head.
    label_list: label strings (None for regression).
    is_regression: whether the head outputs a score.
  """

  def __init__(self, task_name, adapter_name, adapter_config, num_labels,
               metadata=None):
    self.task_name = task_name
    self.adapter_name = adapter_name
    self.metadata = dict(metadata or {})
    self.adapter_config = adapter_config
    self.num_labels = int(num_labels)
    self.label_list = self.metadata.get("label_list")
    self.is_regression = bool(self.metadata.get("is_regression", False))


class MultiTaskModel(tf.Module):
  """One frozen BERT base shared by several adapter-tuned tasks.

  Build it with the base's BertConfig, load the base with `load_base`, then
  add tasks with `add_task(adapter_dir)`. Each task is an adapter and a head
  of one `modeling.BertAdapterModel` (`self.model`), named like the task;
  `predict_all` runs them side by side as `Parallel(...)`. Features are
  dicts of int32 `input_ids`, `input_mask`, `segment_ids` [batch, seq] as
  in `input_pipeline`.
  """

  def __init__(self, bert_config, jit_compile=False, stack_tasks=True,
               name="multitask"):
    """Constructs the shared base (no adapters) with fresh weights.

    Args:
      bert_config: modeling.BertConfig of the base.
      jit_compile: compile the forward passes with XLA.
      stack_tasks: how `predict_all` runs the tasks: True, Parallel (the
        shared dense layers once on the task-stacked batch); False, each
        task's own forward pass side by side in the same graph.
      name: module name.
    """
    super().__init__(name=name)
    self.config = bert_config
    self.jit_compile = bool(jit_compile)
    self.stack_tasks = bool(stack_tasks)
    self.model = modeling.BertAdapterModel(bert_config, name="bert_adapters")
    _untracked(self, "branches", [])
    self.base_checkpoint = None
    _untracked(self, "_functions", {})

  @property
  def bert(self):
    return self.model.bert

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
    self.model.load_base_checkpoint(init_checkpoint, flag_name=flag_name)
    self.model.init_checkpoint = init_checkpoint
    self.base_checkpoint = init_checkpoint

  def task_view(self, branch):
    """The task's modeling.ModelView: the shared base with its adapter,
    LayerNorms and head, under the reference's checkpoint names."""
    return self.model.adapter_view(branch.adapter_name)

  def _shared_names(self):
    """Checkpoint names of the shared (base) variables but the LayerNorms."""
    view = self.model.view(composition.Branch())
    return {n for n, (_, tag) in view.checkpoint_variables().items()
            if tag == modeling.BASE}

  def _check_new(self, task_name):
    if any(task_key(b.task_name) == task_key(task_name) for b in self.branches):
      raise UserError("task %r is loaded twice; give each adapter its own "
                      "name (NAME=DIR)" % task_name)

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
    name = task_name or metadata.get("task_name") or os.path.basename(
        os.path.normpath(adapter_dir))
    self._check_new(name)
    self.model.load_adapter(adapter_dir, load_as=name, flag_name=flag_name)
    branch = TaskBranch(name, name, adapter_config, metadata["num_labels"],
                        metadata)
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
    self._check_new(task_name)
    prefix, reader = checkpoint_io.read_checkpoint(checkpoint, flag_name)
    model = self.model
    model.add_adapter(task_name, adapter_config)
    model.add_classification_head(task_name, num_labels)
    try:
      view = model.adapter_view(task_name)
      shared = self._shared_names()
      own = [n for n in checkpoint_io.checkpoint_name_map(view)
             if n not in shared]
      mine, _ = adapter_io.base_fingerprint(view, exclude=own)
      theirs = _checkpoint_fingerprint(reader, view, shared)
      if mine != theirs:
        raise UserError("--%s=%s: its base weights differ from the shared "
                        "base (fingerprint %s, shared %s)"
                        % (flag_name, prefix, theirs[:16], mine[:16]))
      checkpoint_io.load_checkpoint(view, prefix, flag_name=flag_name,
                                    require_base=True, names=own)
    except BaseException:
      model.delete_head(task_name)
      model.delete_adapter(task_name)
      raise
    branch = TaskBranch(task_name, task_name, adapter_config, num_labels,
                        metadata)
    self.branches.append(branch)
    self._functions.clear()
    return branch

  # -------------------------------------------------------------- forward

  def _logits(self, branches, features, stack_tasks=None):
    """Logits of each branch on the same batch, in one graph.

    Stacked: one forward pass of `Parallel(tasks)`; else each task's own
    forward pass side by side.
    """
    if stack_tasks is None:
      stack_tasks = self.stack_tasks
    names = [b.adapter_name for b in branches]
    # Prefixes, prompts and layer attention cannot run in one Parallel pass:
    # then each task runs its own, in the same graph.
    stack_tasks = stack_tasks and all(
        registry.runs_side_by_side(self.model.hook_points(n)) for n in names)
    if stack_tasks and len(names) > 1:
      setup = self.model.resolve_setup(composition.Parallel(*names))
      logits = self.model(features, setup=setup)
      return [logits[n] for n in names]
    return [self.model(features, setup=self.model.resolve_setup(n))
            for n in names]

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


_INPUT_NAMES = modeling.INPUT_NAMES


def _model_inputs(features):
  return {k: tf.cast(features[k], tf.int32) for k in _INPUT_NAMES}


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
