"""One branch of the model as the reference toolkit's model had it
(`ModelView`: checkpoint names, trainability by tags), the features the model
takes, and the command line's loss.
"""

import collections

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import tensorflow as tf

from adapter_bert import adapters as adapters_lib
from adapter_bert.adapters import composition
from adapter_bert.errors import UserError
from adapter_bert.model.hooks import Tag


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
    """Checkpoint names of the branch's adapter-method variables
    (`Tag.of_adapter_method`): those `adapter_weight_decay_rate` decays."""
    return [name for name, (_, tag) in self.checkpoint_variables().items()
            if tag.of_adapter_method]

  def trainable_names(self, train_mode):
    """Checkpoint names trained in `train_mode`, chosen by the tags.

    adapters: the branch's adapters, the LayerNorm copies of an adapter
    whose method trains them (adapter-bert) and its head; with no adapter at
    all (adapter size 0), the base's LayerNorms and the head, as the
    reference; methods that train no LayerNorm (AdapterHub's) leave them
    frozen. full: everything in the view (original BERT fine-tuning); head:
    the head. A variable its layer declares frozen (`Tag.frozen`) is never
    trained.
    """
    if train_mode not in TRAIN_MODES:
      raise UserError("unknown train_mode %r; expected one of %s"
                      % (train_mode, ", ".join(TRAIN_MODES)))
    names = []
    no_adapters = not self.branch.adapters
    for name, (_, tag) in self.checkpoint_variables().items():
      if tag.frozen:
        continue  # Declared frozen by its layer (VeRA's shared pair).
      if train_mode == "full" or tag.kind == "head":
        names.append(name)
      elif train_mode == "adapters" and tag.kind != "base" and (
          tag.kind != "layer_norm" or tag.owner is not None or no_adapters):
        names.append(name)
    return names


def split_features(data):
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


def fusions_of(block):
  """The fusion names in a composition block (or None)."""
  if block is None:
    return []
  if isinstance(block, composition.Fuse):
    return [block.name]
  out = []
  for child in block.children:
    if isinstance(child, composition.AdapterCompositionBlock):
      out += [n for n in fusions_of(child) if n not in out]
  return out


def cpu_only_host():
  """Whether this process sees no GPU or TPU (the Keras default strategy)."""
  return not (tf.config.list_logical_devices("GPU")
              or tf.config.list_logical_devices("TPU"))
