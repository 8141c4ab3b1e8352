"""AdapterFusion on a GLUE task with the Python API (Pfeiffer et al. 2021):
adapter_bert/cli/fusion_glue.py has the flags and what it writes.

Usage (the README's fusion row: MRPC, RTE and SST-2 adapters fused for RTE):

  python scripts/adapter_fusion_glue.py --task_name=RTE \
    --data_dir=../shared/glue_data/RTE \
    --bert_dir=../shared/bert/minilm_l6_h384_uncased \
    --adapters=runs/mrpc/adapter,runs/rte/adapter,runs/sst2/adapter \
    --learning_rate=5e-5 --num_train_epochs=5 --output_dir=/tmp/fusion_rte
"""

import importlib

if __name__ == "__main__":
  # The command line lives in the installed package (adapter_bert.cli.fusion_glue).
  importlib.import_module("adapter_bert.cli.fusion_glue").run_main()
