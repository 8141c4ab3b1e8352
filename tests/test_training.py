"""Trainer: micro-batches train as the whole batch; the automatic size."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.storage import checkpoint_io
from adapter_bert.compute import kernels
from adapter_bert.model import modeling
import tiny_fixtures
from adapter_bert.training import trainer as trainer_lib


def _trainer(train_mode, micro_batch_size, jit_compile=True):
  model = tiny_fixtures.tiny_classifier(dropout=0.2)
  return model, tiny_fixtures.tiny_trainer(
      model, train_mode, seed=7, jit_compile=jit_compile,
      micro_batch_size=micro_batch_size)


def _batches():
  rng = np.random.default_rng(1)
  lengths = rng.integers(3, 11, size=16)
  mask = (np.arange(10)[None, :] < lengths[:, None]).astype(np.int32)
  data = {"input_ids": (rng.integers(1, 40, (16, 10)) * mask).astype(np.int32),
          "input_mask": mask,
          "segment_ids": (np.arange(10)[None, :] >= lengths[:, None] // 2
                          ).astype(np.int32) * mask,
          "label_ids": rng.integers(0, 2, 16).astype(np.int32)}
  return tf.data.Dataset.from_tensor_slices(data).batch(8, drop_remainder=True)


@pytest.mark.parametrize("train_mode,jit", [("adapters", True),
                                            ("adapters", False),
                                            ("full", True)])
def test_micro_batches_train_as_the_whole_batch(train_mode, jit):
  # Two steps of batch 8 as one pass and as slices of 3, 3 and 2 examples:
  # the same losses and weights (dropout on; the masks of a slice are those
  # the whole batch draws for its examples). `full` covers the embeddings'
  # sparse gradients.
  results = []
  for micro in (None, 3):
    model, trainer = _trainer(train_mode, micro, jit_compile=jit)
    assert trainer._num_micro_batches == (1 if micro is None else 3)
    names = checkpoint_io.checkpoint_name_map(model)
    before = {n: v.numpy() for n, v in names.items()}
    trainer._build_train_loop()
    losses, _ = trainer._train_loop(iter(_batches()), tf.constant(2))
    after = {n: v.numpy() for n, v in names.items()}
    # The step did train: every trained variable moved.
    for name, variable in trainer.trainable:
      assert np.max(np.abs(after[name] - before[name])) > 0, name
    results.append((losses.numpy(), after))
  (whole_losses, whole), (micro_losses, micro) = results
  np.testing.assert_allclose(micro_losses, whole_losses, rtol=1e-5)
  for name, value in whole.items():
    if name.endswith("key/bias"):
      # Its exact gradient is 0 (softmax ignores a constant per query row);
      # Adam scales the float noise it gets up to the learning rate.
      continue
    # Sums in another order: the gradients differ in the last bits, which
    # Adam's first steps (update ~ lr * sign) can scale up to ~1e-6.
    np.testing.assert_allclose(micro[name], value, atol=1e-5, err_msg=name)


def test_micro_batch_seed_draws_the_whole_batch_masks():
  model = tiny_fixtures.tiny_classifier(dropout=0.3, num_layers=1)
  features = next(iter(_batches()))
  seed = tf.constant([5, 9], tf.int64)
  for fused in (True, False):
    policy = kernels.KernelPolicy(fused=fused)
    whole = model(features, training=True, dropout_seed=seed,
                  policy=policy).numpy()
    for start, end in ((0, 3), (3, 8), (5, 6)):
      part = {k: v[start:end] for k, v in features.items()}
      logits = model(part, training=True, policy=policy,
                     dropout_seed=kernels.dropout_seed_for_slice(seed, start))
      np.testing.assert_allclose(logits.numpy(), whole[start:end], atol=1e-6)
    # Without the offset a slice draws other masks.
    other = model({k: v[3:8] for k, v in features.items()}, training=True,
                  dropout_seed=seed, policy=policy).numpy()
    assert np.max(np.abs(other - whole[3:8])) > 1e-4


def test_auto_micro_batch_size():
  strategy = tf.distribute.get_strategy()  # CPU only here.
  base = modeling.BertConfig.from_json_file("configs/bert/bert_base_uncased.json")
  minilm = modeling.BertConfig(
      vocab_size=30522, hidden_size=384, num_hidden_layers=6,
      num_attention_heads=12, intermediate_size=1536)
  # BERT-base, batch 32 x 128: ~1.8 GiB kept -> two slices of 16.
  kept = trainer_lib.saved_activation_bytes(base, "adapters", 32, 128)
  assert 1 << 30 < kept <= 2 << 30
  assert trainer_lib.auto_micro_batch_size(base, "adapters", 32, 128,
                                        strategy) == 16
  # Full fine-tuning keeps more: three slices (11, 11, 10).
  assert trainer_lib.auto_micro_batch_size(base, "full", 32, 128, strategy) == 11
  # The MiniLM config fits whole; so does a short sequence length.
  assert trainer_lib.auto_micro_batch_size(minilm, "adapters", 32, 128,
                                        strategy) == 32
  assert trainer_lib.auto_micro_batch_size(base, "adapters", 32, 64,
                                        strategy) == 32
  # Never below one example.
  assert trainer_lib.auto_micro_batch_size(base, "full", 2, 512, strategy,
                                        budget=1) == 1


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_step_runs_near_float32(policy):
  # --mixed_precision on a CPU host: the fused kernels take the compute
  # dtype (the mask adder Keras casts down is added in float32); the first
  # step's loss is that of float32 to the compute dtype's precision.
  losses = {}
  for name in ("float32", policy):
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(name)
    try:
      _, trainer = _trainer("adapters", None)
      trainer._build_train_loop()
      result, _ = trainer._train_loop(iter(_batches()), tf.constant(2))
      losses[name] = result.numpy()
    finally:
      keras.mixed_precision.set_dtype_policy(previous)
  assert np.all(np.isfinite(losses[policy]))
  np.testing.assert_allclose(losses[policy], losses["float32"], rtol=3e-2)


def test_bucket_granularity_follows_what_a_width_compiles():
  from adapter_bert.training import runner  # pylint: disable=g-import-not-at-top
  strategy = tf.distribute.get_strategy()
  cpu_only = not tf.config.list_physical_devices("GPU")
  # CPU: only small kernels compile per width -> finer buckets.
  assert runner.bucket_granularity(True, strategy) == (8 if cpu_only else 16)
  assert runner.bucket_granularity(False, strategy) == 8
  assert runner.bucket_granularity(trainer_lib.JIT_ALWAYS, strategy) == 16


def test_end_of_training_waits_only_for_the_last_checkpoint(tmp_path):
  # The end of a run once waited 18-49 s after its last checkpoint: deleting
  # the input pipeline's iterator waited for tf.data's autotuning thread,
  # whose sleep grows with the iterator's life. Here the iterator lives ~3 s
  # (each host loop pauses 0.5 s), enough for such a sleep to show; the
  # training loop must return right after its last checkpoint is written.
  import time  # pylint: disable=g-import-not-at-top
  from adapter_bert.data import glue_processors, input_pipeline  # pylint: disable=g-import-not-at-top
  vocab_file, _ = tiny_fixtures.write_vocab(str(tmp_path))
  data = input_pipeline.GlueData(
      processor=glue_processors.get_processor("MRPC"),
      data_dir=tiny_fixtures.write_mrpc(str(tmp_path / "MRPC")),
      vocab_file=vocab_file, do_lower_case=True, max_seq_length=24,
      cache_dir=str(tmp_path / "features"))
  model = tiny_fixtures.tiny_classifier()
  trainer = tiny_fixtures.tiny_trainer(model)
  trainer.output_dir = str(tmp_path)
  saved_at = []
  save = trainer.save

  def timed_save():
    path = save()
    saved_at.append(time.monotonic())
    return path

  trainer.save = timed_save
  result = trainer.train(
      lambda start: data.train_dataset(batch_size=8, seed=1, start_step=start),
      6, iterations_per_loop=1, save_checkpoints_steps=100, log_steps=1,
      on_progress=lambda info: time.sleep(0.5))
  returned_at = time.monotonic()
  assert result["global_step"] == 6 and len(saved_at) == 1
  assert returned_at - saved_at[-1] < 1.0, (
      "train() returned %.2f s after its last checkpoint"
      % (returned_at - saved_at[-1]))

