"""Task heads: the classification and tagging head layer, and the model's
head management (`HeadsMixin`: add, delete, activate).
"""

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import keras
import tensorflow as tf

from adapter_bert.compute import kernels
from adapter_bert.compute.activations import get_activation
from adapter_bert.errors import UserError
from adapter_bert.model.config import CLASSIFIER_DROPOUT
from adapter_bert.model.hooks import check_name
from adapter_bert.model.hooks import unlocked


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




class HeadsMixin:
  """The model's heads: add (classification, tagging, from a saved config),
  delete, and the active head.

  Reads and keeps: `config`, `heads` ({name: ClassifierHead}),
  `classifier_dropout`, `_active_head`.
  """

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
    check_name(name, "head")
    if (isinstance(num_labels, bool) or not isinstance(num_labels, int)
        or num_labels < fewest):
      raise UserError("num_labels must be an integer >= %d, got %r"
                      % (fewest, num_labels))
    if name in self.heads and not overwrite_ok:
      raise UserError("a head named %r exists already" % name)
    with unlocked(self):
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
    with unlocked(self):
      self.heads.pop(name)  # pop, not del: Keras untracks the variables.
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
