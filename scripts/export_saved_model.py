"""Exports adapter-tuned BERT task(s) as a SavedModel that takes raw text.

The SavedModel tokenizes in the graph (tensorflow-text, through
`tokenization.InGraphTokenizer`), packs `[CLS] a [SEP] b [SEP]` exactly as
`input_pipeline.pack_pairs` does for training and prediction (longest-first
truncation to `max_seq_length`; an empty `text_b` means a single sentence,
`[CLS] a [SEP]`), and runs the model.

Signatures (TF Serving conventions; every input is a tf.string [batch]):

  inputs:  text_a  the sentence, or the first sentence of a pair;
           text_b  the second sentence, "" for single-sentence tasks.
  outputs of a classification task: probabilities float32 [batch, labels],
           logits float32 [batch, labels], label tf.string [batch] (the
           predicted label as the task's data files spell it);
  outputs of a regression task (STS-B): score float32 [batch].

One task (one --adapter_dir, or --checkpoint): `serving_default` and a
signature named after the task (e.g. `mrpc`) both return that task. Several
--adapter_dir on one base: one signature per task, and `serving_default`
returns all tasks in one pass, with outputs `<task>_probabilities`,
`<task>_logits`, `<task>_label` (or `<task>_score`). The vocabulary is
exported as an asset (`assets/vocab.txt`). Loading the SavedModel needs the
tensorflow-text ops (`import tensorflow_text` in Python; a TF Serving build
with TensorFlow Text ops).

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
