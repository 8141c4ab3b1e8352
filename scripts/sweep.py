"""The hyperparameter sweep of adapter tuning on GLUE (Houlsby et al. 2019),
and its results table: adapter_bert/cli/sweep.py has the flags, the files
it writes and how it resumes.

Usage:

  python scripts/sweep.py --glue_dir=$GLUE_DIR --bert_dir=$BERT_BASE_DIR \
    --output_dir=/tmp/adapter_sweep
  python scripts/sweep.py --glue_dir=$GLUE_DIR --bert_dir=$BERT_BASE_DIR \
    --output_dir=/tmp/adapter_sweep --tasks=MRPC,RTE --adapter_sizes=64 \
    --dry_run
"""

import importlib

if __name__ == "__main__":
  # The command line lives in the installed package (adapter_bert.cli.sweep).
  importlib.import_module("adapter_bert.cli.sweep").run_main()
