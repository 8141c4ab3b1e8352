"""Trains a tiny BertClassifier for a few steps under a given strategy.

Used by tests/test_run_classifier.py in subprocesses (strategies need their
own process: logical devices and collectives are set up once per process).

  python distributed_worker.py --strategy=one|mirrored|multi_worker --out=F.npz

Writes every model variable (by checkpoint name) to F.npz.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

STEPS = 5
GLOBAL_BATCH = 8


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--strategy", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--jit_compile", default="true")
  args = parser.parse_args()

  if args.strategy == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

  from adapter_bert import adapters  # pylint: disable=g-import-not-at-top
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  from adapter_bert.training import distribution  # pylint: disable=g-import-not-at-top
  from adapter_bert.model import modeling  # pylint: disable=g-import-not-at-top
  from adapter_bert.compute import optimization  # pylint: disable=g-import-not-at-top
  from adapter_bert.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  if args.strategy == "one":
    strategy = distribution.resolve_strategy("one_device")
  elif args.strategy == "mirrored":
    strategy = distribution.resolve_strategy(
        "mirrored", devices=["/cpu:0", "/cpu:1"])
  else:
    strategy = distribution.resolve_strategy("multi_worker")

  # Dropout off: replicas draw their own masks, so only without dropout is
  # the distributed run comparable number for number with one device.
  config = modeling.BertConfig(
      vocab_size=40, hidden_size=16, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, max_position_embeddings=32,
      type_vocab_size=2)
  rng = np.random.default_rng(0)
  n, seq = 64, 12
  data = {
      "input_ids": rng.integers(1, 40, (n, seq)).astype(np.int32),
      "input_mask": np.ones((n, seq), np.int32),
      "segment_ids": np.zeros((n, seq), np.int32),
  }
  data["label_ids"] = (data["input_ids"][:, 1] > 20).astype(np.int32)

  with strategy.scope():
    model = modeling.BertClassifier(config, 2, adapters.AdapterConfig(size=4),
                                    classifier_dropout=0.0)
    values_rng = np.random.default_rng(1)
    for name, v in checkpoint_io.checkpoint_name_map(model).items():
      value = values_rng.normal(0, 0.2, size=v.shape)
      v.assign((value + (1.0 if name.endswith("gamma") else 0.0)).astype(np.float32))
    trainable = modeling.set_train_mode(model, "adapters")
    optimizer = optimization.create_optimizer(5e-2, STEPS, 1)
    trainer = trainer_lib.Trainer(
        model, optimizer, trainable, strategy, args.out + ".ckpt", num_labels=2,
        is_regression=False, global_batch_size=GLOBAL_BATCH, seed=3,
        jit_compile=args.jit_compile == "true")

  def make_dataset(start_step):
    ds = tf.data.Dataset.from_tensor_slices(data).repeat()
    ds = ds.batch(GLOBAL_BATCH, drop_remainder=True).skip(start_step)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(options)

  trainer.train(make_dataset, STEPS, iterations_per_loop=STEPS,
                save_checkpoints_steps=10**9)
  np.savez(args.out, **{n.replace("/", "__"): v.numpy() for n, v in
                        checkpoint_io.checkpoint_name_map(model).items()})


if __name__ == "__main__":
  main()
