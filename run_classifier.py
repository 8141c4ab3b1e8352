"""BERT + adapters fine-tuning on GLUE: train, evaluate, predict.

The flags of google-research/adapter-bert's run_classifier.py, with the same
names, meanings and defaults, plus the adapter, precision and distribution
flags of this toolkit. For example (the original README command):

  python run_classifier.py --task_name=MRPC --do_train=true --do_eval=true \
    --data_dir=$GLUE_DIR/MRPC --vocab_file=$BERT_BASE_DIR/vocab.txt \
    --bert_config_file=$BERT_BASE_DIR/bert_config.json \
    --init_checkpoint=$BERT_BASE_DIR/bert_model.ckpt --max_seq_length=128 \
    --train_batch_size=32 --learning_rate=3e-4 --num_train_epochs=5.0 \
    --output_dir=/tmp/adapter_bert_mrpc/
"""

# The code lives in `adapter_bert.cli.classifier` (installed; also the console script
# `adapter-bert-classifier`); this file keeps `python run_classifier.py --flags` and
# `import run_classifier` working from the checkout, as with the original toolkit.

import importlib
import sys

if __name__ == "__main__":
  importlib.import_module("adapter_bert.cli.classifier").run_main()
else:
  sys.modules[__name__] = importlib.import_module("adapter_bert.cli.classifier")
