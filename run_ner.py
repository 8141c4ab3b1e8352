"""Token classification (named-entity recognition) with adapters.

The command line of run_classifier.py (the same flags and meanings where
they apply: data_dir, vocab/config/checkpoint, do_train/do_eval/do_predict,
batch sizes, learning rate, epochs, adapter flags, output_dir, resume,
TPU/GPU/CPU, mixed precision) for files in the CoNLL format: `--data_dir`
holds train.txt and valid.txt (CoNLL-2003's layout; IOB1 or IOB2 tags in
the last column), `--predict_file` any such file to tag. See
training/ner_runner.py for the outputs.

  python run_ner.py --do_train=true --do_eval=true \
    --data_dir=../shared/conll2003 \
    --vocab_file=$BERT_DIR/vocab.txt --bert_config_file=$BERT_DIR/bert_config.json \
    --init_checkpoint=$BERT_DIR/bert_model.ckpt --max_seq_length=128 \
    --train_batch_size=32 --learning_rate=3e-4 --num_train_epochs=3 \
    --output_dir=/tmp/ner/
"""

# The code lives in `adapter_bert.cli.ner` (installed; also the console script
# `adapter-bert-ner`); this file keeps `python run_ner.py --flags` and
# `import run_ner` working from the checkout, as with the original toolkit.

import importlib
import sys

if __name__ == "__main__":
  importlib.import_module("adapter_bert.cli.ner").run_main()
else:
  sys.modules[__name__] = importlib.import_module("adapter_bert.cli.ner")
