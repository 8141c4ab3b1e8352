#!/usr/bin/env bash
# Example: MRPC with adapters on a Cloud TPU VM, from creation to results.
#
# Creates a TPU VM, installs this toolkit on it, trains and evaluates MRPC
# with BERT-base (the paper's setting: lr 3e-4, 5 epochs, batch 32) reading
# data and checkpoint from Cloud Storage and writing output_dir there, copies
# the results back, and deletes the VM. Needs the gcloud CLI, a project with
# TPU quota and a bucket. Every step is echoed; a failing step stops the run.
#
# Usage:
#   PROJECT=my-project ZONE=us-central2-b BUCKET=gs://my-bucket \
#     bash scripts/cloud_tpu_mrpc.sh
#
# Expected in the bucket: $BUCKET/glue_data/MRPC/{train,dev,test}.tsv and
# $BUCKET/uncased_L-12_H-768_A-12/{vocab.txt,bert_config.json,bert_model.ckpt.*}
# (Google's release, unchanged).
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${BUCKET:?set BUCKET}"
TPU_NAME="${TPU_NAME:-adapter-bert}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"  # Base image; TF is pip-installed.
REPO_URL="${REPO_URL:-https://github.com/your-org/adapter-bert-tf2.git}"
BERT="$BUCKET/uncased_L-12_H-768_A-12"
OUT="$BUCKET/runs/mrpc_adapters_$(date +%Y%m%d_%H%M%S)"
RESULTS="${RESULTS:-./tpu_results}"

set -x
gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" \
  --zone="$ZONE" --accelerator-type="$ACCELERATOR" --version="$RUNTIME"

# On the VM: install, then run the original README command with --use_tpu.
# --tpu_name=local: the TPU is attached to this VM. iterations_per_loop keeps
# 100 steps on the TPU per host call, as TPUEstimator did.
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" \
  --zone="$ZONE" --command="set -e
    git clone $REPO_URL adapter-bert && cd adapter-bert
    python3 -m venv .venv && .venv/bin/pip install -e .
    # The TPU build of the same TensorFlow version (with libtpu) replaces
    # the CPU one that the package's requirements pulled in.
    .venv/bin/pip install 'tensorflow-tpu~=2.21.0' \\
      -f https://storage.googleapis.com/libtpu-tf-releases/index.html
    .venv/bin/python run_classifier.py --task_name=MRPC --do_train=true \
      --do_eval=true --do_predict=true --data_dir=$BUCKET/glue_data/MRPC \
      --vocab_file=$BERT/vocab.txt --bert_config_file=$BERT/bert_config.json \
      --init_checkpoint=$BERT/bert_model.ckpt --max_seq_length=128 \
      --train_batch_size=32 --learning_rate=3e-4 --num_train_epochs=5.0 \
      --use_tpu=true --tpu_name=local --iterations_per_loop=100 \
      --mixed_precision=bfloat16 --output_dir=$OUT"

# Results: eval figures, predictions, submission file and the adapter.
mkdir -p "$RESULTS"
gcloud storage cp "$OUT/eval_results.txt" "$OUT/test_results.tsv" \
  "$OUT/MRPC.tsv" "$OUT/run_config.json" "$RESULTS/"
gcloud storage cp --recursive "$OUT/adapter" "$RESULTS/"

gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" \
  --zone="$ZONE" --quiet
cat "$RESULTS/eval_results.txt"
