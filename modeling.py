"""BERT with adapters as Keras 3 layers.

The numbers are those of google-research/bert `modeling.py` with the adapter
insertions of google-research/adapter-bert: tanh-approximated GELU, additive
-10000 attention mask, LayerNorm epsilon 1e-12, the encoder working on
[batch * seq, hidden] matrices, and a classifier head with `output_weights`
[num_labels, hidden] so logits = pooled · Wᵀ + b.

Variable names follow Keras; their checkpoint names (the interface with
Google's checkpoints) are defined once, in `checkpoint_io.checkpoint_name_map`.
"""

import copy
import json
import math

from compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
from absl import logging
import keras
import tensorflow as tf

from compute.activations import ACTIVATIONS
from compute.activations import get_activation
import adapters as adapters_lib
from training.errors import UserError
from compute import kernels

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


def _as_adapter_config(adapter_config):
  """An AdapterConfig from None (no adapters), a dict or an AdapterConfig."""
  if adapter_config is None:
    return adapters_lib.AdapterConfig(size=0)
  if isinstance(adapter_config, dict):
    return adapters_lib.AdapterConfig.from_dict(adapter_config)
  return adapter_config


def _initializer(config):
  return keras.initializers.TruncatedNormal(stddev=config.initializer_range)


@keras.saving.register_keras_serializable(package="adapter_bert")
class LayerNorm(keras.layers.LayerNormalization):
  """keras.layers.LayerNormalization over the last axis, optionally of a sum.

  Same variables (`gamma`, `beta`) and numbers as the Keras layer; `call(x,
  residual)` normalizes x + residual in one fused kernel.
  """

  def call(self, inputs, residual=None, training=False):
    gamma = tf.convert_to_tensor(self.gamma)
    beta = tf.convert_to_tensor(self.beta)
    if not kernels.fused_kernels_enabled():
      outputs, _, _ = kernels.ln_forward(inputs, residual, gamma, beta,
                                         self.epsilon)
    elif training:
      outputs = kernels.fused_layer_norm(inputs, residual, gamma, beta,
                                         self.epsilon)
    elif kernels.onednn_kernels_enabled():
      outputs = kernels.onednn_layer_norm(inputs, residual, gamma, beta,
                                          self.epsilon)
    else:
      outputs = kernels.layer_norm_inference_xla(inputs, residual, gamma,
                                                 beta, self.epsilon)
    return tf.cast(outputs, self.compute_dtype)


def _dense(layer, x):
  """x · kernel + bias of a keras Dense `layer` (see kernels.dense)."""
  return kernels.dense(x, layer.kernel, layer.bias)


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


def _layer_norm(name):
  # Statistics always in float32 (mixed precision keeps LayerNorm in float32).
  return LayerNorm(axis=-1, epsilon=LAYER_NORM_EPSILON, name=name,
                   dtype="float32")


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertEmbeddings(keras.layers.Layer):
  """Word + token-type + position embeddings, then LayerNorm and dropout."""

  def __init__(self, config, **kwargs):
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

  def call(self, input_ids, segment_ids, training=False, seed=None):
    # input_ids, segment_ids: [batch, seq]
    seq_length = tf.shape(input_ids)[1]
    output = tf.gather(self.word_embeddings, input_ids)  # [batch, seq, H]
    output += tf.gather(self.token_type_embeddings, segment_ids)
    # The original's last addition, done by the LayerNorm kernel (as the
    # layers' residual sums are), so that one compiled LayerNorm serves all.
    positions = tf.broadcast_to(
        self.position_embeddings[tf.newaxis, :seq_length, :],
        tf.shape(output))  # [batch, seq, H]
    output = self.layer_norm(output, residual=positions, training=training)
    output = kernels.dropout(output, self.config.hidden_dropout_prob, training,
                             seed)
    return tf.cast(output, self.compute_dtype)

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    return base


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertSelfAttention(keras.layers.Layer):
  """Multi-head self-attention with [H, H] query/key/value kernels.

  Works on [batch * seq, H] matrices as the original; returns the context
  before the output projection.
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

  def _split_heads(self, x, batch, seq, parts):
    """[batch * seq, parts * H] -> `parts` tensors [batch, heads, seq, size]."""
    x = tf.reshape(x, [batch, seq, parts, self.num_heads, self.head_size])
    x = tf.transpose(x, [2, 0, 3, 1, 4])  # [parts, batch, heads, seq, size]
    # unstack, not x[i]: the gradient of a slice is a zero-filled copy of
    # the whole tensor per slice, that of unstack one stack.
    return tf.unstack(x, num=parts, axis=0)

  def _project_heads(self, x, batch, seq, output_range=None):
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
      qkv = kernels.fused_projection(x, kernels_, biases)  # [rows, 3H]
      return self._split_heads(qkv, batch, seq, 3)
    k, v = self._split_heads(
        kernels.fused_projection(x, kernels_[1:], biases[1:]), batch, seq, 2)
    q = kernels.fused_projection(first_positions(x, batch, seq, output_range),
                                 kernels_[:1], biases[:1])
    q, = self._split_heads(q, batch, output_range, 1)
    return q, k, v

  def call(self, x, mask_adder, batch, seq, training=False, seed=None,
           output_range=None):
    """Attention context before the output projection.

    Args:
      x: [batch * seq, H].
      mask_adder: [batch, 1, 1, seq] float32.
      batch, seq: scalar int32 tensors.
      training: python bool.
      seed: optional stateless dropout seed.
      output_range: None (every position attends), or a python int k: only
        the first k positions of each example attend (their rows are the
        same numbers as in the whole computation, dropout masks included).

    Returns:
      [batch * rows, H] with rows = seq, or k with output_range.
    """
    rows = seq if output_range is None else output_range
    q, k, v = self._project_heads(x, batch, seq, output_range)
    # Scaled, masked softmax (float32, also under mixed precision), dropout,
    # times v.
    context = kernels.attention_context(
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
  """One BERT layer with adapter hooks at named locations.

  attention -> output dense -> dropout -> [adapter "attention_output"] ->
  LayerNorm(+input) -> intermediate dense (act) -> output dense -> dropout ->
  [adapter "ffn_output"] -> LayerNorm(+attention output).

  The attention part is pluggable through `attention_cls` (any layer with
  BertSelfAttention's call signature); adapters come from `adapter_config`.
  """

  def __init__(self, config, adapter_config=None, attention_cls=None, **kwargs):
    super().__init__(**kwargs)
    self.config = _as_bert_config(config)
    self.adapter_config = _as_adapter_config(adapter_config)
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
    # "gelu" (the tanh form) gets the fast kernels of `gelu` above.
    self._fast_gelu = str(c.hidden_act).lower() == "gelu"
    # Adapters by location; absent locations have no layer and no variables.
    self.adapters = {}
    if self.adapter_config.enabled:
      for location in self.adapter_config.locations:
        layer = adapters_lib.make_adapter(self.adapter_config,
                                          name="adapter_" + location)
        layer.build((None, h))
        self.adapters[location] = layer
    self.attention_output_dense.build((None, h))
    self.attention_layer_norm.build((None, h))
    self.intermediate_dense.build((None, h))
    self.output_dense.build((None, c.intermediate_size))
    self.output_layer_norm.build((None, h))

  def intermediate(self, x, training=False):
    """The intermediate dense layer and its activation: [rows, H] -> [rows, I]."""
    intermediate = _dense(self.intermediate_dense, x)
    if self._fast_gelu:
      return kernels.gelu(intermediate, training=training)
    return self.intermediate_act(intermediate)

  def adapter_hook(self, location, x, training=False):
    """Applies the adapter at `location` if there is one (identity otherwise)."""
    layer = self.adapters.get(location)
    return x if layer is None else layer(x, training=training)

  def call(self, x, mask_adder, batch, seq, training=False, seed=None,
           output_range=None):
    """One layer: [batch * seq, H] -> [batch * seq, H].

    With output_range k (a python int), only the first k positions of each
    example are computed after the keys and values: the output is
    [batch * k, H], the same numbers as those rows of the whole output
    (dropout masks included). The classifier needs the first ([CLS]) row of
    the last layer only: the rest of that layer is work nobody reads
    (TF Model Garden's `output_range`).
    """
    # x: [batch * seq, H]
    c = self.config
    rows, residual = seq, x
    attention_args = {}
    if output_range is not None:
      rows = output_range
      residual = first_positions(x, batch, seq, output_range)  # [batch * k, H]
      attention_args["output_range"] = output_range
    attention = self.attention(x, mask_adder, batch, seq, training=training,
                               seed=kernels.fold_seed(seed, 0),
                               **attention_args)  # [batch * rows, H]
    attention = _dense(self.attention_output_dense, attention)
    attention = kernels.token_dropout(attention, c.hidden_dropout_prob,
                                      training, kernels.fold_seed(seed, 1),
                                      batch, rows)
    attention = self.adapter_hook("attention_output", attention,
                                  training=training)
    attention = self.attention_layer_norm(attention, residual=residual,
                                          training=training)
    attention = tf.cast(attention, self.compute_dtype)

    intermediate = self.intermediate(attention, training=training)
    output = _dense(self.output_dense, intermediate)
    output = kernels.token_dropout(output, c.hidden_dropout_prob, training,
                                   kernels.fold_seed(seed, 2), batch, rows)
    output = self.adapter_hook("ffn_output", output, training=training)
    output = self.output_layer_norm(output, residual=attention,
                                    training=training)
    return tf.cast(output, self.compute_dtype)  # [batch * rows, H]

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    base["adapter_config"] = self.adapter_config.to_dict()
    return base


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

  def call(self, sequence_output):
    # sequence_output: [batch, seq, H] -> [batch, H]
    return self.dense(sequence_output[:, 0, :])

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    return base


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertModel(keras.layers.Layer):
  """The BERT encoder with adapters: embeddings, L blocks, pooler.

  Call with input_ids, input_mask, segment_ids ([batch, seq] int); returns
  (sequence_output [batch, seq, H], pooled_output [batch, H]).
  """

  def __init__(self, config, adapter_config=None, **kwargs):
    super().__init__(**kwargs)
    self.config = _as_bert_config(config)
    self.adapter_config = _as_adapter_config(adapter_config)
    self.embeddings = BertEmbeddings(self.config, name="embeddings")
    self.blocks = [
        TransformerBlock(self.config, self.adapter_config, name="layer_%d" % i)
        for i in range(self.config.num_hidden_layers)
    ]
    self.pooler = BertPooler(self.config, name="pooler")

  def call(self, input_ids, input_mask, segment_ids, training=False, seed=None,
           output_range=None):
    """Returns (sequence_output, pooled_output).

    output_range: None, or a python int k: the last layer computes the
    first k positions only and sequence_output is [batch, k, H] (the pooled
    output needs k = 1; same numbers as the whole computation).
    """
    shape = tf.shape(input_ids)
    batch, seq = shape[0], shape[1]
    embedded = self.embeddings(input_ids, segment_ids, training=training,
                               seed=kernels.fold_seed(seed, 0))
    # Additive mask: 0 where attended, -10000 where padded. [batch, 1, 1, seq]
    mask = tf.cast(input_mask, tf.float32)[:, tf.newaxis, tf.newaxis, :]
    mask_adder = (1.0 - mask) * MASK_ADDER
    x = tf.reshape(embedded, [batch * seq, self.config.hidden_size])
    last = len(self.blocks) - 1
    for i, block in enumerate(self.blocks):
      block_args = {"output_range": output_range} if (
          i == last and output_range is not None) else {}
      x = block(x, mask_adder, batch, seq, training=training,
                seed=kernels.fold_seed(seed, i + 1), **block_args)
    rows = seq if output_range is None or not self.blocks else output_range
    sequence_output = tf.reshape(x, [batch, rows, self.config.hidden_size])
    pooled_output = self.pooler(sequence_output)
    return sequence_output, pooled_output

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    base["adapter_config"] = self.adapter_config.to_dict()
    return base


@keras.saving.register_keras_serializable(package="adapter_bert")
class ClassifierHead(keras.layers.Layer):
  """Dropout 0.1 on the pooled output, then logits = pooled · Wᵀ + b.

  `output_weights` is [num_labels, H] and `output_bias` [num_labels], as the
  original run_classifier.py. Logits are float32.
  """

  def __init__(self, num_labels, hidden_size, initializer_range=0.02,
               dropout_rate=CLASSIFIER_DROPOUT, **kwargs):
    super().__init__(**kwargs)
    self.dropout_rate = dropout_rate
    self.num_labels = num_labels
    self.hidden_size = hidden_size
    self.initializer_range = initializer_range
    self.output_weights = self.add_weight(
        name="output_weights", shape=(num_labels, hidden_size),
        initializer=keras.initializers.TruncatedNormal(stddev=initializer_range))
    self.output_bias = self.add_weight(
        name="output_bias", shape=(num_labels,), initializer="zeros")

  def call(self, pooled_output, training=False, seed=None):
    # pooled_output: [batch, H] -> logits [batch, num_labels]
    x = kernels.dropout(pooled_output, self.dropout_rate, training, seed)
    x = tf.cast(x, tf.float32)
    logits = tf.matmul(x, tf.cast(self.output_weights, tf.float32),
                       transpose_b=True)
    return logits + tf.cast(self.output_bias, tf.float32)

  def get_config(self):
    base = super().get_config()
    base.update(num_labels=self.num_labels, hidden_size=self.hidden_size,
                initializer_range=self.initializer_range,
                dropout_rate=self.dropout_rate)
    return base


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertClassifier(keras.Model):
  """BERT + adapters + classifier head, for GLUE.

  Call with a dict holding `input_ids`, `input_mask`, `segment_ids`
  ([batch, seq] int32); returns float32 logits [batch, num_labels] (one
  output for regression). `dropout_seed`, an int [2] tensor, makes dropout
  masks a pure function of the seed (reproducible runs and resumes).
  """

  def __init__(self, config, num_labels, adapter_config=None,
               classifier_dropout=CLASSIFIER_DROPOUT, **kwargs):
    super().__init__(**kwargs)
    self.config = _as_bert_config(config)
    self.adapter_config = _as_adapter_config(adapter_config)
    self.num_labels = num_labels
    self.classifier_dropout = classifier_dropout
    self.bert = BertModel(self.config, self.adapter_config, name="bert")
    self.classifier = ClassifierHead(num_labels, self.config.hidden_size,
                                     self.config.initializer_range,
                                     dropout_rate=classifier_dropout,
                                     name="classifier")
    self.built = True

  def encode(self, features, training=False, dropout_seed=None,
             output_range=None):
    """Returns (sequence_output, pooled_output) for a feature dict.

    output_range: see BertModel.call (None: every position's output).
    """
    return self.bert(features["input_ids"], features["input_mask"],
                     features["segment_ids"], training=training,
                     seed=kernels.fold_seed(dropout_seed, 0),
                     output_range=output_range)

  def call(self, features, training=False, dropout_seed=None):
    # Only the [CLS] row of the last layer reaches the pooler.
    _, pooled = self.encode(features, training=training,
                            dropout_seed=dropout_seed, output_range=1)
    return self.classifier(pooled, training=training,
                           seed=kernels.fold_seed(dropout_seed, 1))

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), num_labels=self.num_labels,
                adapter_config=self.adapter_config.to_dict(),
                classifier_dropout=self.classifier_dropout)
    return base


TRAIN_MODES = ("adapters", "full", "head")


def is_trainable_name(checkpoint_name, train_mode):
  """Whether a variable is trained in `train_mode`, decided by its name.

  adapters: adapters + every LayerNorm (embeddings' too) + classifier head;
  full: everything (original BERT fine-tuning); head: the classifier only.
  """
  head = checkpoint_name in ("output_weights", "output_bias")
  if train_mode == "full":
    return True
  if train_mode == "head":
    return head
  if train_mode == "adapters":
    return head or "/adapters/" in checkpoint_name or "LayerNorm" in checkpoint_name
  raise UserError("unknown train_mode %r; expected one of %s"
                  % (train_mode, ", ".join(TRAIN_MODES)))


def set_train_mode(model, train_mode):
  """Marks each variable of `model` trainable or frozen for `train_mode`.

  Returns:
    The list of (checkpoint_name, variable) that are trainable.
  """
  from storage import checkpoint_io  # Avoids a cycle: checkpoint_io imports modeling.
  trainable = []
  for name, variable in checkpoint_io.checkpoint_name_map(model).items():
    variable.trainable = is_trainable_name(name, train_mode)
    if variable.trainable:
      trainable.append((name, variable))
  return trainable
