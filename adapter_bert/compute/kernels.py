"""The compute kernels of modeling.py: fused element-wise chains, dropout.

The matrix products are TensorFlow's own (oneDNN on CPU); each chain of
element-wise ops between two of them is one small XLA-compiled function with
a hand-written, compiled gradient (see the note below). Dropout masks are a
keyed hash of each element's coordinates (`keep_mask`), so they do not
depend on padding, on micro-batching, on XLA or on the device.
"""

import dataclasses
import functools
import math

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import tensorflow as tf


def fold_seed(seed, salt):
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
# see training.trainer.compiles_whole_step and scripts/lab/benchmark.py):
#   * XLA:CPU's matrix products ran at 0.5-0.8x the speed of the oneDNN ones,
#     so a whole-step XLA cluster is slower on CPU;
#   * op by op, each element-wise op is one pass over memory: GELU forward
#     and backward took 2x, LayerNorm 2.3x the CPU time of the same chain
#     compiled by XLA;
#   * the hand-written gradients keep only what the backward pass needs (the
#     GELU input, x̂ of the LayerNorms, the softmax output; dropout masks are
#     drawn again from their seed), which cuts a training step's activation
#     memory (BERT-base adapters, batch 32 x 128: 4.5 -> 3.5 GiB peak RSS
#     together with fused_projection).
# Where TensorFlow's graph optimizer fuses ops into the oneDNN products
# (bias + GELU at inference, the attention scale and mask), the ops are left
# as plain TensorFlow ops. At inference on a CPU host LayerNorm is oneDNN's
# own kernel (`onednn_layer_norm`): XLA:CPU reads a LayerNorm's input three
# times (two reductions, then the output), oneDNN once per row in cache
# (3.7 -> ~1.5 ms on [4096, 384]). In training on a CPU host the LayerNorm
# kernels take their row means as matrix-vector products, which XLA:CPU
# fuses with their element-wise input and computes in one read (2026-12-01,
# a 2-core Sapphire Rapids VM, [4096, 384]: forward 2.3 -> 1.85 ms,
# backward 2.5 -> 1.7 ms; the MiniLM adapters step's LayerNorms 67 -> 41 ms).
# Inside an XLA-compiled step (the GPU/TPU policy) the compiled functions are
# inlined into the enclosing cluster, with plain reductions.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KernelPolicy:
  """Which kernels the layers' math runs on; handed down every call.

  Attributes:
    fused: the XLA-compiled element-wise kernels with their hand-written
      gradients. Off, the model is plain TensorFlow ops only (the same
      math), e.g. for a SavedModel that must run where XLA is not available.
    cpu_host: the function runs op by op on a host with CPUs only (not
      compiled whole by XLA): the compiled kernels take XLA:CPU's faster
      forms (LayerNorm row means as matrix products), and TensorFlow's
      oneDNN LayerNorm kernel serves inference where this build has it.
  """
  fused: bool = True
  cpu_host: bool = False

  @property
  def onednn(self):
    """Whether oneDNN-only kernels (`onednn_layer_norm`) may be traced."""
    return self.fused and self.cpu_host and onednn_layer_norm_available()

  def layer_norm(self, x, residual, gamma, beta, epsilon, training):
    """float32 LayerNorm(x + residual) on the kernel this policy picks."""
    if not self.fused:
      return ln_forward(x, residual, gamma, beta, epsilon)[0]
    if training:
      return fused_layer_norm(x, residual, gamma, beta, epsilon,
                              cpu_host=self.cpu_host)
    if self.onednn:
      return onednn_layer_norm(x, residual, gamma, beta, epsilon)
    return layer_norm_inference_xla(x, residual, gamma, beta, epsilon)

  def dropout(self, x, rate, training, seed=None):
    return dropout(x, rate, training, seed, fused=self.fused)

  def token_dropout(self, x, rate, training, seed, batch, seq):
    return token_dropout(x, rate, training, seed, batch, seq,
                         fused=self.fused)

  def gelu(self, x, training):
    return gelu(x, training, fused=self.fused)

  def projection(self, x, kernels, biases):
    return fused_projection(x, kernels, biases, fused=self.fused)

  def attention_context(self, q, k, v, mask_adder, scale, rate, training,
                        seed):
    return attention_context(q, k, v, mask_adder, scale, rate, training,
                             seed, fused=self.fused)

  def bottleneck_adapter(self, x, w1, b1, w2, b2, training):
    return bottleneck_adapter(x, w1, b1, w2, b2, training, fused=self.fused)


# What a layer called without a policy runs on.
DEFAULT_POLICY = KernelPolicy()
PLAIN_OPS = KernelPolicy(fused=False)


def policy_or_default(policy):
  return DEFAULT_POLICY if policy is None else policy


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


def gelu(x, training=True, fused=True):
  """The original BERT GELU (tanh form).

  Args:
    x: float tensor.
    training: whether a gradient will be taken: then one fused kernel with
      its own compiled gradient (when `fused`); else
      tf.nn.gelu's tanh form, which TensorFlow's graph optimizer fuses into
      the preceding oneDNN matrix product.
  """
  if not training:
    return tf.nn.gelu(x, approximate=True)
  if not fused:
    return _gelu_forward(x)
  return _fused_gelu(x)


def _row_means(x, products):
  """Means over the last axis of [rows, H] x, as [rows, 1].

  With `products`, from the product x · 1 (a matrix-vector product):
  XLA:CPU computes a reduction in passes of its own over memory (its input,
  when an element-wise expression, written out first); the product reads x
  once.
  """
  if not products:
    return tf.reduce_mean(x, axis=-1, keepdims=True)
  hidden = tf.shape(x)[-1]
  sums = tf.matmul(x, tf.ones([hidden, 1], x.dtype))
  return sums / tf.cast(hidden, x.dtype)


def ln_forward(x, residual, gamma, beta, epsilon, products=False):
  """LayerNorm(x + residual) in float32, as keras.layers.LayerNormalization.

  Args:
    x, residual: [rows, H] (residual may be None).
    gamma, beta: [H].
    epsilon: python float.
    products: the row means as matrix products (`_row_means`), for XLA:CPU.

  Returns:
    (output, normalized input x̂, 1 / standard deviation).
  """
  x = tf.cast(x, tf.float32)
  if residual is not None:
    x = x + tf.cast(residual, tf.float32)
  mean = _row_means(x, products)
  variance = _row_means(tf.math.squared_difference(x, mean), products)
  rstd = tf.math.rsqrt(variance + epsilon)
  inv = rstd * gamma
  return x * inv + (beta - mean * inv), (x - mean) * rstd, rstd


def ln_backward(x_hat, rstd, gamma, dy, products=False):
  """(d input, d gamma, d beta) of LayerNorm from x̂ and 1 / std.

  With `products` the row means are matrix products (`_row_means`): those
  of dy·gamma and dy·gamma·x̂ are dy · gamma / H and (dy·x̂) · gamma / H,
  and dy·x̂ is the product the gamma gradient sums anyway.
  """
  dy = tf.cast(dy, tf.float32)
  hidden = tf.shape(x_hat)[-1]
  dy_x_hat = dy * x_hat
  dgamma = tf.reduce_sum(tf.reshape(dy_x_hat, [-1, hidden]), axis=0)
  dbeta = tf.reduce_sum(tf.reshape(dy, [-1, hidden]), axis=0)
  g = dy * gamma
  if products:
    column = tf.reshape(gamma, [-1, 1]) / tf.cast(hidden, tf.float32)
    mean_g = tf.matmul(dy, column)  # [rows, 1]
    mean_g_x_hat = tf.matmul(dy_x_hat, column)
  else:
    mean_g = tf.reduce_mean(g, axis=-1, keepdims=True)
    mean_g_x_hat = tf.reduce_mean(g * x_hat, axis=-1, keepdims=True)
  dx = rstd * (g - mean_g - x_hat * mean_g_x_hat)
  return dx, dgamma, dbeta


def layer_norm_inference(x, residual, gamma, beta, epsilon):
  """The output of `ln_forward` alone (no x̂ and 1 / std to write)."""
  return ln_forward(x, residual, gamma, beta, epsilon)[0]


def _onednn_layer_norm_op(x, gamma, beta, epsilon):
  # TensorFlow's oneDNN LayerNorm kernel, the op its graph optimizer puts in
  # place of a LayerNorm subgraph it recognizes (a pattern with constant
  # gamma and beta or Keras 2's fused form, which ours is not); it has no
  # Python wrapper, so the node is made directly. Graph mode only.
  graph = tf.compat.v1.get_default_graph()
  op = graph.create_op(
      "_MklLayerNorm", [x, gamma, beta], [x.dtype], name="OneDnnLayerNorm",
      attrs={"T": tf.compat.v1.AttrValue(type=x.dtype.as_datatype_enum),
             "epsilon": tf.compat.v1.AttrValue(f=epsilon)})
  return op.outputs[0]


@functools.lru_cache(maxsize=None)
def onednn_layer_norm_available():
  """Whether TensorFlow's oneDNN LayerNorm kernel runs here and is right.

  Tried once per process on a small CPU tensor against `ln_forward`; any
  failure (a build without oneDNN, an op that changed) means no. The trial
  runs eagerly (`tf.init_scope`) also when the first question comes while a
  function is traced, as it does in the Trainer's eval step.
  """
  try:
    from tensorflow.python.framework import op_def_registry  # pylint: disable=g-import-not-at-top
    if op_def_registry.get("_MklLayerNorm") is None:
      return False
    with tf.init_scope(), tf.device("/CPU:0"):
      x = tf.reshape(tf.range(24, dtype=tf.float32) ** 1.5, [3, 8])
      gamma = tf.linspace(0.5, 2.0, 8)
      beta = tf.linspace(-1.0, 1.0, 8)
      got = _onednn_layer_norm_fn(x, gamma, beta, 1e-12)
      want = ln_forward(x, None, gamma, beta, 1e-12)[0]
      return bool(tf.reduce_max(tf.abs(got - want)) < 1e-4)
  except Exception:  # pylint: disable=broad-except
    return False


@tf.RegisterGradient("_MklLayerNorm")
def _onednn_layer_norm_grad(op, dy):
  x, gamma, beta = op.inputs
  _, x_hat, rstd = ln_forward(x, None, gamma, beta, op.get_attr("epsilon"))
  dx, dgamma, dbeta = ln_backward(x_hat, rstd, gamma, dy)
  return tf.cast(dx, x.dtype), dgamma, dbeta


def onednn_layer_norm(x, residual, gamma, beta, epsilon):
  """LayerNorm(x + residual) by TensorFlow's oneDNN kernel (float32).

  One pass over each row in cache: 2-3x faster on CPU than the XLA kernel,
  whose reductions read the input three times. Same math as `ln_forward`
  (two-pass mean and variance) to float rounding; differentiable (the
  gradient is `ln_backward`'s). Only where `KernelPolicy.onednn`.
  """
  x = tf.cast(x, tf.float32)
  if residual is not None:
    x = x + tf.cast(residual, tf.float32)
  return _onednn_layer_norm_fn(x, tf.cast(gamma, tf.float32),
                               tf.cast(beta, tf.float32), epsilon)


# Called through a function so that it also works eagerly.
_onednn_layer_norm_fn = tf.function(_onednn_layer_norm_op, autograph=False,
                                    reduce_retracing=True)


ln_forward_xla = _xla_kernel(ln_forward)
ln_backward_xla = _xla_kernel(ln_backward)


def ln_forward_cpu(x, residual, gamma, beta, epsilon):
  """`ln_forward` in its XLA:CPU form (row means as products)."""
  return ln_forward(x, residual, gamma, beta, epsilon, products=True)


def ln_backward_cpu(x_hat, rstd, gamma, dy):
  """`ln_backward` in its XLA:CPU form (row means as products)."""
  return ln_backward(x_hat, rstd, gamma, dy, products=True)


ln_forward_cpu_xla = _xla_kernel(ln_forward_cpu)
ln_backward_cpu_xla = _xla_kernel(ln_backward_cpu)
layer_norm_inference_xla = _xla_kernel(layer_norm_inference)


def fused_layer_norm(x, residual, gamma, beta, epsilon, cpu_host=False):
  """float32 LayerNorm(x + residual) with a compiled forward and backward.

  The backward pass keeps x̂ (one [rows, H] tensor) rather than both
  addends, which frozen layers would otherwise not keep. The kernels see
  [rows, H] whatever the rank of x, so that every LayerNorm of a given batch
  shape (embeddings and layers) shares one compiled forward and backward.
  """
  inputs = (x,) if residual is None else (x, residual)
  shape = tf.shape(x)
  hidden = tf.shape(gamma)[-1]
  if cpu_host:
    forward, backward = ln_forward_cpu_xla, ln_backward_cpu_xla
  else:
    forward, backward = ln_forward_xla, ln_backward_xla

  @tf.custom_gradient
  def layer_norm(gamma, beta, *inputs):
    rows = [tf.reshape(t, [-1, hidden]) for t in inputs]  # [rows, H]
    y, x_hat, rstd = forward(
        rows[0], rows[1] if residual is not None else None, gamma, beta,
        epsilon)

    def grad(dy):
      dx, dgamma, dbeta = backward(x_hat, rstd, gamma,
                                   tf.reshape(dy, [-1, hidden]))
      dx = tf.reshape(dx, shape)
      return (dgamma, dbeta) + tuple(tf.cast(dx, t.dtype) for t in inputs)
    return tf.reshape(y, shape), grad
  return layer_norm(gamma, beta, *inputs)


def dense(x, kernel, bias):
  """x · kernel + bias (no activation): [rows, in] -> [rows, units].

  Written as MatMul + BiasAdd so that TensorFlow's graph optimizer fuses the
  bias and a following tf.nn.gelu into the oneDNN product (Dense.call's
  add does not fuse with the GELU). `bias` may be [units] or [1, units].
  """
  return tf.nn.bias_add(tf.matmul(x, tf.cast(kernel, x.dtype)),
                        tf.reshape(tf.cast(bias, x.dtype), [-1]))


def _gelu_grad_and_bias_grad(pre, dh):
  """(GELU(pre), d pre, column sums of d pre) from pre and d GELU(pre)."""
  dpre = _gelu_backward(pre, dh)
  return _gelu_forward(pre), dpre, tf.reduce_sum(dpre, axis=0)


def _residual_grad_and_bias_grad(dy, dinner):
  """(dy + dinner, column sums of dy)."""
  return dy + dinner, tf.reduce_sum(dy, axis=0)


_gelu_grad_and_bias_grad_xla = _xla_kernel(_gelu_grad_and_bias_grad)
_residual_grad_and_bias_grad_xla = _xla_kernel(_residual_grad_and_bias_grad)


def bottleneck_adapter(x, w1, b1, w2, b2, training=False, fused=True):
  """x + GELU(x · w1 + b1) · w2 + b2, the bottleneck adapter (tanh GELU).

  At inference the bias and GELU fuse into the first oneDNN product. For
  training with fused kernels on, one custom gradient: the backward pass
  keeps x and the [rows, m] pre-activation only (the GELU output is
  recomputed in the compiled kernel that also sums the bias gradient), and
  the residual's gradient is added in the kernel that sums the other bias
  gradient, instead of a separate op per sum and per add.

  Args:
    x: [rows, H].
    w1: [H, m]; b1: [m] or [1, m]; w2: [m, H]; b2: [H] or [1, H].
    training: python bool, whether a gradient will be taken.

  Returns:
    [rows, H] in x's dtype.
  """
  dtype = x.dtype
  if not training or not fused:
    h = dense(x, w1, b1)
    h = (tf.nn.gelu(h, approximate=True) if not training
         else _gelu_forward(h))
    return dense(h, w2, b2) + x

  @tf.custom_gradient
  def adapter(x, w1, b1, w2, b2):
    pre = dense(x, w1, b1)  # [rows, m]
    h = _gelu_forward_xla(pre)
    y = dense(h, w2, b2) + x

    def grad(dy):
      dh = tf.matmul(dy, tf.cast(w2, dtype), transpose_b=True)  # [rows, m]
      h, dpre, db1 = _gelu_grad_and_bias_grad_xla(pre, dh)
      dw2 = tf.matmul(h, dy, transpose_a=True)  # [m, H]
      # As (dpreᵀ · x)ᵀ and dpre · (w1ᵀ): oneDNN's products of these shapes
      # ran 1.7x and 1.1x faster than dw1 = xᵀ · dpre ([H, m], summed over
      # rows) and dpre · w1ᵀ with a transposed operand (2-core CPU, 4096
      # rows, H 384, m 64).
      dw1 = tf.transpose(tf.matmul(dpre, x, transpose_a=True))  # [H, m]
      dx, db2 = _residual_grad_and_bias_grad_xla(
          dy, tf.matmul(dpre, tf.transpose(tf.cast(w1, dtype))))
      return (dx, tf.cast(dw1, w1.dtype), tf.reshape(tf.cast(db1, b1.dtype),
                                                     tf.shape(b1)),
              tf.cast(dw2, w2.dtype), tf.reshape(tf.cast(db2, b2.dtype),
                                                 tf.shape(b2)))
    return y, grad
  return adapter(x, w1, b1, w2, b2)


def fused_projection(x, kernels, biases, fused=True):
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

  if not fused:
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


def keep_mask(x, seed, rate):
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
  keep = keep_mask(x, seed, rate)
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


def dropout(x, rate, training, seed=None, fused=True):
  """Inverted dropout; stateless (reproducible) when `seed` is given.

  With a seed the mask is a pure function of the seed and each element's
  coordinates, the same with or without XLA (see `keep_mask`); without one,
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
  if not fused:
    return _dropout_forward(x, seed, rate)
  return _fused_dropout(x, rate, seed)


def token_dropout(x, rate, training, seed, batch, seq, fused=True):
  """`dropout` of [batch * seq, H] token rows, masked as [batch, seq, H].

  Seen as [batch, seq, H], a token's mask depends on (example, position),
  not on the padded width `seq` (see `keep_mask`).
  """
  if not training or not rate:
    return x
  hidden = tf.shape(x)[-1]
  x = dropout(tf.reshape(x, [batch, seq, hidden]), rate, training, seed,
              fused)
  return tf.reshape(x, [batch * seq, hidden])


def _attention_scores(q, k, mask_adder, scale):
  """float32 q·kᵀ · scale + mask_adder, [batch, heads, seq, seq].

  Written so that TensorFlow's graph optimizer fuses the scale and the mask
  into the oneDNN batched product (as in the original). Under a mixed
  precision policy Keras may have cast mask_adder to the compute dtype; it
  is added in float32.
  """
  scores = tf.matmul(q, k, transpose_b=True)
  scores = tf.multiply(scores, tf.cast(scale, scores.dtype))
  return tf.cast(scores, tf.float32) + tf.cast(mask_adder, tf.float32)


def _attention_probs_backward(probs, seed, scale, rate, dout, dcontext,
                              context):
  """The backward pass of dropout(softmax(scores · scale)) · v at the probs.

  Args:
    probs: float32 [batch, heads, rows, seq], the softmax output.
    seed: int64 [3] dropout seed, or None (no dropout).
    scale: the scores' scale.
    rate: dropout rate.
    dout: [batch, heads, rows, seq], d(context)·vᵀ: the gradient of the
      dropped-out probabilities.
    dcontext, context: [batch, heads, rows, head_size], the gradient and the
      value of the attention output.

  Returns:
    (the dropped-out probabilities again (float32; `probs` itself without
    dropout), d(scores) float32). One pass over the [.., rows, seq] tensors:
    the softmax gradient's row sums Σ_j probs·d(probs) equal
    Σ_d d(context)·context (both are Σ_j dropped_j · d(context)·v_j), a sum
    over head_size instead of seq, so they need no pass of their own.
  """
  delta = tf.reduce_sum(tf.cast(dcontext, tf.float32)
                        * tf.cast(context, tf.float32), axis=-1,
                        keepdims=True)  # [batch, heads, rows, 1]
  dprobs = tf.cast(dout, tf.float32)
  dropped = probs
  if seed is not None:
    keep = keep_mask(probs, seed, rate)
    inverse = tf.constant(1.0 / (1.0 - rate), tf.float32)
    dropped = tf.where(keep, probs * inverse, tf.zeros_like(probs))
    dprobs = tf.where(keep, dprobs * inverse, tf.zeros_like(dprobs))
  dscores = probs * (dprobs - delta)
  return dropped, dscores * scale


_attention_probs_grad_xla = _xla_kernel(_attention_probs_backward)


def attention_context(q, k, v, mask_adder, scale, rate, training, seed,
                      fused=True):
  """dropout(softmax(q·kᵀ · scale + mask_adder)) · v, the attention core.

  When training with fused kernels on, the backward pass keeps the softmax
  output (float32 [batch, heads, seq, seq]) and the context, and draws the
  dropout mask again from the seed, rather than also keeping the dropped-out
  probabilities: heads · seq floats less per token and layer. Its one
  compiled kernel over the [.., seq, seq] tensors gives both the dropped-out
  probabilities (for d(v)) and d(scores) (`_attention_probs_backward`). A
  query of one position takes plain ops (same numbers and mask).

  Args:
    q: [batch, heads, rows, head_size]: rows = seq, or fewer positions
      (output_range); k, v: [batch, heads, seq, head_size] (any float dtype).
    mask_adder: float32 [batch, 1, 1, seq], 0 or -10000.
    scale: python float multiplying the scores (1/sqrt(head size)).
    rate: dropout rate on the probabilities.
    training: python bool.
    seed: optional int [2] or [3] stateless dropout seed.

  Returns:
    [batch, heads, seq, head_size] in v's dtype.
  """
  drop = bool(training and rate)
  # One query row (the [CLS] row of a classifier's last layer): the scores
  # are [batch, heads, 1, seq], too small for compiled kernels to pay for
  # their compiles, one per new batch width.
  one_row = q.shape[2] == 1
  if (not training or not fused or (drop and seed is None)
      or one_row):
    # oneDNN product (with the scale and mask fused in) and softmax.
    probs = tf.nn.softmax(_attention_scores(q, k, mask_adder, scale))
    if drop and seed is not None:
      probs = _dropout_forward(probs, seed, rate)  # Same mask, plain ops.
    else:
      probs = dropout(probs, rate, training, seed, fused)
    return tf.matmul(tf.cast(probs, v.dtype), v)
  if not drop:
    seed, rate = None, 0.0

  def dropped(probs):
    out = _dropout_xla(probs, seed, rate) if seed is not None else probs
    return tf.cast(out, v.dtype)

  @tf.custom_gradient
  def core(q, k, v):
    probs = tf.nn.softmax(_attention_scores(q, k, mask_adder, scale))
    context = tf.matmul(dropped(probs), v)  # [batch, heads, rows, size]

    def grad(dcontext):
      # [batch, heads, rows, seq]
      dout = tf.matmul(dcontext, v, transpose_b=True)
      # The same dropout mask again, drawn from the seed in the kernel that
      # computes d(scores).
      out, dscores = _attention_probs_grad_xla(
          probs, _seed3(seed), scale, rate, dout, dcontext, context)
      dscores = tf.cast(dscores, q.dtype)
      dv = tf.matmul(tf.cast(out, v.dtype), dcontext, transpose_a=True)
      dq = tf.matmul(dscores, k)
      dk = tf.matmul(dscores, q, transpose_a=True)
      return dq, dk, dv
    return context, grad
  return core(q, k, v)
