# coding=utf-8
"""Writes a Hugging Face BERT directory out in Google's TF1 layout.

Reads `config.json` and `model.safetensors` (or `pytorch_model.bin`, read
without PyTorch: only plain tensors are accepted) and writes, in
`--output_dir`, `bert_config.json`, `vocab.txt` and `bert_model.ckpt.*`
under the original BERT names, built in a temporary directory beside it
and renamed into place.

Usage: scripts/convert_hf_checkpoint.py.
"""

import json
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from adapter_bert.storage import atomic_io  # noqa: E402
from adapter_bert.storage import huggingface  # noqa: E402
from adapter_bert.storage import torch_formats  # noqa: E402
from adapter_bert.cli import common as cli  # noqa: E402
from adapter_bert.errors import UserError  # noqa: E402


FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "A Hugging Face BERT directory.")
flags.DEFINE_string("output_dir", None, "Where Google's layout is written.")
flags.DEFINE_bool("verbose", False, "Show Python tracebacks for errors.")


def convert(hf_dir, output_dir):
  """Converts; returns {TF1 name: array} written.

  Raises:
    UserError: for a directory that is not a Hugging Face BERT, or an output
      that cannot be written.
  """
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  if not huggingface.is_hf_dir(hf_dir):
    raise UserError("--hf_dir=%s: not a Hugging Face model directory (needs "
                    "config.json and model.safetensors or pytorch_model.bin)"
                    % hf_dir)
  config = huggingface.read_config(hf_dir)
  weights = torch_formats.exists_any(hf_dir, huggingface.WEIGHT_FILES)
  tensors = huggingface.tf1_tensors(torch_formats.read_tensors(weights),
                                    weights)
  vocab = os.path.join(hf_dir, "vocab.txt")
  if not os.path.isfile(vocab):
    raise UserError("--hf_dir=%s: vocab.txt not found" % hf_dir)
  output_dir = os.path.abspath(output_dir)
  with atomic_io.staged_directory(output_dir, "--output_dir") as tmp:
    with open(os.path.join(tmp, "bert_config.json"), "w",
              encoding="utf-8") as f:
      json.dump(config, f, indent=2, sort_keys=True)
      f.write("\n")
    shutil.copyfile(vocab, os.path.join(tmp, "vocab.txt"))
    checkpoint_io.save_checkpoint(os.path.join(tmp, "bert_model.ckpt"),
                                  tensors)
  print("wrote %s: %d tensors, hidden_act %s" % (output_dir, len(tensors),
                                                 config["hidden_act"]))
  return tensors


def main(argv):
  if len(argv) > 1:
    raise UserError("unexpected arguments: %s" % " ".join(argv[1:]))
  for name in ("hf_dir", "output_dir"):
    if not FLAGS[name].value:
      raise UserError("--%s is required" % name)
  from adapter_bert.compute import tf_startup  # pylint: disable=g-import-not-at-top
  tf_startup.import_quietly(verbose=FLAGS.verbose)
  convert(FLAGS.hf_dir, FLAGS.output_dir)


def run_main():
  """Runs main; a UserError becomes one line on stderr and exit status 1."""
  cli.run(main)


if __name__ == "__main__":
  run_main()
