"""Keras training (`KerasTrainingMixin`): compile with the command line's
loss and optimizer by default, fit/evaluate/predict steps, raw text in.
"""

import contextlib

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import keras
import tensorflow as tf

from adapter_bert.adapters import composition
from adapter_bert.compute import kernels
from adapter_bert.compute import optimization
from adapter_bert.errors import UserError
from adapter_bert.errors import from_graph_message
from adapter_bert.model import training_step
from adapter_bert.model.view import cpu_only_host
from adapter_bert.model.view import model_inputs
from adapter_bert.model.view import per_example_loss
from adapter_bert.model.view import split_features
from adapter_bert.text import preprocessor as preprocessor_lib


class KerasTrainingMixin:
  """Keras training: `compile` (the command line's loss and optimizer by
  default), the train/test/predict steps, and raw text into fit, evaluate
  and predict.

  Reads and keeps: `config`, `fusions`, `_fit_seed`, `_adapter_drop`,
  `_loss_fn`, the active setup (`active_setup()`).
  """

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
      optimizer.set_checkpoint_names(*self._optimizer_names())
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

  def _optimizer_names(self):
    """({id(variable): checkpoint name} over every adapter's view and head,
    the ids of the adapter methods' variables, fusions' included), read in
    one pass over the views."""
    names, adapter_ids = {}, set()
    views = [self.view(composition.Branch())]
    views += [self.adapter_view(n) for n in self.adapter_configs]
    for view in views:
      for name, (variable, tag) in view.checkpoint_variables().items():
        names.setdefault(id(variable), name)
        if tag.of_adapter_method:
          adapter_ids.add(id(variable))
    for head in self.heads.values():
      for key, variable, _ in head.checkpoint_variables(None):
        names[id(variable)] = key
    for name in self.fusions:
      adapter_ids.update(id(v) for v in self.fusion_variables(name).values())
    return names, adapter_ids

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
    features, labels = split_features(data)
    if labels is None:
      raise UserError("fit needs labels: (features, labels) pairs or "
                      "features with label_ids")
    variables = self.trainable_variables
    step = training_step.TrainingStep(
        self, variables, self._loss_with_regularization,
        self._keras_policy(), seed=self._fit_seed,
        adapter_drop=getattr(self, "_adapter_drop", False))
    loss, grads, present, logits = step(
        model_inputs(features), labels,
        tf.cast(self.optimizer.iterations, tf.int64))
    if present is not None and hasattr(self.optimizer, "set_present"):
      self.optimizer.set_present(variables, present)
    self.optimizer.apply_gradients(zip(grads, variables))
    if present is not None and hasattr(self.optimizer, "set_present"):
      self.optimizer.set_present(variables, None)
    return self._metrics_result(loss, labels, logits)

  def _loss_with_regularization(self, logits, labels):
    loss = self._loss(logits, labels)
    if self.fusions:
      loss += self.fusion_regularization_loss()
    return loss

  def test_step(self, data):
    features, labels = split_features(data)
    logits = self(model_inputs(features), training=False,
                  policy=self._keras_policy())
    loss = self._loss(logits, labels)
    return self._metrics_result(loss, labels, logits)

  def predict_step(self, data):
    features, _ = split_features(data)
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
    with _user_errors_from_graph():
      return super().predict(x, batch_size=batch_size, **kwargs)

  def fit(self, x=None, y=None, *args, **kwargs):
    """Keras fit; x may also be raw text (see `predict`) with labels y."""
    if preprocessor_lib.is_raw_text(x):
      x = self._text_features(x)
    with _user_errors_from_graph():
      return super().fit(x, y, *args, **kwargs)

  def evaluate(self, x=None, y=None, *args, **kwargs):
    """Keras evaluate; x may also be raw text (see `predict`) with labels y."""
    if preprocessor_lib.is_raw_text(x):
      x = self._text_features(x)
    with _user_errors_from_graph():
      return super().evaluate(x, y, *args, **kwargs)


@contextlib.contextmanager
def _user_errors_from_graph():
  """An assertion on the user's input that failed inside a graph (marked
  with errors.IN_GRAPH_MARK) is raised as that UserError."""
  try:
    yield
  except tf.errors.InvalidArgumentError as e:
    error = from_graph_message(e.message)
    if error is None:
      raise
    raise error from None


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
