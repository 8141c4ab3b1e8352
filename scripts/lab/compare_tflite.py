# coding=utf-8
"""The TFLite model of an export against its SavedModel, on a GLUE split.

`export_saved_model.py --tflite` writes `<export_dir>/model.tflite` beside
the SavedModel. This runs both on every example of a split: the SavedModel
on the raw texts (its in-graph tokenizer), the TFLite model on the features
the input pipeline packs (the same packing), and reports the largest
probability difference and whether every argmax agrees.

Example:
  python scripts/lab/compare_tflite.py --export_dir=/tmp/serving/mrpc/1 \
      --task_name=MRPC --data_dir=../shared/glue_data/MRPC \
      --vocab_file=../shared/bert/minilm_l6_h384_uncased/vocab.txt
"""

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import flags  # noqa: E402

from adapter_bert.cli import common as cli  # noqa: E402
from adapter_bert.errors import UserError  # noqa: E402

flags.DEFINE_string("export_dir", None, "A SavedModel with model.tflite.")
flags.DEFINE_string("task_name", "MRPC", "The GLUE task.")
flags.DEFINE_string("data_dir", None, "The task's GLUE files.")
flags.DEFINE_string("vocab_file", None, "The base model's vocab.txt.")
flags.DEFINE_bool("do_lower_case", True, "Lower-case the input.")
flags.DEFINE_integer("max_seq_length", 128, "As exported.")
flags.DEFINE_string("split", "test", "test or dev.")
flags.DEFINE_integer("batch_size", 32, "Examples per call.")
flags.DEFINE_string("output", None, "JSON file of the figures.")
flags.DEFINE_bool("verbose", False, "Show Python tracebacks for errors.")
FLAGS = flags.FLAGS


def compare(export_dir, task_name, data_dir, vocab_file, do_lower_case,
            max_seq_length, split="test", batch_size=32):
  """Returns {"examples", "max_abs_probability_difference",
  "argmax_equal", ...}."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_text  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from adapter_bert.data import glue_processors  # pylint: disable=g-import-not-at-top
  from adapter_bert.data import input_pipeline  # pylint: disable=g-import-not-at-top
  tflite_path = os.path.join(export_dir, "model.tflite")
  if not os.path.isfile(tflite_path):
    raise UserError("--export_dir=%s has no model.tflite (export with "
                    "--tflite)" % export_dir)
  processor = glue_processors.get_processor(task_name)
  data = input_pipeline.GlueData(
      processor, data_dir, vocab_file=vocab_file,
      do_lower_case=do_lower_case, max_seq_length=max_seq_length,
      cache_dir=tempfile.mkdtemp(prefix="compare_tflite-"))
  examples = data.examples(split)
  saved = tf.saved_model.load(export_dir).signatures["serving_default"]
  t0 = time.time()
  want = []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    out = saved(text_a=tf.constant([e.text_a for e in chunk]),
                text_b=tf.constant([e.text_b or "" for e in chunk]))
    want.append(out["probabilities"].numpy())
  saved_seconds = time.time() - t0
  want = np.concatenate(want)
  runner = tf.lite.Interpreter(model_path=tflite_path).get_signature_runner()
  got = np.zeros_like(want)
  t0 = time.time()
  for features in data.eval_dataset(split, batch_size=batch_size):
    rows = features["example_index"].numpy()
    out = runner(**{k: features[k].numpy().astype(np.int32)
                    for k in ("input_ids", "input_mask", "segment_ids")})
    real = rows >= 0
    got[rows[real]] = out["probabilities"][real]
  tflite_seconds = time.time() - t0
  diff = np.abs(got - want)
  return {"examples": len(examples), "split": split,
          "max_abs_probability_difference": float(diff.max()),
          "argmax_equal": int((got.argmax(1) == want.argmax(1)).sum()),
          "saved_model_seconds": saved_seconds,
          "tflite_seconds": tflite_seconds,
          "tflite_bytes": os.path.getsize(tflite_path)}


def main(argv):
  if len(argv) > 1:
    raise UserError("unexpected arguments: %s" % " ".join(argv[1:]))
  for name in ("export_dir", "data_dir", "vocab_file"):
    if not FLAGS[name].value:
      raise UserError("--%s is required" % name)
  from adapter_bert.compute import tf_startup  # pylint: disable=g-import-not-at-top
  tf_startup.import_quietly(verbose=FLAGS.verbose)
  result = compare(FLAGS.export_dir, FLAGS.task_name, FLAGS.data_dir,
                   FLAGS.vocab_file, FLAGS.do_lower_case,
                   FLAGS.max_seq_length, FLAGS.split, FLAGS.batch_size)
  print(json.dumps(result, indent=2, sort_keys=True))
  if FLAGS.output:
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2, sort_keys=True)


if __name__ == "__main__":
  cli.run(main)
