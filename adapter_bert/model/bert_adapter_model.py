"""`BertAdapterModel`: one frozen base and any number of named adapters and
heads, in AdapterHub's manner, as a Keras model.

The model is its parts: `AdaptersMixin` (adapters, activation,
trainability), `HeadsMixin`, `FusionMixin`, `PersistenceMixin` (bases and
adapter directories) and `KerasTrainingMixin` (compile, fit, predict); this
file holds the construction and the forward pass (with BatchSplit and
MultiTask routing), and the reference's one-adapter `BertClassifier`.
"""

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import keras
import tensorflow as tf

from adapter_bert import adapters as adapters_lib
from adapter_bert.adapters import composition
from adapter_bert.adapters import gating
from adapter_bert.compute import kernels
from adapter_bert.errors import IN_GRAPH_MARK
from adapter_bert.errors import UserError
from adapter_bert.errors import clip_value
from adapter_bert.model.adapter_setup import AdaptersMixin
from adapter_bert.model.bert_model import BertModel
from adapter_bert.model.config import CLASSIFIER_DROPOUT
from adapter_bert.model.config import as_bert_config
from adapter_bert.model.fusion import FusionMixin
from adapter_bert.model.heads import HeadsMixin
from adapter_bert.model.hooks import adapter_items
from adapter_bert.model.hooks import check_name
from adapter_bert.model.keras_training import KerasTrainingMixin
from adapter_bert.model.persistence import PersistenceMixin
from adapter_bert.model.view import INPUT_NAMES
from adapter_bert.model.view import ModelView


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertAdapterModel(AdaptersMixin, HeadsMixin, FusionMixin, PersistenceMixin,
                       KerasTrainingMixin, keras.Model):
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
    self.config = as_bert_config(config)
    self.classifier_dropout = classifier_dropout
    items = adapter_items(adapters)
    for name, _ in items:
      check_name(name, "adapter")
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
      message = ("BatchSplit(batch_sizes=%s) needs batches of %d examples"
                 % (list(setup.batch_sizes), sum(setup.batch_sizes)))
      static = features["input_ids"].shape[0]
      if static is not None and static != sum(setup.batch_sizes):
        raise UserError("%s; this batch has %d" % (message, static))
      # A batch size known only when the graph runs: composition_errors
      # (keras_training) turns the failed assertion into a UserError.
      tf.debugging.assert_equal(tf.reduce_sum(sizes), batch,
                                message=IN_GRAPH_MARK + message)
      order = tf.range(batch)
    else:
      if "task_ids" not in features:
        raise UserError("MultiTask routes each example by its 'task_ids' "
                        "feature (int [batch], 0..%d); the features have "
                        "none" % (n - 1))
      task_ids = tf.cast(features["task_ids"], tf.int32)
      message = "MultiTask: task_ids must be 0..%d (one per element)" % (n - 1)
      if tf.executing_eagerly():
        seen = set(task_ids.numpy().reshape(-1).tolist())
        if not all(0 <= t < n for t in seen):
          raise UserError("%s; got %s" % (message, clip_value(sorted(seen))))
      tf.debugging.assert_less(task_ids, n,
                               message=IN_GRAPH_MARK + message)
      tf.debugging.assert_non_negative(task_ids,
                                       message=IN_GRAPH_MARK + message)
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

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(),
                adapters=[[n, c.to_dict()] for n, c in
                          self.adapter_configs.items()],
                heads=[[n, h.num_labels] for n, h in self.heads.items()],
                classifier_dropout=self.classifier_dropout)
    return base



def BertClassifier(config, num_labels, adapter_config=None,  # pylint: disable=invalid-name
                   classifier_dropout=CLASSIFIER_DROPOUT, adapter_name="default",
                   **kwargs):
  """The reference toolkit's model: one adapter and one head, active.

  A BertAdapterModel holding adapter `adapter_name` (none when
  `adapter_config` is None or of size 0) and a head of that name with
  `num_labels` outputs; variables are created in the order of the
  reference's model.
  """
  config = as_bert_config(config)
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
