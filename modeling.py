"""BERT with adapters as Keras 3 layers.

The numbers are those of google-research/bert `modeling.py` with the adapter
insertions of google-research/adapter-bert: tanh-approximated GELU, additive
-10000 attention mask, LayerNorm epsilon 1e-12, the encoder working on
[batch * seq, hidden] matrices, and a classifier head with `output_weights`
[num_labels, hidden] so logits = pooled · Wᵀ + b.

Variable names follow Keras; their checkpoint names (the interface with
Google's checkpoints) are defined once, in `checkpoint_io.checkpoint_name_map`.
"""

import contextlib
import copy
import json
import math

from absl import logging
import keras
import tensorflow as tf

from activations import ACTIVATIONS
from activations import get_activation
import adapters as adapters_lib
from errors import UserError

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


def _fold_seed(seed, salt):
  """Derives an independent stateless seed for one dropout site.

  `seed` is an int [2] stateless seed, or int [3]: the seed and the index of
  the first example of this batch in the whole batch (see
  `dropout_seed_for_slice`); the index is carried along unchanged.
  """
  if seed is None:
    return None
  folded = tf.random.experimental.stateless_fold_in(seed[:2], salt)
  if seed.shape[0] == 3:
    return tf.concat([folded, tf.cast(seed[2:], folded.dtype)], axis=0)
  return folded


def dropout_seed_for_slice(seed, first_example):
  """The dropout seed of a slice of a batch that starts at `first_example`.

  A model called on examples [a, b) of a batch with this seed draws the same
  dropout masks for them as the call on the whole batch with `seed`: a
  batch can be run in micro-batches without changing a number.

  Args:
    seed: int [2] stateless seed of the whole batch.
    first_example: int scalar, index of the slice's first example.

  Returns:
    int64 [3].
  """
  seed = tf.cast(seed, tf.int64)
  return tf.concat([seed[:2], tf.reshape(tf.cast(first_example, tf.int64),
                                         [1])], axis=0)


# ---------------------------------------------------------------------------
# Fused element-wise kernels.
#
# The matrix products are TensorFlow's own (oneDNN) kernels, and each chain of
# element-wise ops between two of them (GELU, residual + LayerNorm, dropout,
# the softmax gradient) is one small XLA-compiled function with a hand-written
# gradient that is compiled too. Measured on a 2-core AVX-512 CPU (TF 2.21;
# see training.compiles_whole_step and scripts/benchmark.py):
#   * XLA:CPU's matrix products ran at 0.5-0.8x the speed of the oneDNN ones,
#     so a whole-step XLA cluster is slower on CPU;
#   * op by op, each element-wise op is one pass over memory: GELU forward
#     and backward took 2x, LayerNorm 2.3x the CPU time of the same chain
#     compiled by XLA;
#   * the hand-written gradients keep only what the backward pass needs (the
#     GELU input, x̂ of the LayerNorms, the softmax output; dropout masks are
#     drawn again from their seed), which cuts a training step's activation
#     memory (BERT-base adapters, batch 32 x 128: 4.5 -> 3.5 GiB peak RSS
#     together with _fused_projection).
# Where TensorFlow's graph optimizer fuses ops into the oneDNN products
# (bias + GELU at inference, the attention scale and mask), the ops are left
# as plain TensorFlow ops. Inside an XLA-compiled step (the GPU/TPU policy)
# the compiled functions are inlined into the enclosing cluster.
# ---------------------------------------------------------------------------

_FUSED_KERNELS = [True]


def set_fused_kernels(enabled):
  """Turns the XLA-fused element-wise kernels on or off (process-wide).

  With them off the model is built from plain TensorFlow ops only (the same
  math), e.g. for a SavedModel that must run where XLA is not available.
  Takes effect for functions traced after the call.

  Returns:
    The previous setting.
  """
  previous = _FUSED_KERNELS[0]
  _FUSED_KERNELS[0] = bool(enabled)
  return previous


def fused_kernels_enabled():
  return _FUSED_KERNELS[0]


@contextlib.contextmanager
def fused_kernels(enabled):
  """Context: fused kernels on or off for the functions traced inside."""
  previous = set_fused_kernels(enabled)
  try:
    yield
  finally:
    set_fused_kernels(previous)


def _xla_kernel(fn):
  return tf.function(fn, jit_compile=True, autograph=False,
                     reduce_retracing=True)


_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def _gelu_forward(x):
  # The original's tanh form, with x·x·x for pow(x, 3).
  cdf = 0.5 * (1.0 + tf.tanh(_GELU_C * (x + _GELU_A * (x * x * x))))
  return x * cdf


def _gelu_backward(x, dy):
  t = tf.tanh(_GELU_C * (x + _GELU_A * (x * x * x)))
  dinner = _GELU_C * (1.0 + 3.0 * _GELU_A * (x * x))
  return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)


_gelu_forward_xla = _xla_kernel(_gelu_forward)
_gelu_backward_xla = _xla_kernel(_gelu_backward)


@tf.custom_gradient
def _fused_gelu(x):
  def grad(dy):
    return _gelu_backward_xla(x, dy)
  return _gelu_forward_xla(x), grad


def gelu(x, training=True):
  """The original BERT GELU (tanh form).

  Args:
    x: float tensor.
    training: whether a gradient will be taken: then one fused kernel with
      its own compiled gradient (when fused kernels are on); else
      tf.nn.gelu's tanh form, which TensorFlow's graph optimizer fuses into
      the preceding oneDNN matrix product.
  """
  if not training:
    return tf.nn.gelu(x, approximate=True)
  if not fused_kernels_enabled():
    return _gelu_forward(x)
  return _fused_gelu(x)


def _ln_forward(x, residual, gamma, beta, epsilon):
  """LayerNorm(x + residual) in float32, as keras.layers.LayerNormalization.

  Returns:
    (output, normalized input x̂, 1 / standard deviation).
  """
  x = tf.cast(x, tf.float32)
  if residual is not None:
    x = x + tf.cast(residual, tf.float32)
  mean = tf.reduce_mean(x, axis=-1, keepdims=True)
  variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=-1,
                            keepdims=True)
  rstd = tf.math.rsqrt(variance + epsilon)
  inv = rstd * gamma
  return x * inv + (beta - mean * inv), (x - mean) * rstd, rstd


def _ln_backward(x_hat, rstd, gamma, dy):
  """(d input, d gamma, d beta) of LayerNorm from x̂ and 1 / std."""
  dy = tf.cast(dy, tf.float32)
  hidden = tf.shape(x_hat)[-1]
  dgamma = tf.reduce_sum(tf.reshape(dy * x_hat, [-1, hidden]), axis=0)
  dbeta = tf.reduce_sum(tf.reshape(dy, [-1, hidden]), axis=0)
  g = dy * gamma
  dx = rstd * (g - tf.reduce_mean(g, axis=-1, keepdims=True)
               - x_hat * tf.reduce_mean(g * x_hat, axis=-1, keepdims=True))
  return dx, dgamma, dbeta


_ln_forward_xla = _xla_kernel(_ln_forward)
_ln_backward_xla = _xla_kernel(_ln_backward)


def _fused_layer_norm(x, residual, gamma, beta, epsilon):
  """float32 LayerNorm(x + residual) with a compiled forward and backward.

  The backward pass keeps x̂ (one [rows, H] tensor) rather than both
  addends, which frozen layers would otherwise not keep.
  """
  inputs = (x,) if residual is None else (x, residual)

  @tf.custom_gradient
  def layer_norm(gamma, beta, *inputs):
    y, x_hat, rstd = _ln_forward_xla(
        inputs[0], inputs[1] if residual is not None else None, gamma, beta,
        epsilon)

    def grad(dy):
      dx, dgamma, dbeta = _ln_backward_xla(x_hat, rstd, gamma, dy)
      return (dgamma, dbeta) + tuple(tf.cast(dx, t.dtype) for t in inputs)
    return y, grad
  return layer_norm(gamma, beta, *inputs)


@keras.saving.register_keras_serializable(package="adapter_bert")
class LayerNorm(keras.layers.LayerNormalization):
  """keras.layers.LayerNormalization over the last axis, optionally of a sum.

  Same variables (`gamma`, `beta`) and numbers as the Keras layer; `call(x,
  residual)` normalizes x + residual in one fused kernel.
  """

  def call(self, inputs, residual=None):
    gamma = tf.convert_to_tensor(self.gamma)
    beta = tf.convert_to_tensor(self.beta)
    if fused_kernels_enabled():
      outputs = _fused_layer_norm(inputs, residual, gamma, beta, self.epsilon)
    else:
      outputs, _, _ = _ln_forward(inputs, residual, gamma, beta, self.epsilon)
    return tf.cast(outputs, self.compute_dtype)


def _dense(layer, x):
  """x · kernel + bias of a keras Dense `layer` (no activation), [rows, units].

  Written as MatMul + BiasAdd so that TensorFlow's graph optimizer fuses the
  bias and a following tf.nn.gelu into the oneDNN product (Dense.call's
  add does not fuse with the GELU).
  """
  return tf.nn.bias_add(tf.matmul(x, tf.cast(layer.kernel, x.dtype)),
                        tf.cast(layer.bias, x.dtype))


def _fused_projection(x, kernels, biases):
  """x · [k1 k2 ...] + [b1 b2 ...]: several Dense layers as one product.

  The concatenated kernel is built again in the backward pass rather than
  kept (frozen kernels then cost no activation memory); gradients of the
  kernels and biases are computed only if asked for.

  Args:
    x: [rows, H].
    kernels: list of [H, units_i] float tensors.
    biases: list of [units_i].

  Returns:
    [rows, sum(units_i)] in x's dtype.
  """
  dtype = x.dtype
  sizes = [int(k.shape[-1]) for k in kernels]

  def concat(tensors, axis):
    return tf.concat([tf.cast(t, dtype) for t in tensors], axis=axis)

  if not fused_kernels_enabled():
    return tf.nn.bias_add(tf.matmul(x, concat(kernels, 1)), concat(biases, 0))

  @tf.custom_gradient
  def projection(x, *params):
    kernels, biases = params[:len(sizes)], params[len(sizes):]
    y = tf.nn.bias_add(tf.matmul(x, concat(kernels, 1)), concat(biases, 0))

    def grad(dy):
      with tf.control_dependencies([dy]):  # Not merged with the forward.
        kernel = concat([tf.identity(k) for k in kernels], 1)
      dx = tf.matmul(dy, kernel, transpose_b=True)
      dkernel = tf.matmul(x, dy, transpose_a=True)  # Pruned when frozen.
      dbias = tf.reduce_sum(dy, axis=0)
      dkernels = [tf.cast(d, k.dtype) for d, k in
                  zip(tf.split(dkernel, sizes, axis=1), kernels)]
      dbiases = [tf.cast(d, b.dtype) for d, b in
                 zip(tf.split(dbias, sizes, axis=0), biases)]
      return (dx,) + tuple(dkernels) + tuple(dbiases)
    return y, grad
  return projection(x, *kernels, *biases)


def _layer_norm(name):
  # Statistics always in float32 (mixed precision keeps LayerNorm in float32).
  return LayerNorm(axis=-1, epsilon=LAYER_NORM_EPSILON, name=name,
                   dtype="float32")


# Dropout masks come from a counter-based generator: a keyed integer hash of
# each element's coordinates. 32-bit integer ops only, so XLA vectorizes it on
# CPU (TensorFlow's Philox kernel measured 4x slower, XLA:CPU's Philox ~80x)
# and the mask is the same with or without XLA, on any device.
_MIX_1 = 0x7FEB352D  # "lowbias32" multipliers (C. Wellons, hash-prospector).
_MIX_2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _xorshift(z, bits):
  return tf.bitwise.bitwise_xor(
      z, tf.bitwise.right_shift(z, tf.constant(bits, tf.uint32)))


def _hash32(z):
  """lowbias32: a 32-bit integer hash (bijective, good avalanche)."""
  z = _xorshift(z, 16) * tf.constant(_MIX_1, tf.uint32)
  z = _xorshift(z, 15) * tf.constant(_MIX_2, tf.uint32)
  return _xorshift(z, 16)


# Element (..., i, j) of a row hashes the counter i * _ROW_STRIDE + j, so a
# mask does not depend on how long the last two axes are: a batch trimmed to
# its longest example drops the same elements as the batch padded to
# max_seq_length (bucketing changes no number).
_ROW_STRIDE = 1 << 15


def _keep_mask(x, seed, rate):
  """bool [x.shape]: which elements of `x` dropout keeps, a function of seed.

  The first axis of x is the example axis. With x of shape [..., m, n] and
  its leading axes flattened to r (x of rank 2 is [m = examples, n]),
  element (r, i, j) hashes the counter c = i * 2^15 + j with two keys of its
  row, a_r and b_r: z = hash(hash(c + a_r) xor b_r), and is kept when
  z >= round(rate * 2^32). The row keys are hashes of the global row index
  (the example index plus the offset in seed[2], if given) and the seed.
  The second key makes the streams of two rows unrelated even where their
  counters collide after the first key.

  The mask of an element depends on its coordinates only, not on m or n
  (trimming the padding off the last two axes leaves the rest of the mask
  as it was) nor on which examples share the batch (a micro-batch with its
  offset draws what the whole batch draws for it). n <= 32768, m < 131072.

  Args:
    x: tensor of rank >= 1.
    seed: int [2] stateless seed, or [3] with the index of x's first example
      in its whole batch (`dropout_seed_for_slice`).
    rate: python float in [0, 1).
  """
  seed = tf.cast(seed, tf.int64)
  offset = (tf.bitcast(tf.cast(seed[2], tf.int32), tf.uint32)
            if seed.shape[0] == 3 else tf.constant(0, tf.uint32))
  words = tf.reshape(tf.bitcast(seed[:2], tf.uint32), [4])
  k1 = _hash32(words[0] + _hash32(words[1] + _hash32(words[2]
                                                   + _hash32(words[3]))))
  k2 = _hash32(k1 + tf.constant(_GOLDEN, tf.uint32))
  shape = tf.shape(x)
  rank = x.shape.rank
  if rank == 1:
    shape3 = tf.concat([[1, 1], shape], axis=0)
  elif rank == 2:
    shape3 = tf.concat([[1], shape], axis=0)
  else:
    shape3 = shape
  lead, m, n = shape3[:-2], shape3[-2], shape3[-1]
  rows = tf.range(tf.reduce_prod(lead), dtype=tf.int32)
  first = tf.range(m, dtype=tf.int32)
  if rank >= 3:  # Rows of one example are consecutive.
    rows_per_example = tf.cast(tf.reduce_prod(lead[1:]), tf.uint32)
    rows = tf.bitcast(rows, tf.uint32) + offset * rows_per_example
    first = tf.bitcast(first, tf.uint32)
  else:  # The example axis is m.
    rows = tf.bitcast(rows, tf.uint32)
    first = tf.bitcast(first, tf.uint32) + offset
  a = _hash32(rows + k1)
  b = _hash32(a + k2)
  row_shape = tf.concat([lead, [1, 1]], axis=0)
  a, b = tf.reshape(a, row_shape), tf.reshape(b, row_shape)  # [..., 1, 1]
  counter = (first[:, tf.newaxis] * tf.constant(_ROW_STRIDE, tf.uint32)
             + tf.bitcast(tf.range(n, dtype=tf.int32), tf.uint32)[tf.newaxis])
  z = _hash32(tf.bitwise.bitwise_xor(_hash32(counter + a), b))  # [..., m, n]
  threshold = min(int(round(rate * 2.0**32)), 2**32 - 1)
  keep = z >= tf.constant(threshold, tf.uint32)
  return tf.reshape(keep, shape)


def _dropout_forward(x, seed, rate):
  keep = _keep_mask(x, seed, rate)
  return tf.where(keep, x * tf.cast(1.0 / (1.0 - rate), x.dtype),
                  tf.zeros_like(x))


_dropout_kernels = {}


def _dropout_xla(x, seed, rate):
  """`_dropout_forward` compiled, one kernel per rank of x (the mask code
  depends on the rank, which a relaxed trace would lose). The seed goes in
  as int64 [3] (offset 0 when not given) so that its length is static."""
  rank = x.shape.rank
  if rank not in _dropout_kernels:
    _dropout_kernels[rank] = _xla_kernel(_dropout_forward)
  return _dropout_kernels[rank](x, _seed3(seed), rate)


def _seed3(seed):
  """An int [2] or [3] dropout seed as int64 [3] (example offset 0 if none)."""
  if seed is None:
    return None
  seed = tf.cast(seed, tf.int64)
  if seed.shape[0] == 3:
    return seed
  return dropout_seed_for_slice(seed, 0)


def _fused_dropout(x, rate, seed):
  @tf.custom_gradient
  def apply(x):
    def grad(dy):
      # The backward pass draws the same mask again (cheaper than keeping it).
      return _dropout_xla(dy, seed, rate)
    return _dropout_xla(x, seed, rate), grad
  return apply(x)


def dropout(x, rate, training, seed=None):
  """Inverted dropout; stateless (reproducible) when `seed` is given.

  With a seed the mask is a pure function of the seed and each element's
  coordinates, the same with or without XLA (see `_keep_mask`); without one,
  tf.nn.dropout.

  Args:
    x: tensor.
    rate: drop probability.
    training: python bool.
    seed: optional int [2] (or [3], see `dropout_seed_for_slice`) tensor
      for a stateless mask.

  Returns:
    `x` unchanged when not training or rate is 0, else x with dropout.
  """
  if not training or not rate:
    return x
  if seed is None:
    return tf.nn.dropout(x, rate=rate)
  if not fused_kernels_enabled():
    return _dropout_forward(x, seed, rate)
  return _fused_dropout(x, rate, seed)


def _token_dropout(x, rate, training, seed, batch, seq):
  """`dropout` of [batch * seq, H] token rows, masked as [batch, seq, H].

  Seen as [batch, seq, H], a token's mask depends on (example, position),
  not on the padded width `seq` (see `_keep_mask`).
  """
  if not training or not rate:
    return x
  hidden = tf.shape(x)[-1]
  x = dropout(tf.reshape(x, [batch, seq, hidden]), rate, training, seed)
  return tf.reshape(x, [batch * seq, hidden])


def _attention_scores(q, k, mask_adder, scale):
  """float32 q·kᵀ · scale + mask_adder, [batch, heads, seq, seq].

  Written so that TensorFlow's graph optimizer fuses the scale and the mask
  into the oneDNN batched product (as in the original).
  """
  scores = tf.matmul(q, k, transpose_b=True)
  scores = tf.multiply(scores, tf.cast(scale, scores.dtype))
  return tf.cast(scores, tf.float32) + mask_adder


def _attention_probs_backward(probs, seed, scale, rate, dout):
  """d(scores) of dropout(softmax(scores · scale)) from the softmax output."""
  dprobs = tf.cast(dout, tf.float32)
  if seed is not None:
    dprobs = _dropout_forward(dprobs, seed, rate)
  dscores = probs * (dprobs - tf.reduce_sum(dprobs * probs, axis=-1,
                                            keepdims=True))
  return dscores * scale


_attention_probs_grad_xla = _xla_kernel(_attention_probs_backward)


def attention_context(q, k, v, mask_adder, scale, rate, training, seed):
  """dropout(softmax(q·kᵀ · scale + mask_adder)) · v, the attention core.

  When training with fused kernels on, the backward pass keeps only the
  softmax output (float32 [batch, heads, seq, seq]) and draws the dropout
  mask again from the seed, rather than also keeping the dropped-out
  probabilities: heads · seq floats less per token and layer.

  Args:
    q, k, v: [batch, heads, seq, head_size] (any float dtype).
    mask_adder: float32 [batch, 1, 1, seq], 0 or -10000.
    scale: python float multiplying the scores (1/sqrt(head size)).
    rate: dropout rate on the probabilities.
    training: python bool.
    seed: optional int [2] or [3] stateless dropout seed.

  Returns:
    [batch, heads, seq, head_size] in v's dtype.
  """
  drop = bool(training and rate)
  if not training or not fused_kernels_enabled() or (drop and seed is None):
    # oneDNN product (with the scale and mask fused in) and softmax.
    probs = tf.nn.softmax(_attention_scores(q, k, mask_adder, scale))
    probs = dropout(probs, rate, training, seed)
    return tf.matmul(tf.cast(probs, v.dtype), v)
  if not drop:
    seed, rate = None, 0.0

  def dropped(probs):
    out = _dropout_xla(probs, seed, rate) if seed is not None else probs
    return tf.cast(out, v.dtype)

  @tf.custom_gradient
  def core(q, k, v):
    probs = tf.nn.softmax(_attention_scores(q, k, mask_adder, scale))

    def grad(dcontext):
      # The same mask again, from the seed. The control dependency keeps
      # TensorFlow's graph optimizer from merging this with the forward
      # dropout (which would keep its output alive after all).
      with tf.control_dependencies([dcontext]):
        out = dropped(tf.identity(probs))
      dv = tf.matmul(out, dcontext, transpose_a=True)
      dout = tf.matmul(dcontext, v, transpose_b=True)
      dscores = tf.cast(_attention_probs_grad_xla(probs, _seed3(seed), scale, rate,
                                                  dout), q.dtype)
      dq = tf.matmul(dscores, k)
      dk = tf.matmul(dscores, q, transpose_a=True)
      return dq, dk, dv
    return tf.matmul(dropped(probs), v), grad
  return core(q, k, v)


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
    output += self.position_embeddings[tf.newaxis, :seq_length, :]
    output = self.layer_norm(output)
    output = dropout(output, self.config.hidden_dropout_prob, training, seed)
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

  def _project_heads(self, x, batch, seq):
    """The query, key and value projections as one matrix product.

    Returns:
      q, k, v: [batch, heads, seq, head_size] each.
    """
    # One [H, 3H] product instead of three [H, H] ones: a wider matrix runs
    # closer to the machine's peak, and the backward pass gets one product
    # too. The kernels stay three variables (the checkpoint layout).
    layers = (self.query, self.key, self.value)
    qkv = _fused_projection(x, [tf.convert_to_tensor(l.kernel) for l in layers],
                            [tf.convert_to_tensor(l.bias) for l in layers])
    qkv = tf.reshape(qkv, [batch, seq, 3, self.num_heads, self.head_size])
    qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, batch, heads, seq, size]
    # unstack, not qkv[i]: the gradient of a slice is a zero-filled copy of
    # the whole tensor per slice, that of unstack one stack.
    return tf.unstack(qkv, num=3, axis=0)

  def call(self, x, mask_adder, batch, seq, training=False, seed=None):
    # x: [batch * seq, H]; mask_adder: [batch, 1, 1, seq] float32
    q, k, v = self._project_heads(x, batch, seq)
    # Scaled, masked softmax (float32, also under mixed precision), dropout,
    # times v.
    context = attention_context(
        q, k, v, mask_adder, 1.0 / math.sqrt(self.head_size),
        self.config.attention_probs_dropout_prob, training,
        seed)  # [batch, heads, seq, head_size]
    context = tf.transpose(context, [0, 2, 1, 3])
    return tf.reshape(context, [batch * seq, self.config.hidden_size])

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
      return gelu(intermediate, training=training)
    return self.intermediate_act(intermediate)

  def adapter_hook(self, location, x):
    """Applies the adapter at `location` if there is one (identity otherwise)."""
    layer = self.adapters.get(location)
    return x if layer is None else layer(x)

  def call(self, x, mask_adder, batch, seq, training=False, seed=None):
    # x: [batch * seq, H]
    c = self.config
    attention = self.attention(x, mask_adder, batch, seq, training=training,
                               seed=_fold_seed(seed, 0))
    attention = _dense(self.attention_output_dense, attention)
    attention = _token_dropout(attention, c.hidden_dropout_prob, training,
                               _fold_seed(seed, 1), batch, seq)
    attention = self.adapter_hook("attention_output", attention)
    attention = self.attention_layer_norm(attention, residual=x)
    attention = tf.cast(attention, self.compute_dtype)

    intermediate = self.intermediate(attention, training=training)
    output = _dense(self.output_dense, intermediate)
    output = _token_dropout(output, c.hidden_dropout_prob, training,
                            _fold_seed(seed, 2), batch, seq)
    output = self.adapter_hook("ffn_output", output)
    output = self.output_layer_norm(output, residual=attention)
    return tf.cast(output, self.compute_dtype)  # [batch * seq, H]

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

  def call(self, input_ids, input_mask, segment_ids, training=False, seed=None):
    shape = tf.shape(input_ids)
    batch, seq = shape[0], shape[1]
    embedded = self.embeddings(input_ids, segment_ids, training=training,
                               seed=_fold_seed(seed, 0))
    # Additive mask: 0 where attended, -10000 where padded. [batch, 1, 1, seq]
    mask = tf.cast(input_mask, tf.float32)[:, tf.newaxis, tf.newaxis, :]
    mask_adder = (1.0 - mask) * MASK_ADDER
    x = tf.reshape(embedded, [batch * seq, self.config.hidden_size])
    for i, block in enumerate(self.blocks):
      x = block(x, mask_adder, batch, seq, training=training,
                seed=_fold_seed(seed, i + 1))
    sequence_output = tf.reshape(x, [batch, seq, self.config.hidden_size])
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
    x = dropout(pooled_output, self.dropout_rate, training, seed)
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

  def encode(self, features, training=False, dropout_seed=None):
    """Returns (sequence_output, pooled_output) for a feature dict."""
    return self.bert(features["input_ids"], features["input_mask"],
                     features["segment_ids"], training=training,
                     seed=_fold_seed(dropout_seed, 0))

  def call(self, features, training=False, dropout_seed=None):
    _, pooled = self.encode(features, training=training,
                            dropout_seed=dropout_seed)
    return self.classifier(pooled, training=training,
                           seed=_fold_seed(dropout_seed, 1))

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
  import checkpoint_io  # Avoids a cycle: checkpoint_io imports modeling.
  trainable = []
  for name, variable in checkpoint_io.checkpoint_name_map(model).items():
    variable.trainable = is_trainable_name(name, train_mode)
    if variable.trainable:
      trainable.append((name, variable))
  return trainable
