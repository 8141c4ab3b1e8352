"""Model core: numerics against an independent NumPy BERT, counts, freezing."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import adapters
from adapter_bert.storage import checkpoint_io
from adapter_bert.compute import kernels
from adapter_bert.model import modeling
from adapter_bert.errors import UserError


def tiny_config(**overrides):
  values = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=24, hidden_act="gelu",
                hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                max_position_embeddings=32, type_vocab_size=2,
                initializer_range=0.02)
  values.update(overrides)
  return modeling.BertConfig(**values)


def randomize(model, seed=0, scale=0.3):
  """Gives every variable (adapters and biases too) non-trivial values."""
  rng = np.random.default_rng(seed)
  for name, v in checkpoint_io.checkpoint_name_map(model).items():
    value = rng.normal(0.0, scale, size=v.shape)
    if name.endswith("gamma"):
      value += 1.0
    v.assign(value.astype(np.float32))


# ---------------------------------------------------------------------------
# Independent NumPy reference of the original forward pass (float64).
# ---------------------------------------------------------------------------


def np_gelu(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_layer_norm(x, gamma, beta):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-12) * gamma + beta


def np_adapter(x, w, prefix):
  if prefix + "/weights1" not in w:
    return x
  h = np_gelu(x @ w[prefix + "/weights1"] + w[prefix + "/biases1"])
  return x + h @ w[prefix + "/weights2"] + w[prefix + "/biases2"]


def np_bert(w, cfg, ids, mask, segs):
  """Returns (sequence_output, pooled, logits) of the reference BERT."""
  b, s = ids.shape
  h, n = cfg.hidden_size, cfg.num_attention_heads
  d = h // n
  x = (w["bert/embeddings/word_embeddings"][ids]
       + w["bert/embeddings/token_type_embeddings"][segs]
       + w["bert/embeddings/position_embeddings"][:s][None])
  x = np_layer_norm(x, w["bert/embeddings/LayerNorm/gamma"],
                    w["bert/embeddings/LayerNorm/beta"])
  adder = (1.0 - mask[:, None, None, :]) * -10000.0
  for layer in range(cfg.num_hidden_layers):
    p = "bert/encoder/layer_%d/" % layer

    def dense(t, name, p=p):
      return t @ w[p + name + "/kernel"] + w[p + name + "/bias"]

    def heads(t):
      return t.reshape(b, s, n, d).transpose(0, 2, 1, 3)

    q = heads(dense(x, "attention/self/query"))
    k = heads(dense(x, "attention/self/key"))
    v = heads(dense(x, "attention/self/value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + adder
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
    a = dense(ctx, "attention/output/dense")
    a = np_adapter(a, w, p + "attention/output/adapters")
    a = np_layer_norm(a + x, w[p + "attention/output/LayerNorm/gamma"],
                      w[p + "attention/output/LayerNorm/beta"])
    inter = np_gelu(dense(a, "intermediate/dense"))
    o = dense(inter, "output/dense")
    o = np_adapter(o, w, p + "output/adapters")
    x = np_layer_norm(o + a, w[p + "output/LayerNorm/gamma"],
                      w[p + "output/LayerNorm/beta"])
  pooled = np.tanh(x[:, 0] @ w["bert/pooler/dense/kernel"] + w["bert/pooler/dense/bias"])
  logits = pooled @ w["output_weights"].T + w["output_bias"]
  return x, pooled, logits


def weights_by_name(model):
  return {n: v.numpy().astype(np.float64)
          for n, v in checkpoint_io.checkpoint_name_map(model).items()}


def mixed_batch(cfg, lengths, seq, seed=1):
  rng = np.random.default_rng(seed)
  b = len(lengths)
  ids = rng.integers(1, cfg.vocab_size, size=(b, seq)).astype(np.int32)
  mask = np.zeros((b, seq), np.int32)
  segs = np.zeros((b, seq), np.int32)
  for i, n in enumerate(lengths):
    mask[i, :n] = 1
    ids[i, n:] = 0
    segs[i, n // 2:n] = 1
  return ids, mask, segs


def features(ids, mask, segs):
  return {"input_ids": tf.constant(ids), "input_mask": tf.constant(mask),
          "segment_ids": tf.constant(segs)}


def loss_and_grads(logits_fn, labels, variables, fused):
  """(mean cross-entropy of logits_fn(), its gradients) as numpy.

  fused: True, False, or "cpu_host" (the kernels' CPU-host forms, as the
  Trainer traces them on a host with CPUs only); logits_fn takes the
  KernelPolicy.
  """
  policy = kernels.KernelPolicy(fused=bool(fused),
                                cpu_host=fused == "cpu_host")
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels, logits_fn(policy)))
  grads = tape.gradient(loss, variables)
  return loss.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]


def test_forward_matches_numpy_reference_tiny():
  cfg = tiny_config()
  model = modeling.BertClassifier(cfg, 3, adapters.AdapterConfig(size=8))
  randomize(model)
  ids, mask, segs = mixed_batch(cfg, [9, 4, 1, 7], seq=9)
  seq_out, pooled = model.encode(features(ids, mask, segs))
  logits = model(features(ids, mask, segs))
  ref_seq, ref_pooled, ref_logits = np_bert(weights_by_name(model), cfg, ids,
                                            mask.astype(np.float64), segs)
  assert np.max(np.abs(seq_out.numpy() - ref_seq)) <= 1e-5
  assert np.max(np.abs(pooled.numpy() - ref_pooled)) <= 1e-5
  assert np.max(np.abs(logits.numpy() - ref_logits)) <= 1e-5
  # The adapters really are in the computation: removing them changes it.
  w = weights_by_name(model)
  no_adapters = {k: v for k, v in w.items() if "/adapters/" not in k}
  _, _, other = np_bert(no_adapters, cfg, ids, mask.astype(np.float64), segs)
  assert np.max(np.abs(other - ref_logits)) > 1e-3


needs_onednn = pytest.mark.skipif(
    not kernels.onednn_layer_norm_available(),
    reason="this TensorFlow build has no usable oneDNN LayerNorm kernel")


@needs_onednn
def test_onednn_inference_path_matches_numpy_reference():
  # The CPU eval step's LayerNorms are TensorFlow's oneDNN kernel.
  cfg = tiny_config()
  model = modeling.BertClassifier(cfg, 3, adapters.AdapterConfig(size=8))
  randomize(model, seed=2)
  ids, mask, segs = mixed_batch(cfg, [9, 4, 1, 7], seq=9)

  @tf.function
  def forward(inputs):
    return model(inputs, policy=kernels.KernelPolicy(cpu_host=True))

  logits = forward(features(ids, mask, segs))
  graph = forward.get_concrete_function(features(ids, mask, segs)).graph
  op_types = {op.type for f in [graph] + [
      g.graph for g in graph._functions.values()]  # pylint: disable=protected-access
              for op in f.get_operations()}
  assert "_MklLayerNorm" in op_types
  _, _, ref_logits = np_bert(weights_by_name(model), cfg, ids,
                             mask.astype(np.float64), segs)
  assert np.max(np.abs(logits.numpy() - ref_logits)) <= 1e-5


@needs_onednn
def test_onednn_probe_answers_inside_a_trace():
  # The first question usually comes while the eval step is being traced;
  # the probe must still run (eagerly) and say yes.
  kernels.onednn_layer_norm_available.cache_clear()
  seen = []

  @tf.function
  def traced():
    seen.append(kernels.onednn_layer_norm_available())
    return tf.constant(0)

  traced()
  assert seen == [True]


def _layer_norm_inputs(seed):
  """x, residual, dy [37, 24] and gamma, beta [24] of a LayerNorm test."""
  rng = np.random.default_rng(seed)
  x, residual, dy = (tf.constant(rng.normal(2.0, 3.0, [37, 24]), tf.float32)
                     for _ in range(3))
  gamma, beta = (tf.constant(rng.normal(1.0, 0.5, [24]), tf.float32)
                 for _ in range(2))
  return x, residual, dy, gamma, beta


@needs_onednn
def test_onednn_layer_norm_value_and_gradient():
  x, residual, dy, gamma, beta = _layer_norm_inputs(5)

  def value_and_grads(layer_norm):
    with tf.GradientTape() as tape:
      tape.watch([x, residual, gamma, beta])
      y = layer_norm(x, residual, gamma, beta, 1e-3)
    return [y] + tape.gradient(y, [x, residual, gamma, beta],
                               output_gradients=dy)

  got = value_and_grads(kernels.onednn_layer_norm)
  want = value_and_grads(lambda *a: kernels.ln_forward(*a)[0])
  for a, b in zip(got, want):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5)
  h = (x + residual).numpy()
  np.testing.assert_allclose(
      got[0].numpy(), (h - h.mean(-1, keepdims=True)) / np.sqrt(
          h.var(-1, keepdims=True) + 1e-3) * gamma.numpy() + beta.numpy(),
      atol=2e-5)


def test_layer_norm_cpu_form_matches():
  # The XLA:CPU form of the LayerNorm kernels (row means as products)
  # gives the numbers of the reductions: output, x̂, 1 / std and gradients.
  x, residual, dy, gamma, beta = _layer_norm_inputs(6)
  forward = kernels.ln_forward(x, residual, gamma, beta, 1e-3)
  backward = kernels.ln_backward(forward[1], forward[2], gamma, dy)
  forward_cpu = kernels.ln_forward_cpu_xla(x, residual, gamma, beta, 1e-3)
  backward_cpu = kernels.ln_backward_cpu_xla(forward[1], forward[2], gamma, dy)
  for name, a, b in zip(["y", "x_hat", "rstd", "dx", "dgamma", "dbeta"],
                        list(forward_cpu) + list(backward_cpu),
                        list(forward) + list(backward)):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                               atol=1e-5 * np.max(np.abs(b.numpy())),
                               err_msg=name)


def test_padding_does_not_change_real_positions():
  cfg = tiny_config()
  model = modeling.BertClassifier(cfg, 2, adapters.AdapterConfig(size=4))
  randomize(model, seed=3)
  ids, mask, segs = mixed_batch(cfg, [5], seq=5)
  short = model(features(ids, mask, segs)).numpy()
  pad = lambda a: np.pad(a, ((0, 0), (0, 7)))
  long = model(features(pad(ids), pad(mask), pad(segs))).numpy()
  np.testing.assert_allclose(short, long, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_training_step_does_not_depend_on_padding(fused):
  # Dropout masks are keyed by (example, head, position, feature), so a batch
  # trimmed to its longest example trains exactly as the one padded to the
  # maximum: same loss, same gradients (length bucketing changes no number).
  cfg = tiny_config()
  model = modeling.BertClassifier(cfg, 2, adapters.AdapterConfig(size=4))
  randomize(model, seed=4)
  modeling.set_train_mode(model, "adapters")
  ids, mask, segs = mixed_batch(cfg, [7, 4, 2], seq=7)
  labels = tf.constant([0, 1, 1])
  seed = tf.constant([11, 5], tf.int64)

  def run(ids, mask, segs):
    return loss_and_grads(
        lambda policy: model(features(ids, mask, segs), training=True,
                             policy=policy,
                      dropout_seed=seed),
        labels, model.trainable_variables, fused)

  pad = lambda a: np.pad(a, ((0, 0), (0, 9)))
  short_loss, short_grads = run(ids, mask, segs)
  long_loss, long_grads = run(pad(ids), pad(mask), pad(segs))
  np.testing.assert_allclose(short_loss, long_loss, rtol=1e-6)
  for a, b in zip(short_grads, long_grads):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # A different seed gives a different loss: dropout is on.
  policy = kernels.KernelPolicy(fused=fused)
  other = model(features(ids, mask, segs), training=True, policy=policy,
                dropout_seed=tf.constant([11, 6], tf.int64)).numpy()
  same = model(features(ids, mask, segs), training=True, policy=policy,
               dropout_seed=seed).numpy()
  assert np.max(np.abs(other - same)) > 1e-4


@pytest.mark.parametrize("train_mode,form", [("adapters", True),
                                             ("full", True),
                                             ("adapters", "cpu_host"),
                                             ("full", "cpu_host")])
def test_fused_kernels_give_the_plain_ops_numbers(train_mode, form):
  # The compiled kernels and their hand-written gradients (GELU, LayerNorm,
  # dropout, attention core, projections, adapters), in their general and
  # their CPU-host forms, against the same model built from plain
  # TensorFlow ops and differentiated by TensorFlow.
  cfg = tiny_config()
  model = modeling.BertClassifier(cfg, 2, adapters.AdapterConfig(size=4))
  randomize(model, seed=8)
  trainable = [v for _, v in modeling.set_train_mode(model, train_mode)]
  ids, mask, segs = mixed_batch(cfg, [7, 4, 2, 6], seq=7)
  labels = tf.constant([0, 1, 1, 0])
  seed = tf.constant([3, 4], tf.int64)

  def run(fused):
    return loss_and_grads(
        lambda policy: model(features(ids, mask, segs), training=True,
                             policy=policy,
                      dropout_seed=seed),
        labels, trainable, fused)

  fused_loss, fused_grads = run(form)
  plain_loss, plain_grads = run(False)
  np.testing.assert_allclose(fused_loss, plain_loss, rtol=1e-6)
  assert len(fused_grads) == len(trainable)
  for variable, a, b in zip(trainable, fused_grads, plain_grads):
    if not variable.path.endswith("key/bias"):  # Exactly 0 in theory.
      assert np.max(np.abs(b)) > 0, variable.path
    np.testing.assert_allclose(a, b, atol=1e-6 + 1e-5 * np.max(np.abs(b)),
                               err_msg=variable.path)


@pytest.mark.parametrize("train_mode,fused", [("adapters", True),
                                              ("full", True),
                                              ("adapters", False)])
def test_output_range_gives_the_whole_computations_rows(train_mode, fused):
  # The classifier's last layer computes the [CLS] row only (output_range=1):
  # loss and every gradient are those of the whole computation, dropout on;
  # encode(output_range=k) returns the first k rows of the whole output.
  cfg = tiny_config(num_hidden_layers=3)
  model = modeling.BertClassifier(cfg, 2, adapters.AdapterConfig(size=4))
  randomize(model, seed=12)
  trainable = [v for _, v in modeling.set_train_mode(model, train_mode)]
  ids, mask, segs = mixed_batch(cfg, [7, 4, 2, 6], seq=7)
  inputs = features(ids, mask, segs)
  labels = tf.constant([0, 1, 1, 0])
  seed = tf.constant([9, 2], tf.int64)

  def whole(policy):
    _, pooled = model.encode(inputs, training=True, dropout_seed=seed,
                             policy=policy)
    return model.classifier(pooled, training=True, policy=policy,
                            seed=kernels.fold_seed(seed, 1))

  short_loss, short_grads = loss_and_grads(
      lambda policy: model(inputs, training=True, dropout_seed=seed,
                           policy=policy), labels,
      trainable, fused)
  whole_loss, whole_grads = loss_and_grads(whole, labels, trainable, fused)
  np.testing.assert_allclose(short_loss, whole_loss, rtol=1e-6)
  for variable, a, b in zip(trainable, short_grads, whole_grads):
    np.testing.assert_allclose(a, b, atol=1e-6 + 1e-5 * np.max(np.abs(b)),
                               err_msg=variable.path)
  for training in (False, True):
    policy = kernels.KernelPolicy(fused=fused)
    whole, pooled = model.encode(inputs, training=training,
                                 dropout_seed=seed, policy=policy)
    first, first_pooled = model.encode(inputs, training=training,
                                       dropout_seed=seed, output_range=2,
                                       policy=policy)
    assert first.shape == (4, 2, cfg.hidden_size)
    np.testing.assert_allclose(first.numpy(), whole.numpy()[:, :2], atol=1e-5)
    np.testing.assert_allclose(first_pooled.numpy(), pooled.numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5, 40, 40), (6, 40, 9), (40, 7), (41,)])
def test_dropout_mask_keyed_by_coordinates(shape):
  seed = tf.constant([1, 2], tf.int64)
  keep = kernels.keep_mask(tf.zeros(shape), seed, 0.1).numpy()
  assert keep.shape == shape
  # About 10% dropped (binomial: n >= 287, 6 sigma).
  n = keep.size
  assert abs((1.0 - keep.mean()) - 0.1) <= 6 * math.sqrt(0.09 / n) + 1e-9
  if len(shape) >= 2:
    # The mask of the first rows/columns does not depend on the padded length
    # of the last two axes.
    trimmed = shape[:-2] + (shape[-2] - 3, shape[-1] - 5)
    small = kernels.keep_mask(tf.zeros(trimmed), seed, 0.1).numpy()
    np.testing.assert_array_equal(
        small, keep[..., :trimmed[-2], :trimmed[-1]])
  # Examples [1, 3) with their offset in the seed draw the whole batch's
  # masks for them (micro-batches).
  if len(shape) >= 2:
    part = kernels.keep_mask(tf.zeros((2,) + shape[1:]),
                             kernels.dropout_seed_for_slice(seed, 1),
                             0.1).numpy()
    np.testing.assert_array_equal(part, keep[1:3])
  # Same under XLA; another seed gives another mask.
  xla = tf.function(kernels.keep_mask, jit_compile=True)
  np.testing.assert_array_equal(xla(tf.zeros(shape), seed, 0.1).numpy(), keep)
  other = kernels.keep_mask(tf.zeros(shape), tf.constant([1, 3], tf.int64),
                            0.1).numpy()
  assert (other != keep).mean() > 0.1


@pytest.mark.parametrize("dtype,rate,rows", [("float32", 0.1, 9),
                                              ("float32", 0.0, 9),
                                              ("float32", 0.1, 4),
                                              ("bfloat16", 0.1, 9)])
def test_attention_core_gradient(dtype, rate, rows):
  # The compiled attention core's hand-written backward pass (softmax row
  # sums taken from the output, the dropout mask drawn again inside the
  # d(scores) kernel) against TensorFlow's gradient of the plain ops, in
  # float32 and with bfloat16 inputs, for all rows and for fewer query rows.
  rng = np.random.default_rng(5)
  batch, heads, seq, size = 3, 2, 9, 8
  dtype = tf.as_dtype(dtype)
  q = tf.constant(rng.normal(size=(batch, heads, rows, size)), dtype)
  k = tf.constant(rng.normal(size=(batch, heads, seq, size)), dtype)
  v = tf.constant(rng.normal(size=(batch, heads, seq, size)), dtype)
  lengths = np.array([9, 5, 2])
  mask_adder = tf.constant(
      (np.arange(seq)[None, None, None, :] >= lengths[:, None, None, None])
      * -10000.0, tf.float32)
  weights = tf.constant(rng.normal(size=(batch, heads, rows, size)),
                        tf.float32)
  seed = tf.constant([7, 3], tf.int64)

  def run(fused):
    with tf.GradientTape() as tape:
      tape.watch([q, k, v])
      context = kernels.attention_context(q, k, v, mask_adder, 0.35, rate,
                                          True, seed, fused=fused)
      loss = tf.reduce_sum(tf.cast(context, tf.float32) * weights)
    return [context] + tape.gradient(loss, [q, k, v])

  fused, plain = run(True), run(False)
  tolerance = 1e-5 if dtype == tf.float32 else 3e-2
  for name, a, b in zip(["context", "dq", "dk", "dv"], fused, plain):
    assert a.dtype == dtype, name
    a, b = tf.cast(a, tf.float32).numpy(), tf.cast(b, tf.float32).numpy()
    assert np.max(np.abs(b)) > 0, name
    np.testing.assert_allclose(a, b, atol=tolerance * np.max(np.abs(b)),
                               err_msg=name)


@pytest.mark.parametrize("act", ["gelu", "gelu_exact", "relu", "tanh", "linear"])
def test_activations(act):
  x = tf.constant([-3.0, -0.5, 0.0, 0.7, 2.5])
  got = modeling.get_activation(act)(x).numpy()
  xs = x.numpy().astype(np.float64)
  want = {"gelu": np_gelu(xs),
          "gelu_exact": np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xs]),
          "relu": np.maximum(xs, 0), "tanh": np.tanh(xs), "linear": xs}[act]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_gelu_is_tanh_approximation_not_erf():
  x = tf.constant([1.5])
  assert abs(float(modeling.get_activation("gelu")(x)[0]) - np_gelu(np.array([1.5]))[0]) < 1e-7
  assert abs(float(modeling.get_activation("gelu")(x)[0])
             - float(modeling.get_activation("gelu_exact")(x)[0])) > 1e-5


def test_real_checkpoint_matches_numpy_reference(minilm_dir):
  cfg = modeling.BertConfig.from_json_file(os.path.join(minilm_dir, "bert_config.json"))
  model = modeling.BertClassifier(cfg, 2, adapters.AdapterConfig(size=64, init_scale=0.05))
  restored, fresh = checkpoint_io.load_checkpoint(
      model, os.path.join(minilm_dir, "bert_model.ckpt"))
  assert len(restored) == 103
  assert all("/adapters/" in n or n in ("output_weights", "output_bias") for n in fresh)
  assert len(fresh) == 6 * 2 * 4 + 2
  rng = np.random.default_rng(5)
  for name in fresh:  # random adapters and head, big enough to matter
    v = dict(checkpoint_io.checkpoint_name_map(model))[name]
    v.assign(rng.normal(0, 0.05, size=v.shape).astype(np.float32))
  ids, mask, segs = mixed_batch(cfg, [64, 17, 3], seq=64, seed=7)
  logits = model(features(ids, mask, segs)).numpy()
  _, _, ref = np_bert(weights_by_name(model), cfg, ids, mask.astype(np.float64), segs)
  assert np.max(np.abs(logits - ref)) <= 1e-4


def test_forward_compiles_with_xla():
  cfg = tiny_config()
  model = modeling.BertClassifier(cfg, 2, adapters.AdapterConfig(size=4))
  randomize(model, seed=2)
  ids, mask, segs = mixed_batch(cfg, [6, 3], seq=6)
  eager = model(features(ids, mask, segs)).numpy()
  compiled = tf.function(lambda f: model(f), jit_compile=True)
  xla = compiled(features(ids, mask, segs)).numpy()
  np.testing.assert_allclose(eager, xla, atol=1e-5)
  # Training-mode dropout under XLA is reproducible given the seed.
  train = tf.function(lambda f, s: model(f, training=True, dropout_seed=s),
                      jit_compile=True)
  seed = tf.constant([3, 4], tf.int64)
  a = train(features(ids, mask, segs), seed).numpy()
  b = train(features(ids, mask, segs), seed).numpy()
  c = train(features(ids, mask, segs), tf.constant([3, 5], tf.int64)).numpy()
  np.testing.assert_array_equal(a, b)
  assert np.max(np.abs(a - c)) > 0


BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072,
                 hidden_act="gelu", hidden_dropout_prob=0.1,
                 attention_probs_dropout_prob=0.1,
                 max_position_embeddings=512, type_vocab_size=2,
                 initializer_range=0.02)


def test_bert_base_trainable_parameter_counts():
  model = modeling.BertClassifier(modeling.BertConfig(**BERT_BASE), 2,
                                  adapters.get_preset("adapter-bert"))
  trainable = modeling.set_train_mode(model, "adapters")
  count = lambda pairs: sum(int(np.prod(v.shape)) for _, v in pairs)
  adapter = [(n, v) for n, v in trainable if "/adapters/" in n]
  norms = [(n, v) for n, v in trainable if "LayerNorm" in n]
  head = [(n, v) for n, v in trainable if n in ("output_weights", "output_bias")]
  assert count(adapter) == 2_379_264
  assert count(norms) == 38_400
  assert count(head) == 1_538
  assert count(trainable) == 2_419_202
  assert len(trainable) == len(adapter) + len(norms) + len(head)
  # Keras agrees with the name-based selection.
  assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 2_419_202
  # BERT-base is 109,482,240 parameters; plus adapters and head (the
  # reference's model: the active view).
  view = checkpoint_io.checkpoint_name_map(model).values()
  assert sum(int(np.prod(v.shape)) for v in view) == 111_863_042
  # The model also keeps the base's own LayerNorms beside the adapter's
  # trained copies.
  assert (sum(int(np.prod(v.shape)) for v in model.weights)
          == 111_863_042 + 38_400)


def test_train_modes():
  cfg = tiny_config()
  model = modeling.BertClassifier(cfg, 2, adapters.AdapterConfig(size=4))
  all_names = list(checkpoint_io.checkpoint_name_map(model))
  full = [n for n, _ in modeling.set_train_mode(model, "full")]
  assert full == all_names
  head = [n for n, _ in modeling.set_train_mode(model, "head")]
  assert head == ["output_weights", "output_bias"]
  assert len(model.trainable_variables) == 2
  names = [n for n, _ in modeling.set_train_mode(model, "adapters")]
  assert "bert/pooler/dense/kernel" not in names
  assert "bert/embeddings/word_embeddings" not in names
  assert "bert/embeddings/LayerNorm/gamma" in names
  assert not any(n.endswith("/kernel") for n in names)
  with pytest.raises(UserError, match="unknown train_mode 'bogus'"):
    modeling.set_train_mode(model, "bogus")


def test_adapter_size_zero_is_plain_bert():
  cfg = tiny_config()
  plain = modeling.BertClassifier(cfg, 2, adapters.get_preset("none"))
  names = list(checkpoint_io.checkpoint_name_map(plain))
  assert not any("adapters" in n for n in names)
  assert not any("adapter" in v.path for v in plain.weights)
  assert len(plain.weights) == len(names)


def test_adapter_layer_init_and_identity_start():
  layer = adapters.BottleneckAdapter(adapter_size=64, init_scale=1e-3)
  layer.build((None, 256))
  w1 = layer.weights1.numpy()
  assert w1.shape == (256, 64) and layer.biases1.shape == (1, 64)
  assert layer.weights2.shape == (64, 256) and layer.biases2.shape == (1, 256)
  assert 0.7e-3 < w1.std() < 1.0e-3  # truncated normal at 2 sigma: ~0.88 sigma
  assert np.abs(w1).max() <= 2e-3 + 1e-9
  assert not layer.biases1.numpy().any() and not layer.biases2.numpy().any()
  x = tf.random.normal([5, 256])
  assert np.max(np.abs(layer(x).numpy() - x.numpy())) < 1e-3
  config = layer.get_config()
  clone = adapters.BottleneckAdapter.from_config(config)
  assert clone.adapter_size == 64 and clone.init_scale == 1e-3


def test_adapter_config_presets_and_json(tmp_path):
  assert adapters.get_preset("Adapter-BERT").size == 64
  assert adapters.get_preset("adapter-bert-8").size == 8
  cfg = adapters.AdapterConfig(size=16, locations=["ffn_output"])
  path = tmp_path / "adapter_config.json"
  path.write_text(cfg.to_json_string())
  assert adapters.AdapterConfig.from_json_file(str(path)) == cfg
  with pytest.raises(Exception):
    cfg.size = 3  # frozen
  with pytest.raises(UserError, match="unknown adapter preset 'nope'"):
    adapters.get_preset("nope")
  with pytest.raises(UserError, match="unknown adapter location"):
    adapters.AdapterConfig(locations=("pooler",))
  with pytest.raises(UserError, match="adapter size must be an integer >= 0"):
    adapters.AdapterConfig(size=-1)


def test_adapter_only_at_chosen_location():
  cfg = tiny_config(num_hidden_layers=1)
  model = modeling.BertClassifier(
      cfg, 2, adapters.AdapterConfig(size=4, locations=("ffn_output",)))
  names = [n for n in checkpoint_io.checkpoint_name_map(model) if "adapters" in n]
  assert names == ["bert/encoder/layer_0/output/adapters/" + w
                   for w in ("weights1", "biases1", "weights2", "biases2")]


def test_layers_have_config():
  cfg = tiny_config()
  model = modeling.BertClassifier(cfg, 2, adapters.AdapterConfig(size=4))
  block = model.bert.blocks[1]
  clone = modeling.TransformerBlock.from_config(block.get_config())
  assert clone.config == cfg and clone.adapter_configs["default"].size == 4
  assert clone.index == 1
  for layer in (model.bert.embeddings, model.bert.pooler, model.bert,
                block.attention, model.classifier):
    assert type(layer).from_config(layer.get_config()) is not None


# ---------------------------------------------------------------------------
# BertConfig
# ---------------------------------------------------------------------------


def write_json(tmp_path, obj, name="bert_config.json"):
  path = tmp_path / name
  path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return str(path)


def test_config_round_trip_and_extra_keys(tmp_path, caplog):
  values = dict(BERT_BASE, directionality="bidi", pooler_fc_size=768)
  cfg = modeling.BertConfig.from_json_file(write_json(tmp_path, values))
  assert cfg.extra == {"directionality": "bidi", "pooler_fc_size": 768}
  assert json.loads(cfg.to_json_string()) == values
  again = modeling.BertConfig.from_dict(json.loads(cfg.to_json_string()))
  assert again == cfg


@pytest.mark.parametrize("change,message", [
    (dict(num_attention_heads=5), "hidden_size 768 is not a multiple of num_attention_heads 5"),
    (dict(hidden_size=0), "hidden_size must be a positive integer, got 0"),
    (dict(num_hidden_layers=-2), "num_hidden_layers must be a positive integer, got -2"),
    (dict(vocab_size="big"), "vocab_size must be a positive integer, got 'big'"),
    (dict(hidden_act="swishy"), "unknown hidden_act 'swishy'"),
    (dict(hidden_dropout_prob=1.5), r"hidden_dropout_prob must be in \[0, 1\), got 1.5"),
    (dict(initializer_range=0), "initializer_range must be > 0"),
])
def test_config_validation_errors(tmp_path, change, message):
  path = write_json(tmp_path, dict(BERT_BASE, **change))
  with pytest.raises(UserError, match=message) as e:
    modeling.BertConfig.from_json_file(path)
  assert path in str(e.value)


def test_config_missing_keys_and_bad_files(tmp_path):
  values = dict(BERT_BASE)
  del values["intermediate_size"], values["type_vocab_size"]
  with pytest.raises(UserError, match="missing key.*intermediate_size, type_vocab_size"):
    modeling.BertConfig.from_json_file(write_json(tmp_path, values))
  with pytest.raises(UserError, match="is not valid JSON"):
    modeling.BertConfig.from_json_file(write_json(tmp_path, "{nope", "bad.json"))
  with pytest.raises(UserError, match="cannot read BERT config .*absent.json"):
    modeling.BertConfig.from_json_file(str(tmp_path / "absent.json"))
  with pytest.raises(UserError, match="expected a JSON object"):
    modeling.BertConfig.from_json_file(write_json(tmp_path, "[1, 2]", "list.json"))
  latin1 = tmp_path / "latin1.json"
  latin1.write_bytes(b'{"hidden_act": "g\xe9lu"}')
  with pytest.raises(UserError, match=r"latin1.json is not UTF-8 text .* byte 17"):
    modeling.BertConfig.from_json_file(str(latin1))
