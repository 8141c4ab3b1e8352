"""Training, evaluation and prediction loops for BertClassifier.

What TPUEstimator did for the original, in TF2: an XLA-compiled train step,
`iterations_per_loop` steps per host call (a loop inside one tf.function),
checkpoints in the original TF1 layout (model variables by their checkpoint
names, Adam slots as `<name>/adam_m|adam_v`, `global_step`), and resume from
the latest checkpoint when the same command is run again.
"""

import collections
import os
import time

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
from absl import logging
import numpy as np
import tensorflow as tf

from adapter_bert.model import modeling
from adapter_bert.storage import checkpoint_io
from adapter_bert.compute import kernels
from adapter_bert.model import training_step
from adapter_bert.training import distribution
from adapter_bert.training import preemption
from adapter_bert.training import run_config
from adapter_bert.training import summaries
from adapter_bert.errors import UserError

KEEP_CHECKPOINT_MAX = 5
GLOBAL_STEP = "global_step"

# `jit_compile` values: True (XLA where it measurably helps, the default),
# False (no XLA at all) or JIT_ALWAYS (the whole step compiled on any device).
JIT_ALWAYS = "always"


def compiles_whole_step(jit_compile, strategy):
  """Whether the train and eval steps are compiled whole with XLA.

  With jit_compile=True that is the case on GPUs and TPUs but not on a host
  with CPUs only. There the step runs TensorFlow's own kernels and only the
  element-wise chains between the matrix products are XLA-compiled (the fused
  kernels of kernels.py), because on CPU (measured on a 2-core AVX-512
  Xeon, TF 2.21, MiniLM config, batch 32 x 128; see scripts/lab/benchmark.py):
    * XLA:CPU's matrix products ran at 0.5-0.8x the speed of TensorFlow's
      oneDNN kernels (e.g. a 4096^2 GEMM at 30 vs 64 GFLOP/s), and no XLA CPU
      flag of this build changed that (thunk runtime off, multi-threaded
      Eigen, oneDNN/XNNPACK/YNNPACK fusion types);
    * XLA:CPU's stateless random numbers (dropout masks) were ~80x slower
      than TensorFlow's kernel;
    * the adapters train step took 6.1 s whole-step XLA against 4.15 s
      without XLA before the fused kernels, and less since.

  Args:
    jit_compile: True, False or JIT_ALWAYS.
    strategy: the tf.distribute.Strategy the step runs under.

  Returns:
    bool.
  """
  if jit_compile == JIT_ALWAYS:
    return True
  if not jit_compile:
    return False
  return not _cpu_only(strategy)


def kernel_policy(jit_compile, strategy):
  """The kernels of a step: fused unless jit_compile is off; their CPU forms
  where the step runs op by op on CPUs."""
  return kernels.KernelPolicy(
      fused=bool(jit_compile),
      cpu_host=not compiles_whole_step(jit_compile, strategy))


def _cpu_only(strategy):
  """Whether the strategy's replicas all run on CPUs."""
  if isinstance(strategy, (tf.distribute.TPUStrategy,
                           tf.distribute.experimental.TPUStrategy)):
    return False
  try:
    devices = strategy.extended.worker_devices
  except (RuntimeError, NotImplementedError):
    # The default strategy: ops go to the first GPU when there is one.
    return not tf.config.list_logical_devices("GPU")
  return all(tf.DeviceSpec.from_string(d).device_type == "CPU"
             for d in devices)


# What the automatic micro-batch size (`auto_micro_batch_size`) lets the
# activations kept for the backward pass of one training step take on a host
# with CPUs only.
ACTIVATION_BUDGET_BYTES = run_config.ACTIVATION_BUDGET_MIB << 20


def saved_activation_bytes(bert_config, train_mode, batch_size, seq_length):
  """Estimated bytes a training step keeps from its forward pass for backward.

  Per layer and token, in float32: q, k, v and the attention context (4H),
  the inputs of the two adapters (2H), x̂ of the two LayerNorms (2H), the
  GELU input (I) and the softmax output (heads x S); a `full` step also
  keeps the inputs of the dense layers for their weight gradients (3H + I).
  Transient gradients, the weights and the runtime come on top.

  Args:
    bert_config: modeling.BertConfig.
    train_mode: one of modeling.TRAIN_MODES.
    batch_size, seq_length: the step's examples and their padded length.

  Returns:
    int.
  """
  h = bert_config.hidden_size
  per_token = (8 * h + bert_config.intermediate_size
               + bert_config.num_attention_heads * seq_length)
  if train_mode == "full":
    per_token += 3 * h + bert_config.intermediate_size
  return (4 * per_token * batch_size * seq_length
          * bert_config.num_hidden_layers)


def auto_micro_batch_size(bert_config, train_mode, batch_size, seq_length,
                          strategy, budget=ACTIVATION_BUDGET_BYTES):
  """Examples per micro-batch: the whole batch unless memory asks otherwise.

  On a host with CPUs only, a step whose kept activations
  (`saved_activation_bytes`) would exceed `budget` runs its batch in the
  fewest equal micro-batches that fit, one after the other (same numbers:
  see Trainer). Accelerators compile the whole step and keep the batch.

  Args:
    bert_config: modeling.BertConfig.
    train_mode: one of modeling.TRAIN_MODES.
    batch_size: examples per replica and step.
    seq_length: max_seq_length.
    strategy: the tf.distribute.Strategy of the run.
    budget: bytes.

  Returns:
    int in [1, batch_size].
  """
  if not _cpu_only(strategy):
    return batch_size
  need = saved_activation_bytes(bert_config, train_mode, batch_size,
                                seq_length)
  count = min(batch_size, max(1, -(-need // budget)))
  return -(-batch_size // count)


class NonFiniteLossError(UserError):
  """Training produced a NaN or Inf loss."""


# The command line's loss, shared with BertAdapterModel's fit.
per_example_loss = modeling.per_example_loss


class Trainer:
  """Owns the step counter, the compiled steps and checkpoints.

  Create it (and the model and optimizer) inside `strategy.scope()`.
  """

  def __init__(self, model, optimizer, trainable, strategy, output_dir,
               num_labels, is_regression, global_batch_size, seed=0,
               jit_compile=True, loss_scale=None, micro_batch_size=None,
               adapter_drop=False):
    """Args:
      model: modeling.BertClassifier, variables created, base loaded.
      optimizer: optimization.AdamWeightDecay (not yet built).
      trainable: list of (checkpoint_name, variable) to train.
      strategy: the tf.distribute.Strategy the model was built under.
      output_dir: where checkpoints and summaries go.
      num_labels, is_regression: the task's head.
      global_batch_size: training examples per step over all replicas.
      seed: base seed of the dropout masks (mask = f(seed, step, replica)).
      jit_compile: True: XLA where it helps (the whole step on GPU/TPU, the
        element-wise kernels only on CPU, see `compiles_whole_step`);
        JIT_ALWAYS: the whole step on any device; False: no XLA.
      loss_scale: None, or an initial dynamic loss scale (float16 training).
      micro_batch_size: None: each replica's batch in one forward and
        backward pass; else passes over slices of this many examples, one
        after the other, their gradients summed (less activation memory;
        the same dropout masks, so the same numbers up to the order of
        float additions).
      adapter_drop: AdapterDrop's recipe: each step skips the adapters of a
        random number of the lowest layers (see training.adapter_drop).
    """
    self.model = model
    self.optimizer = optimizer
    self.trainable = list(trainable)
    self.strategy = strategy
    self.output_dir = output_dir
    self.num_labels = num_labels
    self.is_regression = is_regression
    self.global_batch_size = global_batch_size
    self.seed = int(seed)
    self.jit_compile = jit_compile
    self.adapter_drop = bool(adapter_drop)
    per_replica = max(1, global_batch_size // strategy.num_replicas_in_sync)
    if micro_batch_size is not None and micro_batch_size < 1:
      raise ValueError("micro_batch_size must be >= 1, got %r"
                       % (micro_batch_size,))
    self.micro_batch_size = min(micro_batch_size or per_replica, per_replica)
    self._num_micro_batches = -(-per_replica // self.micro_batch_size)
    self.global_step = tf.Variable(
        0, dtype=tf.int64, trainable=False, name=GLOBAL_STEP,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.loss_scale = None
    if loss_scale:
      self.loss_scale = tf.Variable(
          float(loss_scale), trainable=False, name="loss_scale",
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.good_steps = tf.Variable(
          0, dtype=tf.int64, trainable=False, name="good_steps",
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    view = model.view() if hasattr(model, "view") else None
    optimizer.build(self.trainable, adapter_names=(
        None if view is None else set(view.adapter_names())))
    self._train_vars = [v for _, v in self.trainable]
    self._step = None  # Built with the loop (from the settings then).
    self._train_loop = None
    self._eval_step = None

  # -------------------------------------------------------------- training

  def _dropout_seed(self, step):
    seed = self._step.dropout_seed(step)
    if self.strategy.num_replicas_in_sync > 1:
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      seed = tf.random.experimental.stateless_fold_in(seed, replica)
    return seed

  def _loss(self, logits, label_ids):
    # Divided by the global batch: summing over replicas (and
    # micro-batches) gives the mean.
    losses = per_example_loss(logits, label_ids, self.num_labels,
                              self.is_regression)
    return tf.reduce_sum(losses) / self.global_batch_size

  def _loss_and_grads(self, features, step, skip_layers=None):
    seed = self._dropout_seed(step)
    if self._num_micro_batches == 1:
      return self._slice_loss_and_grads(features, seed, skip_layers)
    # Micro-batches one after the other: slice i + 1 is cut only once the
    # gradients of slice i exist, so their activations are never alive
    # together. Each slice's dropout seed carries its first example's index:
    # its masks are those the whole batch draws for it.
    batch = tf.shape(features["input_ids"])[0]
    size = self.micro_batch_size
    loss, grads, done = None, None, []
    for i in range(self._num_micro_batches):
      start = tf.minimum(i * size, batch)
      end = tf.minimum(start + size, batch)
      with tf.control_dependencies(done):
        part = {k: v[start:end] for k, v in features.items()}
      part_loss, part_grads = self._slice_loss_and_grads(
          part, kernels.dropout_seed_for_slice(seed, start), skip_layers)
      if loss is None:
        loss, grads = part_loss, part_grads
      else:
        loss += part_loss
        grads = [_add_gradients(g, p) for g, p in zip(grads, part_grads)]
      done = [loss] + [g for g in grads if g is not None]
    return loss, grads

  def _slice_loss_and_grads(self, features, seed, skip_layers=None):
    loss, grads, _ = self._step.loss_and_grads(
        features, features["label_ids"], seed, skip_layers)
    return loss, grads

  def _replica_step(self, features):
    step = self.global_step.read_value()
    # Compiled whole, the forward and backward pass is one XLA cluster; the
    # optimizer update (which may reduce across replicas) runs after it.
    compute = (self._compiled_loss_and_grads if self._whole_step_xla
               else self._loss_and_grads)
    loss, grads, present, _ = self._step.run(
        step, lambda skip: compute(features, step, skip) + ((),))
    if self.loss_scale is not None:
      finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                              for g in grads if g is not None])
      grads = [tf.where(finite, g, tf.zeros_like(g)) if g is not None else None
               for g in grads]
      self._update_loss_scale(finite)
    learning_rate = self.optimizer.apply_gradients(grads, step, present)
    self.global_step.assign_add(1)
    return loss, learning_rate

  def _update_loss_scale(self, finite):
    # Dynamic loss scaling: halve on overflow, double after 2000 good steps.
    good = tf.where(finite, self.good_steps + 1, tf.zeros_like(self.good_steps))
    grow = good >= 2000
    self.good_steps.assign(tf.where(grow, tf.zeros_like(good), good))
    scale = tf.where(finite, tf.where(grow, self.loss_scale * 2.0,
                                      self.loss_scale),
                     tf.maximum(self.loss_scale / 2.0, 1.0))
    self.loss_scale.assign(scale)

  @property
  def policy(self):
    """The kernels this trainer's steps run (kernels.KernelPolicy)."""
    return kernel_policy(self.jit_compile, self.strategy)

  def _build_train_loop(self):
    # The step shared with Keras' fit: forward, loss, gradients, AdapterDrop.
    self._step = training_step.TrainingStep(
        self.model, self._train_vars, self._loss, self.policy,
        seed=self.seed, adapter_drop=self.adapter_drop,
        loss_scale=self.loss_scale)
    self._whole_step_xla = compiles_whole_step(self.jit_compile, self.strategy)
    self._compiled_loss_and_grads = tf.function(
        self._loss_and_grads, jit_compile=True, reduce_retracing=True)
    strategy = self.strategy

    # Set (from another thread) when SIGTERM arrives: the loop stops before
    # its next step.
    self._stop = tf.Variable(False, trainable=False, name="stop_requested")

    @tf.function
    def train_loop(iterator, num_steps):
      losses = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
      learning_rate = tf.constant(0.0)
      for i in tf.range(num_steps):
        if self._stop.read_value():
          break
        loss, learning_rate = strategy.run(self._replica_step,
                                           args=(next(iterator),))
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        learning_rate = strategy.experimental_local_results(learning_rate)[0]
        losses = losses.write(i, loss)
        if not tf.math.is_finite(loss):
          break
      return losses.stack(), learning_rate

    self._train_loop = train_loop

  def train(self, make_dataset, num_train_steps, iterations_per_loop=1000,
            save_checkpoints_steps=1000, log_steps=None, summary_writer=None,
            on_progress=None):
    """Trains from the current global step up to `num_train_steps`.

    Args:
      make_dataset: callable(start_step) -> tf.data.Dataset of global batches
        whose first element is batch `start_step` of the whole run.
      num_train_steps: total steps of the run.
      iterations_per_loop: steps per host call.
      save_checkpoints_steps: checkpoint every this many steps (and at the end).
      log_steps: on CPU/GPU, at most this many steps between progress lines.
      summary_writer: optional tf.summary writer for loss/lr/examples/s.
      on_progress: optional callable(dict) after every host loop.

    Returns:
      dict with `loss` (mean of the last host loop) and `global_step`.

    Raises:
      NonFiniteLossError: on a NaN/Inf loss; the last good checkpoint is kept.
    """
    if self._train_loop is None:
      self._build_train_loop()
    start = int(self.global_step.numpy())
    if start >= num_train_steps:
      logging.info("Training already complete at step %d.", start)
      return {"loss": float("nan"), "global_step": start}
    dataset = distribution.distribute_dataset(self.strategy,
                                              make_dataset(start))
    iterator = iter(dataset)
    watch = preemption.current()
    if watch is not None:
      watch.add_flag(self._stop)
      watch.training = True
    try:
      return self._train_steps(iterator, start, num_train_steps,
                               iterations_per_loop, save_checkpoints_steps,
                               log_steps, summary_writer, on_progress)
    finally:
      if watch is not None:
        watch.training = False
        watch.remove_flag(self._stop)

  def _train_steps(self, iterator, start, num_train_steps, iterations_per_loop,
                   save_checkpoints_steps, log_steps, summary_writer,
                   on_progress):
    """The host loop of `train`; stops early on SIGTERM (see preemption)."""
    is_tpu = isinstance(self.strategy, tf.distribute.TPUStrategy)
    step = start
    saved = None
    last_loss = float("nan")
    t_start = time.time()
    while step < num_train_steps and not bool(self._stop.numpy()):
      n = min(iterations_per_loop, num_train_steps - step,
              save_checkpoints_steps - step % save_checkpoints_steps)
      if log_steps and not is_tpu:
        n = min(n, log_steps)
      t0 = time.time()
      losses, learning_rate = self._train_loop(iterator, tf.constant(n))
      losses = losses.numpy()
      elapsed = time.time() - t0
      bad = np.flatnonzero(~np.isfinite(losses))
      if bad.size:
        bad_step = step + int(bad[0]) + 1
        raise NonFiniteLossError(
            "training stopped: the loss became %s at step %d (learning rate "
            "%.3g); the last good checkpoint %s is kept"
            % (losses[bad[0]], bad_step, float(learning_rate),
               tf.train.latest_checkpoint(self.output_dir) or "(none yet)"))
      n = len(losses)  # Fewer than asked when SIGTERM stopped the loop.
      if not n:
        break
      step += n
      last_loss = float(np.mean(losses))
      examples_per_sec = n * self.global_batch_size / max(elapsed, 1e-9)
      done = step - start
      eta = (time.time() - t_start) / done * (num_train_steps - step)
      info = dict(step=step, num_train_steps=num_train_steps, loss=last_loss,
                  learning_rate=float(learning_rate),
                  examples_per_second=examples_per_sec, eta_seconds=eta)
      logging.info("step %d/%d loss %.4f lr %.3g %.1f examples/s, %s left",
                   step, num_train_steps, last_loss, float(learning_rate),
                   examples_per_sec, _format_duration(eta))
      if summary_writer is not None:
        summaries.write_scalars(summary_writer, step, {
            "loss": last_loss, "learning_rate": float(learning_rate),
            "examples_per_second": examples_per_sec})
      if on_progress is not None:
        on_progress(info)
      if step % save_checkpoints_steps == 0 or step == num_train_steps:
        saved = self.save()
    if bool(self._stop.numpy()):
      if saved is None or not saved.endswith("-%d" % step):
        saved = self.save() if step > start else (
            tf.train.latest_checkpoint(self.output_dir))
      raise preemption.Preempted(
          "terminated (SIGTERM) at step %d of %d; checkpoint %s; rerun the "
          "same command to resume" % (step, num_train_steps,
                                      saved or "(none yet)"))
    return {"loss": last_loss, "global_step": step}

  # ----------------------------------------------------------- checkpoints

  def checkpoint_tensors(self):
    """{name: variable}: model, Adam slots and global_step (original layout)."""
    tensors = collections.OrderedDict(checkpoint_io.checkpoint_name_map(self.model))
    tensors.update(self.optimizer.slot_variables())
    tensors[GLOBAL_STEP] = self.global_step
    if self.loss_scale is not None:
      tensors["loss_scale"] = self.loss_scale
      tensors["loss_scale_good_steps"] = self.good_steps
    return tensors

  def save(self):
    """Writes `model.ckpt-<step>` and updates the `checkpoint` state file.

    The checkpoint files are complete before the state file (written
    atomically) names them, and older checkpoints are deleted only after
    that: a kill at any moment leaves the state file naming a complete
    checkpoint.

    Raises:
      NonFiniteLossError: if a trained weight is NaN or Inf (nothing is
        written; the last good checkpoint stays the latest).
    """
    step = int(self.global_step.numpy())
    bad = [name for name, variable in self.trainable
           if not bool(tf.reduce_all(tf.math.is_finite(
               tf.cast(variable, tf.float32))))]
    if bad:
      raise NonFiniteLossError(
          "training stopped: %d trained weight(s) became NaN or Inf at step "
          "%d, e.g. %s (try a lower --learning_rate); the last good "
          "checkpoint %s is kept" % (
              len(bad), step, bad[0],
              tf.train.latest_checkpoint(self.output_dir) or "(none yet)"))
    prefix = os.path.join(self.output_dir, "model.ckpt-%d" % step)
    tensors = {n: tf.convert_to_tensor(v) for n, v in self.checkpoint_tensors().items()}
    checkpoint_io.remove_stale_temporaries(self.output_dir)
    checkpoint_io.save_checkpoint(prefix, tensors)
    state = tf.train.get_checkpoint_state(self.output_dir)
    previous = list(state.all_model_checkpoint_paths) if state else []
    previous = [p if os.path.isabs(p) or "://" in p
                else os.path.join(self.output_dir, p) for p in previous]
    kept = [p for p in previous if p != prefix][-(KEEP_CHECKPOINT_MAX - 1):] + [prefix]
    checkpoint_io.write_checkpoint_state(self.output_dir, prefix, kept)
    for old in previous:
      if old not in kept:
        for suffix in (".index", ".data-00000-of-00001"):
          # The index first: without it the rest is no checkpoint.
          if tf.io.gfile.exists(old + suffix):
            tf.io.gfile.remove(old + suffix)
        for path in tf.io.gfile.glob(old + ".*"):
          tf.io.gfile.remove(path)
    logging.info("Saved checkpoint %s", prefix)
    return prefix

  def restore_latest(self):
    """Resumes from the newest checkpoint in output_dir that can be read.

    A checkpoint that cannot be read (a truncated or damaged file, a tensor
    of another type) is reported and the next older one is tried; nothing
    is assigned from a checkpoint until all of it was read.

    Returns:
      The restored prefix, or None when output_dir holds no checkpoint.

    Raises:
      UserError: when there are checkpoints but none can be read.
    """
    candidates = checkpoint_candidates(self.output_dir)
    if not candidates:
      return None
    failures = []
    for prefix in candidates:
      try:
        values = self._read_checkpoint(prefix)
      except UserError as e:
        logging.warning("Cannot resume from %s: %s", prefix, e)
        failures.append("%s (%s)" % (os.path.basename(prefix), e))
        continue
      for variable, value in values:
        variable.assign(value)
      if failures:
        logging.warning("Resuming from %s, the newest checkpoint that can be "
                        "read", prefix)
      logging.info("Resumed from %s at step %d", prefix,
                   int(self.global_step.numpy()))
      return prefix
    raise UserError("--output_dir=%s: none of its %d checkpoint(s) can be "
                    "read: %s" % (self.output_dir, len(candidates),
                                  "; ".join(failures)))

  def _read_checkpoint(self, prefix):
    """[(variable, value)] of everything a resume restores from `prefix`."""
    _, model_values, _ = checkpoint_io.read_values(
        self.model, prefix, flag_name="output_dir", require_base=True)
    values = [(variable, value) for _, variable, value in model_values]
    _, reader = checkpoint_io.read_checkpoint(prefix, "output_dir")
    available = reader.get_variable_to_shape_map()
    model_names = checkpoint_io.checkpoint_name_map(self.model)
    for name, variable in self.checkpoint_tensors().items():
      if name in model_names:
        continue
      if name not in available:
        raise UserError("--output_dir=%s: checkpoint %s lacks %s; it was not "
                        "written by this configuration" % (
                            self.output_dir, prefix, name))
      values.append((variable, checkpoint_io.read_tensor(
          reader, prefix, name, variable.dtype, "output_dir")))
    return values

  # ------------------------------------------------------ eval and predict

  def _build_eval_step(self):
    model = self.model

    whole_step_xla = compiles_whole_step(self.jit_compile, self.strategy)

    policy = self.policy

    def forward(features):
      logits = model(features, training=False, policy=policy)
      losses = per_example_loss(logits, features["label_ids"],
                                self.num_labels, self.is_regression)
      return logits, losses

    forward = tf.function(
        forward, jit_compile=whole_step_xla,
        reduce_retracing=True)
    strategy = self.strategy

    @tf.function
    def eval_step(features):
      return strategy.run(forward, args=(features,))

    self._eval_step = eval_step

  def predict(self, dataset):
    """Runs the model over a dataset of global batches.

    Returns:
      dict of numpy arrays concatenated over batches (padding included):
      logits, per_example_loss, batch_mean_loss (one per batch), and every
      feature except the model inputs (label_ids, is_real_example, ...).
      Per-token arrays of batches trimmed to different widths (length
      buckets) are padded to the widest (label_ids with -1, else 0).
    """
    if self._eval_step is None:
      self._build_eval_step()
    outputs = collections.defaultdict(list)
    for features in distribution.distribute_dataset(self.strategy, dataset):
      logits, losses = self._eval_step(features)
      logits = _gather(self.strategy, logits)
      losses = _gather(self.strategy, losses)
      outputs["logits"].append(logits)
      outputs["per_example_loss"].append(losses)
      outputs["batch_mean_loss"].append(np.array([losses.mean()]))
      for key, value in features.items():
        if key in ("input_ids", "input_mask", "segment_ids"):
          continue
        outputs[key].append(_gather(self.strategy, value))
    return {k: _concatenate(v, -1 if k == "label_ids" else 0)
            for k, v in outputs.items()}


def checkpoint_candidates(output_dir):
  """The training checkpoints in output_dir, newest first.

  Those the `checkpoint` state file names, then any other
  `model.ckpt-<step>.index` beside them (a state file that lost track).
  """
  prefixes = []
  try:
    latest = tf.train.latest_checkpoint(output_dir)
    state = tf.train.get_checkpoint_state(output_dir)
  except Exception:  # pylint: disable=broad-except
    # A damaged state file: the checkpoint files themselves still count.
    latest, state = None, None
  named = list(state.all_model_checkpoint_paths) if state else []
  named = [p if os.path.isabs(p) or "://" in p else os.path.join(output_dir, p)
           for p in named]
  for path in tf.io.gfile.glob(os.path.join(output_dir, "model.ckpt-*.index")):
    named.append(path[:-len(".index")])
  if latest:
    named.append(latest)

  def step(prefix):
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1

  for prefix in sorted(set(named), key=step, reverse=True):
    if tf.io.gfile.exists(prefix + ".index"):
      prefixes.append(prefix)
  return prefixes


def _add_gradients(a, b):
  """a + b for gradients that may be None or tf.IndexedSlices (embeddings)."""
  if a is None:
    return b
  if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
    return tf.IndexedSlices(tf.concat([a.values, b.values], axis=0),
                            tf.concat([a.indices, b.indices], axis=0),
                            a.dense_shape)
  return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


def _gather(strategy, value):
  parts = strategy.experimental_local_results(value)
  return np.concatenate([np.asarray(p) for p in parts])


def _format_duration(seconds):
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return "%d:%02d:%02d" % (h, m, s) if h else "%d:%02d" % (m, s)


def _concatenate(arrays, fill):
  """np.concatenate over batches; [batch, width, ...] arrays of different
  widths are first padded to the widest with `fill`."""
  if arrays and arrays[0].ndim >= 2:
    width = max(a.shape[1] for a in arrays)
    arrays = [a if a.shape[1] == width else np.pad(
        a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
        constant_values=fill) for a in arrays]
  return np.concatenate(arrays)
