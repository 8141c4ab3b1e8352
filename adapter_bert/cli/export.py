"""The command line of scripts/export_saved_model.py: a SavedModel taking
raw text from adapter directories or a full checkpoint (see
`adapter_bert.serving.export` for the signatures)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from adapter_bert.cli import common as cli  # noqa: E402
from adapter_bert.compute import tf_startup  # noqa: E402,F401  (before TensorFlow: oneDNN kernels)
from adapter_bert.errors import UserError  # noqa: E402
from adapter_bert.serving.export import (  # noqa: E402,F401  (the library, as before)
    DEFAULT_MAX_SEQ_LENGTH, ServingModule, build_model_from_adapters,
    build_model_from_checkpoint, export_saved_model, export_tflite,
    resolve_text_settings)

flags.DEFINE_string("bert_config_file", None,
                    "The base model's bert_config.json (default: the one "
                    "recorded in the adapter / output directory).")
flags.DEFINE_string("vocab_file", None, "The base model's vocab.txt.")
flags.DEFINE_bool("do_lower_case", None,
                  "Lower-case the input (default: as the task was trained).")
flags.DEFINE_string("init_checkpoint", None,
                    "The base checkpoint the adapters were trained on.")
flags.DEFINE_multi_string(
    "adapter_dir", [],
    "An adapter directory (output_dir/adapter); repeat for a multi-task "
    "export. NAME=DIR names the task (default: its task name).")
flags.DEFINE_string("checkpoint", None,
                    "Instead of --adapter_dir: a full model checkpoint (prefix "
                    "or run_classifier output_dir), this toolkit's or the "
                    "reference adapter-bert's.")
flags.DEFINE_string("task_name", None,
                    "With --checkpoint, when its directory has no "
                    "run_config.json: the GLUE task.")
flags.DEFINE_integer("max_seq_length", None,
                     "Truncation length (default: as the task was trained).")
flags.DEFINE_string("export_dir", None,
                    "Where the SavedModel goes (for TF Serving, a version "
                    "directory such as models/glue/1).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --export_dir.")
flags.DEFINE_bool("tflite", False,
                  "Also write <export_dir>/model.tflite: the classifier of "
                  "the one task from token ids (input_ids, input_mask, "
                  "segment_ids int32 [batch, max_seq_length]) to "
                  "probabilities and logits, LoRA and (IA)^3 adapters merged "
                  "into the base weights.")

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise UserError("unexpected positional arguments: %s" % " ".join(argv[1:]))
  if not FLAGS.export_dir:
    raise UserError("--export_dir is required")
  if not FLAGS.vocab_file:
    raise UserError("--vocab_file is required")
  if bool(FLAGS.adapter_dir) == bool(FLAGS.checkpoint):
    raise UserError("give either --adapter_dir (one or more) or --checkpoint")
  if FLAGS.checkpoint:
    model, metadata = build_model_from_checkpoint(
        FLAGS.bert_config_file, FLAGS.checkpoint, FLAGS.task_name)
  else:
    model, metadata = build_model_from_adapters(
        FLAGS.bert_config_file, FLAGS.init_checkpoint, FLAGS.adapter_dir)
  do_lower_case, max_seq_length = resolve_text_settings(
      metadata, FLAGS.do_lower_case, FLAGS.max_seq_length)
  if FLAGS.tflite and len(model.task_names) != 1:
    raise UserError("--tflite exports one task; got %s"
                    % ", ".join(model.task_names))
  names = export_saved_model(model, FLAGS.vocab_file, do_lower_case,
                             max_seq_length, FLAGS.export_dir, FLAGS.overwrite)
  if FLAGS.tflite:
    export_tflite(model, os.path.join(FLAGS.export_dir, "model.tflite"),
                  max_seq_length)
  print("Exported %s with signatures: %s" % (FLAGS.export_dir,
                                             ", ".join(names)))


def run_main():
  """Runs main; a UserError becomes one line on stderr and exit status 1."""
  cli.run(main)


if __name__ == "__main__":
  run_main()
