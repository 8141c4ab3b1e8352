"""Writes a Hugging Face BERT directory out in Google's TF1 layout
(adapter_bert/cli/convert_hf.py has what it reads and writes).

Usage:

  python scripts/convert_hf_checkpoint.py --hf_dir=/path/to/hf_bert \
      --output_dir=/tmp/bert_tf1
"""

import importlib

if __name__ == "__main__":
  # The command line lives in the installed package (adapter_bert.cli.convert_hf).
  importlib.import_module("adapter_bert.cli.convert_hf").run_main()
