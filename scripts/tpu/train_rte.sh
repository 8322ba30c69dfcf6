#!/usr/bin/env bash
# Prompt-tune T5 1.1 LM-adapted base on SuperGLUE RTE on every worker of a TPU VM slice.
# Each host reads its own shard of the data; `--distributed` calls jax.distributed.initialize().
#   TPU_NAME=pt-v3-32 ZONE=europe-west4-a MODEL_DIR=gs://my-bucket/rte scripts/tpu/train_rte.sh
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${MODEL_DIR:?set MODEL_DIR (gs://...)}"
: "${SIZE:=base}" "${TFDS_DATA_DIR:=gs://my-bucket/tfds}"
CKPT="gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_${SIZE}/checkpoint_1100000"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd prompt_tuning && TFDS_DATA_DIR=$TFDS_DATA_DIR \
  PROMPT_TUNING_VOCAB=gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model \
  .venv/bin/prompt-tuning train --distributed \
    --gin_file=models/t5_1_1_${SIZE}_prompt.gin \
    --gin_file=prompts/from_class_labels.gin \
    --gin_file=runs/prompt_finetune.gin \
    --gin.CLASS_LABELS=\"['entailment', 'not_entailment']\" \
    --gin.MODEL_DIR=\"'$MODEL_DIR'\" \
    --gin.MIXTURE_OR_TASK_NAME=\"'super_glue_rte'\" \
    --gin.INITIAL_CHECKPOINT_PATH=\"'$CKPT'\" \
    --gin.TRAIN_STEPS=30000 --gin.BATCH_SIZE=32 \
    --gin.make_mesh.model_parallel_size=1
"
