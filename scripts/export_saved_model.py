"""Exports adapter-tuned BERT task(s) as a SavedModel that takes raw text.

The signatures, inputs and outputs are described in
adapter_bert/serving/export.py; the flags are adapter_bert.cli.export's.

Usage:

  python scripts/export_saved_model.py \
    --bert_config_file=$BERT_DIR/bert_config.json \
    --vocab_file=$BERT_DIR/vocab.txt \
    --init_checkpoint=$BERT_DIR/bert_model.ckpt \
    --adapter_dir=/tmp/mrpc/adapter --adapter_dir=/tmp/sst2/adapter \
    --export_dir=/tmp/serving/glue/1

  python scripts/export_saved_model.py --bert_config_file=... \
    --vocab_file=... --checkpoint=/tmp/mrpc --export_dir=/tmp/serving/mrpc/1
"""

import importlib

if __name__ == "__main__":
  # The command line lives in the installed package (adapter_bert.cli.export).
  importlib.import_module("adapter_bert.cli.export").run_main()
