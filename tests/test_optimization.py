"""Tests for optimization.py against a NumPy version of the reference update."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.compute import optimization

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (checkpoint name, shape) of a mix of adapter, LayerNorm, bias and kernel
# variables, as they are named in the reference checkpoints.
VARIABLE_SPECS = [
    ("bert/encoder/layer_0/attention/output/adapters/weights1", (4, 3)),
    ("bert/encoder/layer_0/attention/output/adapters/biases1", (3,)),
    ("bert/encoder/layer_0/attention/output/LayerNorm/gamma", (4,)),
    ("bert/encoder/layer_0/output/dense/bias", (5,)),
    ("bert/encoder/layer_0/output/dense/kernel", (3, 5)),
]
WEIGHT_DECAY = 0.1
ADAPTER_WEIGHT_DECAY = 0.3
INIT_LR = 0.05
NUM_TRAIN_STEPS = 12
NUM_WARMUP_STEPS = 3
NUM_STEPS = 10


# ----------------------------------------------------------------------------
# NumPy reference (float64).


def reference_learning_rate(step, init_lr, num_train_steps, num_warmup_steps):
  if num_warmup_steps and step < num_warmup_steps:
    return init_lr * step / num_warmup_steps
  return init_lr * (1.0 - min(step, num_train_steps) / num_train_steps)


def reference_decay_rate(name):
  for pattern in ("LayerNorm", "layer_norm", "bias"):
    if pattern in name:
      return 0.0
  return ADAPTER_WEIGHT_DECAY if "adapters" in name else WEIGHT_DECAY


def reference_train(params, grads_per_step, names, clip_norm=1.0):
  """Returns (params, m, v, clipped_steps) after the reference updates."""
  params = [p.astype(np.float64) for p in params]
  m = [np.zeros_like(p) for p in params]
  v = [np.zeros_like(p) for p in params]
  clipped_steps = []
  for step, grads in enumerate(grads_per_step):
    grads = [g.astype(np.float64) for g in grads]
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    if norm > clip_norm:
      clipped_steps.append(step)
    grads = [g * clip_norm / max(norm, clip_norm) for g in grads]
    lr = reference_learning_rate(step, INIT_LR, NUM_TRAIN_STEPS,
                                 NUM_WARMUP_STEPS)
    for i, name in enumerate(names):
      m[i] = 0.9 * m[i] + 0.1 * grads[i]
      v[i] = 0.999 * v[i] + 0.001 * grads[i] ** 2
      update = m[i] / (np.sqrt(v[i]) + 1e-6)
      update = update + reference_decay_rate(name) * params[i]
      params[i] = params[i] - lr * update
  return params, m, v, clipped_steps


def make_problem(seed=0):
  rng = np.random.RandomState(seed)
  params = [rng.uniform(-1.5, 1.5, size=shape).astype(np.float32)
            for _, shape in VARIABLE_SPECS]
  grads_per_step = []
  for _ in range(NUM_STEPS):
    scale = rng.choice([0.03, 0.1, 0.4, 1.0])  # Global norm ~0.2 to ~6.
    grads_per_step.append([
        (scale * rng.normal(size=shape)).astype(np.float32)
        for _, shape in VARIABLE_SPECS])
  return params, grads_per_step


def make_optimizer():
  return optimization.create_optimizer(
      INIT_LR, NUM_TRAIN_STEPS, NUM_WARMUP_STEPS,
      weight_decay_rate=WEIGHT_DECAY,
      adapter_weight_decay_rate=ADAPTER_WEIGHT_DECAY)


def build(params, optimizer):
  variables = [tf.Variable(p, name=name.replace("/", "_"))
               for (name, _), p in zip(VARIABLE_SPECS, params)]
  optimizer.build([(name, var) for (name, _), var in
                   zip(VARIABLE_SPECS, variables)])
  return variables


def run_steps(optimizer, grads_per_step, mode, learning_rate_at):
  """Applies the gradients step by step (eagerly, in a tf.function or under
  XLA), checking each step's learning rate against `learning_rate_at`."""
  step_fn = optimizer.apply_gradients
  if mode == "function":
    step_fn = tf.function(step_fn)
  elif mode == "jit":
    step_fn = tf.function(step_fn, jit_compile=True)
  for step, grads in enumerate(grads_per_step):
    lr = step_fn([tf.constant(g) for g in grads], tf.constant(step, tf.int64))
    np.testing.assert_allclose(
        float(lr), learning_rate_at(step, INIT_LR, NUM_TRAIN_STEPS,
                                    NUM_WARMUP_STEPS), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------
# Update rule.


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
def test_matches_numpy_reference(mode):
  params, grads_per_step = make_problem()
  names = [name for name, _ in VARIABLE_SPECS]
  want_params, want_m, want_v, clipped_steps = reference_train(
      params, grads_per_step, names)
  # The problem must exercise both the clipped and the unclipped path.
  assert 0 < len(clipped_steps) < NUM_STEPS

  optimizer = make_optimizer()
  variables = build(params, optimizer)
  run_steps(optimizer, grads_per_step, mode, reference_learning_rate)

  slots = optimizer.slot_variables()
  max_param_change = 0.0
  for i, (name, _) in enumerate(VARIABLE_SPECS):
    got = variables[i].numpy().astype(np.float64)
    max_param_change = max(max_param_change,
                           np.max(np.abs(want_params[i] - params[i])))
    assert np.max(np.abs(got - want_params[i])) <= 1e-6, name
    assert np.max(np.abs(slots[name + "/adam_m"].numpy() - want_m[i])) <= 1e-6
    assert np.max(np.abs(slots[name + "/adam_v"].numpy() - want_v[i])) <= 1e-6
  # The variables moved far more than the tolerance, so it is meaningful.
  assert max_param_change > 0.1


def test_weight_decay_selection_by_name():
  optimizer = optimization.AdamWeightDecay(
      learning_rate=0.5, weight_decay_rate=0.1, adapter_weight_decay_rate=0.3)
  rate = optimizer.weight_decay_rate_for
  assert rate("bert/encoder/layer_0/attention/output/adapters/weights1") == 0.3
  assert rate("bert/encoder/layer_0/output/adapters/biases1") == 0.0
  assert rate("bert/encoder/layer_0/output/adapters/layer_norm/gamma") == 0.0
  assert rate("bert/encoder/layer_0/attention/output/LayerNorm/gamma") == 0.0
  assert rate("bert/encoder/layer_0/output/dense/bias") == 0.0
  assert rate("bert/encoder/layer_0/output/dense/kernel") == 0.1
  assert rate("output_weights") == 0.1

  # With zero gradients Adam's step is zero, so only the decay acts:
  # param *= 1 - lr * rate, with the rate chosen by the name.
  params, _ = make_problem()
  variables = build(params, optimizer)
  optimizer.apply_gradients(
      [tf.zeros(shape) for _, shape in VARIABLE_SPECS], step=0)
  for i, (name, _) in enumerate(VARIABLE_SPECS):
    want = params[i] * (1.0 - 0.5 * rate(name))
    np.testing.assert_allclose(variables[i].numpy(), want, rtol=1e-6)
  expected_rates = [0.3, 0.0, 0.0, 0.0, 0.1]
  assert [rate(name) for name, _ in VARIABLE_SPECS] == expected_rates


def test_none_gradient_skips_variable_and_clipping():
  params, grads_per_step = make_problem()
  optimizer = optimization.AdamWeightDecay(0.1)
  variables = build(params, optimizer)
  grads = [tf.constant(g) for g in grads_per_step[0]]
  grads[1] = None
  optimizer.apply_gradients(grads, step=0)
  np.testing.assert_array_equal(variables[1].numpy(), params[1])
  slots = optimizer.slot_variables()
  assert not np.any(slots[VARIABLE_SPECS[1][0] + "/adam_m"].numpy())
  assert not np.any(slots[VARIABLE_SPECS[1][0] + "/adam_v"].numpy())
  # The others are clipped by the norm of the gradients that are present.
  kept = [g for i, g in enumerate(grads_per_step[0]) if i != 1]
  norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in kept))
  g0 = grads_per_step[0][0] / max(norm, 1.0)
  np.testing.assert_allclose(
      slots[VARIABLE_SPECS[0][0] + "/adam_m"].numpy(), 0.1 * g0, rtol=1e-5)


def test_low_precision_and_non_finite_gradients():
  params, grads_per_step = make_problem()
  want_opt = optimization.AdamWeightDecay(0.1)
  want_vars = build(params, want_opt)
  got_opt = optimization.AdamWeightDecay(0.1)
  got_vars = build(params, got_opt)
  half = [g.astype(np.float16) for g in grads_per_step[1]]
  want_opt.apply_gradients([tf.constant(g.astype(np.float32)) for g in half],
                           step=3)
  got_opt.apply_gradients([tf.constant(g) for g in half], step=3)
  got_opt_bf16 = optimization.AdamWeightDecay(0.1)
  bf16_vars = build(params, got_opt_bf16)
  got_opt_bf16.apply_gradients(
      [tf.cast(tf.constant(g), tf.bfloat16) for g in half], step=3)
  for want, got, got_bf16 in zip(want_vars, got_vars, bf16_vars):
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    assert np.all(np.isfinite(got_bf16.numpy()))

  # An infinite gradient does not raise; the non-finite values propagate.
  grads = [tf.constant(g) for g in grads_per_step[2]]
  grads[0] = tf.fill(grads[0].shape, np.float16(np.inf))
  got_opt.apply_gradients(grads, step=4)
  assert not np.all(np.isfinite(got_vars[0].numpy()))


# ----------------------------------------------------------------------------
# Schedule.


def test_warmup_linear_decay_schedule():
  schedule = optimization.WarmupLinearDecay(
      init_lr=1e-3, num_train_steps=100, num_warmup_steps=10)
  values = {s: float(schedule(tf.constant(s))) for s in
            (0, 5, 9, 10, 50, 99, 100, 150)}
  assert values[0] == 0.0
  np.testing.assert_allclose(values[5], 0.5e-3, rtol=1e-6)
  np.testing.assert_allclose(values[9], 0.9e-3, rtol=1e-6)
  # End of warmup: the linear decay measured from step 0, not init_lr.
  np.testing.assert_allclose(values[10], 1e-3 * 0.9, rtol=1e-6)
  np.testing.assert_allclose(values[50], 0.5e-3, rtol=1e-6)
  np.testing.assert_allclose(values[99], 1e-5, rtol=1e-4)
  assert values[100] == 0.0
  assert values[150] == 0.0
  assert schedule(3).dtype == tf.float32
  assert schedule(tf.constant(3, tf.int64)).shape == ()
  assert schedule.get_config() == {
      "init_lr": 1e-3, "num_train_steps": 100, "num_warmup_steps": 10}

  no_warmup = optimization.WarmupLinearDecay(2.0, 4, 0)
  assert [float(no_warmup(s)) for s in range(6)] == [2.0, 1.5, 1.0, 0.5, 0.0,
                                                      0.0]


# ----------------------------------------------------------------------------
# Slots.


def test_slot_names_and_only_built_variables():
  params, _ = make_problem()
  optimizer = make_optimizer()
  variables = [tf.Variable(p) for p in params]
  frozen = tf.Variable(np.ones(3, np.float32), trainable=False)
  built = [(VARIABLE_SPECS[i][0], variables[i]) for i in (0, 2, 4)]
  optimizer.build(built)

  slots = optimizer.slot_variables()
  expected = []
  for name, _ in built:
    expected += [name + "/adam_m", name + "/adam_v"]
  assert sorted(slots) == sorted(expected)
  for name, var in built:
    for suffix in ("/adam_m", "/adam_v"):
      slot = slots[name + suffix]
      assert slot.shape == var.shape
      assert slot.dtype == tf.float32
      assert not slot.trainable
      assert not np.any(slot.numpy())
  assert optimizer.variable_names == [name for name, _ in built]

  with pytest.raises(ValueError, match="got 5 gradients for 3 variables"):
    optimizer.apply_gradients([None] * 5, step=0)
  with pytest.raises(ValueError, match="already"):
    optimizer.build(built)
  with pytest.raises(ValueError, match="not trainable"):
    make_optimizer().build([("frozen", frozen)])
  with pytest.raises(ValueError, match="before apply_gradients"):
    make_optimizer().apply_gradients([tf.zeros(3)], step=0)


def test_keras_variables_are_accepted():
  import keras  # pylint: disable=g-import-not-at-top
  layer = keras.layers.Dense(2)
  layer.build((None, 3))
  optimizer = optimization.AdamWeightDecay(0.1)
  optimizer.build([("classifier/kernel", layer.kernel),
                   ("classifier/bias", layer.bias)])
  before = layer.kernel.numpy().copy()
  optimizer.apply_gradients([tf.ones((3, 2)), tf.ones((2,))], step=1)
  assert not np.allclose(layer.kernel.numpy(), before)
  assert set(optimizer.slot_variables()) == {
      "classifier/kernel/adam_m", "classifier/kernel/adam_v",
      "classifier/bias/adam_m", "classifier/bias/adam_v"}


# ----------------------------------------------------------------------------
# MirroredStrategy over two logical CPUs (in a fresh process, because the
# logical devices must be configured before TensorFlow initialises).

_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from adapter_bert.compute import optimization

    GLOBAL_BATCH = 8
    STEPS = 5
    rng = np.random.RandomState(0)
    X = rng.normal(size=(GLOBAL_BATCH, 6)).astype(np.float32)
    Y = rng.randint(0, 3, size=(GLOBAL_BATCH,)).astype(np.int32)
    INIT = [
        ("bert/encoder/layer_0/output/adapters/kernel",
         rng.normal(size=(6, 8)).astype(np.float32)),
        ("bert/encoder/layer_0/output/adapters/bias", np.zeros(8, np.float32)),
        ("bert/encoder/layer_0/output/LayerNorm/gamma",
         np.ones(8, np.float32)),
        ("output_weights", rng.normal(size=(8, 3)).astype(np.float32)),
        ("output_bias", np.zeros(3, np.float32)),
    ]

    def loss_fn(variables, x, y):
      w1, b1, gamma, w2, b2 = variables
      hidden = tf.nn.relu(tf.matmul(x, w1) + b1) * gamma  # [batch, 8]
      logits = tf.matmul(hidden, w2) + b2  # [batch, 3]
      per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=y, logits=logits)
      # Divided by the GLOBAL batch size, whatever the replica's share.
      return tf.reduce_sum(per_example) / GLOBAL_BATCH

    def make(strategy):
      with strategy.scope():
        variables = [tf.Variable(v, name=n.replace("/", "_")) for n, v in INIT]
        optimizer = optimization.create_optimizer(
            0.1, num_train_steps=10, num_warmup_steps=2,
            weight_decay_rate=0.05, adapter_weight_decay_rate=0.2,
            optimizer=sys.argv[2])
        optimizer.build([(n, v) for (n, _), v in zip(INIT, variables)])
      return variables, optimizer

    def replica_step(variables, optimizer, x, y, step):
      with tf.GradientTape() as tape:
        loss = loss_fn(variables, x, y)
      grads = tape.gradient(loss, variables)
      return optimizer.apply_gradients(grads, step)

    def single_device():
      variables, optimizer = make(tf.distribute.get_strategy())
      with tf.GradientTape() as tape:
        loss = loss_fn(variables, X, Y)
      first_norm = float(tf.linalg.global_norm(tape.gradient(loss, variables)))
      step_fn = tf.function(
          lambda s: replica_step(variables, optimizer, X, Y, s))
      for step in range(STEPS):
        step_fn(tf.constant(step))
      return variables, optimizer, first_norm

    def mirrored(strategy, eager):
      variables, optimizer = make(strategy)
      half = GLOBAL_BATCH // 2
      x = strategy.experimental_distribute_values_from_function(
          lambda ctx: X[ctx.replica_id_in_sync_group * half:
                        (ctx.replica_id_in_sync_group + 1) * half])
      y = strategy.experimental_distribute_values_from_function(
          lambda ctx: Y[ctx.replica_id_in_sync_group * half:
                        (ctx.replica_id_in_sync_group + 1) * half])
      def step_fn(x, y, s):
        return strategy.run(
            lambda a, b: replica_step(variables, optimizer, a, b, s),
            args=(x, y))
      if not eager:
        step_fn = tf.function(step_fn)
      for step in range(STEPS):
        step_fn(x, y, tf.constant(step))
      return variables, optimizer, strategy.num_replicas_in_sync

    def components(value):
      if isinstance(value, tf.distribute.DistributedValues):
        return [c.numpy() for c in value.values]
      return [value.numpy()]

    want_vars, want_opt, first_norm = single_device()
    want = [v.numpy() for v in want_vars]
    want_slots = {k: s.numpy() for k, s in want_opt.slot_variables().items()}
    moved = max(float(np.max(np.abs(w - v))) for w, (_, v) in zip(want, INIT))
    result = {"first_norm": first_norm, "moved": moved}
    # One strategy for both runs: two MirroredStrategy objects in a process
    # would reuse the same collective instance keys.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for eager in (False, True):
      got_vars, got_opt, replicas = mirrored(strategy, eager)
      diff = 0.0
      for w, v in zip(want, got_vars):
        for c in components(v):
          diff = max(diff, float(np.max(np.abs(c - w))))
      for key, slot in got_opt.slot_variables().items():
        assert isinstance(slot, tf.distribute.DistributedValues), key
        for c in components(slot):
          diff = max(diff, float(np.max(np.abs(c - want_slots[key]))))
      result["eager" if eager else "function"] = diff
      result["replicas"] = replicas
    print("RESULT " + json.dumps(result))
""")


@pytest.mark.parametrize("name", ["adam_weight_decay", "adamw"])
def test_mirrored_two_cpus_matches_single_device(tmp_path, name):
  script = tmp_path / "mirrored_check.py"
  script.write_text(_MIRRORED_SCRIPT)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, str(script), REPO_ROOT, name], capture_output=True,
      text=True, timeout=300, env=env, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[
      -3000:]
  result = json.loads(lines[-1][len("RESULT "):])
  assert result["replicas"] == 2
  # Clipping acts on the summed gradients: make sure it is exercised.
  assert result["first_norm"] > 1.0
  assert result["moved"] > 0.05
  assert result["function"] <= 1e-5
  assert result["eager"] <= 1e-5


# One adapter per method family: the bottleneck family (reference and
# AdapterHub's), Compacter, LoRA, (IA)^3, prefix and prompt tuning, unions,
# Basirat's layer attention.
_DECAY_METHODS = ["adapter-bert", "pfeiffer", "houlsby+inv", "parallel",
                  "compacter", "lora", "ia3", "prefix_tuning",
                  "prompt_tuning", "mam", "layer_attention"]


def _decay_model(method):
  from adapter_bert import adapters  # pylint: disable=g-import-not-at-top
  from adapter_bert.model import modeling  # pylint: disable=g-import-not-at-top
  config = modeling.BertConfig(
      vocab_size=40, hidden_size=16, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
      type_vocab_size=2)
  model = modeling.BertAdapterModel(config)
  if method == "adapter-bert":
    method = adapters.AdapterConfig(size=4)
  elif method == "compacter":  # A bottleneck divisible by phm_dim here.
    method = adapters.get_preset("compacter").replace(reduction_factor=2)
  elif method == "layer_attention":
    method = adapters.LayerAttentionConfig(reduced_size=4)
  model.add_adapter("t", method)
  model.add_classification_head("t", 2)
  model.train_adapter("t")
  return model


def _expected_rates(model, adapter_rate, base_rate):
  """{checkpoint name: rate} as documented: 0 for LayerNorms and biases,
  the adapter rate for every variable the method owns (its tag), the base
  rate for the head."""
  view = model.adapter_view("t")
  out = {}
  for name, (variable, tag) in view.checkpoint_variables().items():
    if not variable.trainable:
      continue
    if any(p in name for p in ("LayerNorm", "layer_norm", "bias")):
      out[name] = 0.0
    elif tag.kind == "adapter":
      out[name] = adapter_rate
    else:
      out[name] = base_rate
  return out


@pytest.mark.parametrize("method", _DECAY_METHODS)
def test_adapter_weight_decay_reaches_every_method(method):
  """--adapter_weight_decay_rate and --weight_decay_rate, chosen from the
  tags (a method's variables need not have "adapters" in their names), for
  the command line's optimizer and for compile/fit's."""
  model = _decay_model(method)
  want = _expected_rates(model, 0.25, 0.125)
  assert 0.25 in want.values(), "no decayed adapter variable: %s" % want
  # The command line: Trainer hands the view's tags to AdamWeightDecay.
  view = model.adapter_view("t")
  named = [(n, v) for n, v in view.checkpoint_name_map().items()
           if v.trainable]
  rule = optimization.AdamWeightDecay(
      1e-3, weight_decay_rate=0.125, adapter_weight_decay_rate=0.25)
  rule.build(named, adapter_names=set(view.adapter_names()))
  got = dict(zip(rule.variable_names, rule._decay_rates))  # pylint: disable=protected-access
  assert got == want
  # compile/fit: the Keras optimizer gets the same tags from the model.
  keras_opt = optimization.KerasAdamWeightDecay(
      1e-3, weight_decay_rate=0.125, adapter_weight_decay_rate=0.25)
  model.compile(optimizer=keras_opt)
  keras_opt.build(model.trainable_variables)
  by_key = {keras_opt._var_key(v): n for n, v in named}  # pylint: disable=protected-access
  got = {by_key[k]: r for k, r in keras_opt._decay_rates.items()}  # pylint: disable=protected-access
  assert got == want


def test_without_tags_decay_is_chosen_by_name_as_the_reference():
  rule = optimization.AdamWeightDecay(1e-3, weight_decay_rate=0.125,
                                      adapter_weight_decay_rate=0.25)
  assert rule.weight_decay_rate_for("bert/encoder/layer_0/lora_A") == 0.125
  assert rule.weight_decay_rate_for("bert/encoder/layer_0/lora_A",
                                    is_adapter=True) == 0.25
  assert rule.weight_decay_rate_for(
      "bert/encoder/layer_0/attention/output/adapters/weights1") == 0.25
  assert rule.weight_decay_rate_for(
      "bert/encoder/layer_0/attention/output/adapters/biases1",
      is_adapter=True) == 0.0


# ----------------------------------------------------------------------------
# "adamw": AdapterHub's and the Hugging Face Trainer's update.


def hf_learning_rate(step, init_lr, num_train_steps, num_warmup_steps):
  """Hugging Face's get_linear_schedule_with_warmup, written out."""
  if step < num_warmup_steps:
    return init_lr * step / max(1, num_warmup_steps)
  return init_lr * max(0.0, (num_train_steps - step) /
                       max(1, num_train_steps - num_warmup_steps))


def adamw_train(params, grads_per_step, names, clip_norm=1.0):
  """torch's AdamW step by step in float64 (its documented algorithm:
  decay the parameter by lr * wd, then the bias-corrected Adam step)."""
  params = [p.astype(np.float64) for p in params]
  m = [np.zeros_like(p) for p in params]
  v = [np.zeros_like(p) for p in params]
  for step, grads in enumerate(grads_per_step):
    grads = [g.astype(np.float64) for g in grads]
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    grads = [g * clip_norm / max(norm, clip_norm) for g in grads]
    lr = hf_learning_rate(step, INIT_LR, NUM_TRAIN_STEPS, NUM_WARMUP_STEPS)
    t = step + 1
    for i, name in enumerate(names):
      params[i] = params[i] * (1.0 - lr * reference_decay_rate(name))
      m[i] = 0.9 * m[i] + 0.1 * grads[i]
      v[i] = 0.999 * v[i] + 0.001 * grads[i] ** 2
      m_hat = m[i] / (1.0 - 0.9 ** t)
      v_hat = v[i] / (1.0 - 0.999 ** t)
      params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
  return params, m, v


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_adamw_matches_torch_adamw_written_out(mode):
  params, grads_per_step = make_problem(seed=1)
  names = [name for name, _ in VARIABLE_SPECS]
  want_params, want_m, want_v = adamw_train(params, grads_per_step, names)
  optimizer = optimization.create_optimizer(
      INIT_LR, NUM_TRAIN_STEPS, NUM_WARMUP_STEPS,
      weight_decay_rate=WEIGHT_DECAY,
      adapter_weight_decay_rate=ADAPTER_WEIGHT_DECAY, optimizer="adamw")
  assert optimizer.bias_correction and optimizer.epsilon == 1e-8
  variables = build(params, optimizer)
  run_steps(optimizer, grads_per_step, mode, hf_learning_rate)
  slots = optimizer.slot_variables()
  for i, name in enumerate(names):
    np.testing.assert_allclose(variables[i].numpy(), want_params[i],
                               atol=2e-6, err_msg=name)
    np.testing.assert_allclose(slots[name + "/adam_m"].numpy(), want_m[i],
                               atol=1e-6)
    np.testing.assert_allclose(slots[name + "/adam_v"].numpy(), want_v[i],
                               atol=1e-6)
  # The two updates differ by much more than the tolerance.
  reference, _, _, _ = reference_train(params, grads_per_step, names)
  assert max(np.max(np.abs(a - b)) for a, b in
             zip(reference, want_params)) > 0.05


def test_adamw_matches_torch_itself():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  params, grads_per_step = make_problem(seed=2)
  names = [name for name, _ in VARIABLE_SPECS]
  tensors = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float64))
             for p in params]
  groups = [{"params": [t], "weight_decay": reference_decay_rate(n)}
            for t, n in zip(tensors, names)]
  torch_opt = torch.optim.AdamW(groups, lr=INIT_LR, betas=(0.9, 0.999),
                                eps=1e-8)
  schedule = transformers.get_linear_schedule_with_warmup(
      torch_opt, NUM_WARMUP_STEPS, NUM_TRAIN_STEPS)
  optimizer = optimization.create_optimizer(
      INIT_LR, NUM_TRAIN_STEPS, NUM_WARMUP_STEPS,
      weight_decay_rate=WEIGHT_DECAY,
      adapter_weight_decay_rate=ADAPTER_WEIGHT_DECAY, optimizer="adamw")
  variables = build(params, optimizer)
  for step, grads in enumerate(grads_per_step):
    for t, g in zip(tensors, grads):
      t.grad = torch.tensor(g, dtype=torch.float64)
    torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    torch_opt.step()
    schedule.step()
    optimizer.apply_gradients([tf.constant(g) for g in grads],
                              tf.constant(step, tf.int64))
  for name, t, variable in zip(names, tensors, variables):
    np.testing.assert_allclose(variable.numpy(), t.detach().numpy(),
                               atol=2e-6, err_msg=name)


def test_linear_warmup_then_decay_is_hugging_faces_schedule():
  schedule = optimization.LinearWarmupThenDecay(2.0, 10, 4)
  for step in range(14):
    np.testing.assert_allclose(float(schedule(step)),
                               hf_learning_rate(step, 2.0, 10, 4), rtol=1e-6)
  no_warmup = optimization.LinearWarmupThenDecay(1.0, 4, 0)
  assert [float(no_warmup(s)) for s in range(5)] == [1.0, 0.75, 0.5, 0.25,
                                                     0.0]
  # The reference decays from step 0: after the warmup it starts lower.
  assert float(optimization.WarmupLinearDecay(2.0, 10, 4)(4)) < float(
      schedule(4)) == 2.0


def test_unknown_optimizer_is_one_user_error():
  from adapter_bert.errors import UserError  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="'adam' is not one of "
                     "adam_weight_decay, adamw"):
    optimization.create_optimizer(1e-3, 10, 1, optimizer="adam")


def test_keras_face_applies_the_bias_corrected_update():
  """compile/fit with "adamw": the Keras face takes its step count from
  Keras' iterations and gives the module's update."""
  import keras  # pylint: disable=g-import-not-at-top
  params, grads_per_step = make_problem(seed=3)
  names = [name for name, _ in VARIABLE_SPECS]
  want_params, _, _ = adamw_train(params, grads_per_step[:4], names)
  keras_opt = optimization.as_keras_optimizer(optimization.create_optimizer(
      INIT_LR, NUM_TRAIN_STEPS, NUM_WARMUP_STEPS,
      weight_decay_rate=WEIGHT_DECAY,
      adapter_weight_decay_rate=ADAPTER_WEIGHT_DECAY, optimizer="adamw"))
  assert keras_opt.get_config()["bias_correction"] is True
  variables = [keras.Variable(p) for p in params]
  keras_opt.set_checkpoint_names({id(v): n for v, n in zip(variables, names)})
  for grads in grads_per_step[:4]:
    keras_opt.apply_gradients(
        [(tf.constant(g), v) for g, v in zip(grads, variables)])
  for name, variable, want in zip(names, variables, want_params):
    np.testing.assert_allclose(variable.numpy(), want, atol=2e-6,
                               err_msg=name)


def test_the_command_lines_know_every_optimizer():
  # run_config is read before TensorFlow loads, so it keeps its own list.
  from adapter_bert.training import run_config  # pylint: disable=g-import-not-at-top
  assert run_config.OPTIMIZERS == tuple(optimization.OPTIMIZERS)
