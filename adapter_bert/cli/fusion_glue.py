"""AdapterFusion on a GLUE task, with the Python API (Pfeiffer et al. 2021).

Loads trained adapter directories (this toolkit's or AdapterHub's) on a
base, adds a fusion over them and a new head for the target task, trains
only the fusion layers and the head (`train_adapter_fusion`) with Keras
`fit`, evaluates on the dev set and writes, into --output_dir:

  eval_results.txt   eval_accuracy (and the task's GLUE metrics),
                     train_seconds, train_examples_per_second
  fusion/            the fusion weights with the head, and the fused adapters
                     (`save_adapter_fusion(..., with_adapters=True,
                     with_head=...)`; `load_adapter_fusion` loads it all)

Usage: scripts/adapter_fusion_glue.py.

The fused adapters must be sequential bottleneck adapters of that base
(pfeiffer, houlsby, compacter, ...): `--adapter_config=pfeiffer` runs of
run_classifier.py give them.
"""

import json
import os
import time

from adapter_bert.compute import tf_startup  # noqa: F401  (first: oneDNN kernels before TensorFlow)
from absl import flags
from absl import logging
import keras
import numpy as np

from adapter_bert.adapters.composition import Fuse
from adapter_bert.data import glue_metrics
from adapter_bert.data import input_pipeline
from adapter_bert.model import modeling
from adapter_bert.compute import optimization
from adapter_bert.storage import atomic_io
from adapter_bert.cli import common as cli
from adapter_bert.training import run_config
from adapter_bert.training import runner_tasks
from adapter_bert.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("task_name", None, "GLUE task to fuse for (e.g. RTE).")
flags.DEFINE_string("data_dir", None, "The task's GLUE folder.")
flags.DEFINE_string("bert_dir", None,
                    "The base: bert_config.json, vocab.txt, bert_model.ckpt "
                    "(or a Hugging Face BERT folder).")
flags.DEFINE_list("adapters", None,
                  "Adapter directories to fuse (each trained on this base).")
flags.DEFINE_enum("fusion_config", "dynamic", ["dynamic", "static"],
                  "AdapterHub's fusion config.")
flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate (the paper's).")
flags.DEFINE_float("num_train_epochs", 5.0, "Training epochs.")
flags.DEFINE_float("warmup_proportion", 0.1, "Linear warmup, as a fraction.")
flags.DEFINE_integer("train_batch_size", 32, "Training batch size.")
flags.DEFINE_integer("eval_batch_size", 32, "Eval batch size.")
flags.DEFINE_integer("max_seq_length", 128, "Word pieces per example.")
flags.DEFINE_bool("do_lower_case", True, "Lower-case the text.")
flags.DEFINE_integer("seed", 12345, "Dropout and shuffling seed.")
flags.DEFINE_enum("optimizer", "adam_weight_decay",
                  list(run_config.OPTIMIZERS),
                  "The update, as run_classifier.py's --optimizer (adamw: "
                  "AdapterHub's and the Hugging Face Trainer's).")
flags.DEFINE_string("output_dir", None, "Where results and the fusion go.")
flags.DEFINE_bool("verbose", False, "Show Python tracebacks for errors.")


class _Flags:
  """What runner_tasks.get_processor reads of run_classifier's flags."""

  def __init__(self, task_name, data_dir):
    self.task_name = task_name
    self.data_dir = data_dir
    self.text_a_column = self.text_b_column = None
    self.label_column = "label"


def run(task_name, data_dir, bert_dir, adapter_dirs, output_dir,
        fusion_config="dynamic", learning_rate=5e-5, num_train_epochs=5.0,
        warmup_proportion=0.1, train_batch_size=32, eval_batch_size=32,
        max_seq_length=128, do_lower_case=True, seed=12345,
        optimizer="adam_weight_decay"):
  """Trains a fusion of `adapter_dirs` for a task; returns the eval results.

  Raises:
    UserError: for a missing input, adapters that do not fit the base or
      cannot be fused, or an output directory that holds a fusion already.
  """
  for name, value in (("task_name", task_name), ("data_dir", data_dir),
                      ("bert_dir", bert_dir), ("output_dir", output_dir)):
    if not value:
      raise UserError("--%s is required" % name)
  if not adapter_dirs or len(adapter_dirs) < 2:
    raise UserError("--adapters needs two or more adapter directories, got "
                    "%d" % len(adapter_dirs or []))
  for directory in adapter_dirs:
    if not os.path.isdir(directory):
      raise UserError("--adapters: %s is not a directory" % directory)
  fusion_dir = os.path.join(output_dir, "fusion")
  if os.path.exists(fusion_dir):
    raise UserError("%s exists already; choose another --output_dir"
                    % fusion_dir)
  processor = runner_tasks.get_processor(_Flags(task_name, data_dir))
  keras.utils.set_random_seed(seed)
  model = modeling.BertAdapterModel.from_pretrained(bert_dir)
  names = [model.load_adapter(d, with_head=False) for d in adapter_dirs]
  if len(set(names)) != len(names):
    raise UserError("--adapters: two directories hold adapters named alike "
                    "(%s)" % ", ".join(names))
  model.add_adapter_fusion(names, config=fusion_config)
  head = processor.name.lower() + "_fusion"
  model.add_classification_head(head, num_labels=len(processor.get_labels()))
  model.active_head = head
  model.train_adapter_fusion(Fuse(*names))

  data = input_pipeline.GlueData(
      processor, data_dir, vocab_file=model.vocab_file,
      do_lower_case=do_lower_case, max_seq_length=max_seq_length,
      cache_dir=os.path.join(output_dir, "features"))
  num_examples = data.num_examples("train")
  steps = int(num_examples / train_batch_size * num_train_epochs)
  if steps < 1:
    raise UserError("--num_train_epochs=%g gives no training step"
                    % num_train_epochs)
  model.compile(optimizer=optimization.create_optimizer(
      learning_rate, steps, int(steps * warmup_proportion),
      optimizer=optimizer), seed=seed)
  logging.info("Fusing %s for %s: %d steps of %d", ", ".join(names),
               task_name, steps, train_batch_size)
  t0 = time.time()
  model.fit(data.train_dataset(
      batch_size=train_batch_size, seed=seed, bucket=True,
      group_batches=run_config.GROUP_WINDOW_BATCHES),
            steps_per_epoch=steps, epochs=1, verbose=2)
  train_seconds = time.time() - t0

  dev = data.eval_dataset("dev", batch_size=eval_batch_size)
  labels, real = [], []
  for features in dev:
    labels.append(features["label_ids"].numpy())
    real.append(features["is_real_example"].numpy())
  labels, real = np.concatenate(labels), np.concatenate(real).astype(bool)
  predictions = np.argmax(model.predict(dev, verbose=0), axis=-1)
  results = {"eval_accuracy": float(np.mean(predictions[real] ==
                                            labels[real]))}
  for key, value in glue_metrics.compute_metrics(
      processor.name, predictions, labels, real).items():
    results.setdefault("eval_" + key, float(value))
  results.update(train_seconds=train_seconds,
                 train_examples_per_second=steps * train_batch_size
                 / train_seconds,
                 global_step=int(model.optimizer.iterations.numpy()))
  model.save_adapter_fusion(fusion_dir, ",".join(names), with_adapters=True,
                            with_head=head)
  atomic_io.atomic_write_text(
      os.path.join(output_dir, "eval_results.txt"),
      "".join("%s = %s\n" % kv for kv in sorted(results.items())))
  print(json.dumps(results, indent=1, sort_keys=True))
  return results


def main(argv):
  del argv
  run(FLAGS.task_name, FLAGS.data_dir, FLAGS.bert_dir, FLAGS.adapters,
      FLAGS.output_dir, FLAGS.fusion_config, FLAGS.learning_rate,
      FLAGS.num_train_epochs, FLAGS.warmup_proportion,
      FLAGS.train_batch_size, FLAGS.eval_batch_size, FLAGS.max_seq_length,
      FLAGS.do_lower_case, FLAGS.seed, FLAGS.optimizer)


def run_main():
  """Runs main; a UserError becomes one line on stderr and exit status 1."""
  cli.run(main)


if __name__ == "__main__":
  run_main()
