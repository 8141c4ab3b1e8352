"""Frozen activations computed once: training on the stored states is
training on the encoder run at each step (the same losses and weights), the
entry is reused, and a change of base weights makes a new one."""

import os

import keras
import numpy as np
import tensorflow as tf

from adapter_bert import adapters
from adapter_bert.data import frozen_activations
from adapter_bert.data import glue_processors
from adapter_bert.data import input_pipeline
from adapter_bert.model import modeling
from adapter_bert.compute import optimization
from adapter_bert.storage import checkpoint_io
import tiny_fixtures as fx
from adapter_bert.training import trainer as trainer_lib


def _setup(tmp_path):
  flags = fx.make_job(tmp_path)
  config = modeling.BertConfig.from_json_file(flags["bert_config_file"])
  data = input_pipeline.GlueData(
      glue_processors.get_processor("MRPC"), flags["data_dir"],
      vocab_file=flags["vocab_file"], do_lower_case=True, max_seq_length=24,
      cache_dir=str(tmp_path / "features"))
  return flags, config, data


def _trainer(flags, config):
  # Dropout in the tailor block too: its masks are keyed by coordinates.
  keras.utils.set_random_seed(0)  # The same initial adapter and head.
  model = modeling.BertClassifier(
      config, 2, adapters.LayerAttentionConfig(dropout=0.1, reduced_size=4))
  model.load_base_checkpoint(flags["init_checkpoint"])
  trainable = modeling.set_train_mode(model, "adapters")
  return model, trainer_lib.Trainer(
      model, optimization.create_optimizer(1e-2, 6, 1), trainable,
      tf.distribute.get_strategy(), "/tmp", num_labels=2,
      is_regression=False, global_batch_size=8, seed=3)


def _six_steps(flags, config, data, stored, bucket):
  """((losses, {name: trained value}), model, stored states or None) of six
  training steps of batch 8; on states stored with build_or_load(**stored)
  (policy="trainer": the trainer's kernels) unless `stored` is None."""
  model, trainer = _trainer(flags, config)
  dataset = data.train_dataset(batch_size=8, seed=1, bucket=bucket)
  frozen = None
  if stored is not None:
    if stored.get("policy") == "trainer":
      stored = dict(stored, policy=trainer.policy)
    frozen = frozen_activations.build_or_load(
        model, data.feature_file("train"), data.cache_dir, **stored)
    dataset = frozen.attach(dataset)
  trainer._build_train_loop()
  losses, _ = trainer._train_loop(iter(dataset), tf.constant(6))
  values = {n: v.numpy() for n, v in trainer.trainable}
  return (losses.numpy(), values), model, frozen


def test_training_on_stored_states_is_training_on_the_encoder(tmp_path):
  flags, config, data = _setup(tmp_path)
  plain, _, _ = _six_steps(flags, config, data, None, bucket=True)
  stored, model, frozen = _six_steps(flags, config, data, {}, bucket=True)
  entry, _ = frozen_activations.paths(
      data.cache_dir, frozen_activations.cache_key(
          model, data.feature_file("train"), "float32")[0])
  # Real tokens only: 64 examples, their lengths summed.
  assert frozen.array.shape[0] < 64 * 24
  assert frozen.array.shape[1:] == (config.num_hidden_layers + 1, 16)
  fx.assert_same_training(plain, stored)
  # The entry is reused (same file), and new base weights make a new one.
  mtime = os.path.getmtime(entry)
  # Computed in other shapes (another batch size, no buckets): a new entry.
  other = frozen_activations.cache_key(model, data.feature_file("train"),
                                       "float32", 8, False)[0]
  assert other != frozen_activations.cache_key(
      model, data.feature_file("train"), "float32")[0]
  frozen_activations.build_or_load(model, data.feature_file("train"),
                                   data.cache_dir)
  assert os.path.getmtime(entry) == mtime
  name = "bert/encoder/layer_0/output/dense/bias"
  variable = checkpoint_io.checkpoint_name_map(model)[name]
  variable.assign(variable + 1.0)
  again = frozen_activations.build_or_load(model, data.feature_file("train"),
                                           data.cache_dir)
  assert len([f for f in os.listdir(data.cache_dir)
              if f.startswith("frozen-") and f.endswith(".npy")]) == 2
  assert np.max(np.abs(np.asarray(again.array) - np.asarray(
      frozen.array))) > 0


def test_states_computed_in_the_training_shape_train_bit_for_bit(tmp_path):
  # Without length buckets every training batch is [8, 24]: states computed
  # in batches of that shape are what the encoder computes at each step, to
  # the last bit, so the stored-state run IS the encoder run.
  flags, config, data = _setup(tmp_path)
  (plain_losses, plain_values), _, _ = _six_steps(flags, config, data, None,
                                                  bucket=False)
  (stored_losses, stored_values), _, _ = _six_steps(
      flags, config, data, dict(batch_size=8, bucket=False,
                                policy="trainer"), bucket=False)
  np.testing.assert_array_equal(stored_losses, plain_losses)
  for name, value in plain_values.items():
    np.testing.assert_array_equal(stored_values[name], value, err_msg=name)
