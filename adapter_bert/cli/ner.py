# coding=utf-8
"""The command line of run_ner.py: CoNLL token classification with the
flags of run_classifier.py, and `main`. See run_ner.py for an example.
"""

from absl import flags

from adapter_bert.cli import classifier as run_classifier  # noqa: F401  (defines the shared flags)
from adapter_bert.cli import common as cli
from adapter_bert.errors import UserError

flags.DEFINE_string("predict_file", None,
                    "A CoNLL file to tag with --do_predict (default: "
                    "test.txt in --data_dir).")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise UserError("unexpected positional arguments: %s" % " ".join(argv[1:]))
  for name in ("output_dir", "bert_config_file", "vocab_file"):
    if not FLAGS[name].value:
      raise UserError("--%s is required" % name)
  if FLAGS.task_name and FLAGS.task_name.upper() != "NER":
    raise UserError("--task_name=%s: run_ner.py tags CoNLL files (leave "
                    "--task_name out, or NER)" % FLAGS.task_name)
  FLAGS.task_name = "NER"
  if FLAGS.predict_file and not FLAGS.do_predict:
    raise UserError("--predict_file is read with --do_predict=true")
  cfg = run_classifier.config_from_flags().validate()
  from adapter_bert.compute import tf_startup  # pylint: disable=g-import-not-at-top
  tf_startup.import_quietly(verbose=FLAGS.verbose)
  from adapter_bert.training import ner_runner  # pylint: disable=g-import-not-at-top
  ner_runner.run(cfg, FLAGS.predict_file)


def run_main():
  """Runs main; a UserError becomes one line on stderr and exit status 1."""
  cli.run(main)


if __name__ == "__main__":
  run_main()
