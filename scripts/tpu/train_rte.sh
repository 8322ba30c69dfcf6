#!/usr/bin/env bash
# Prompt-tune T5 1.1 LM-adapted on SuperGLUE RTE on every worker of a TPU VM slice made by
# create_vm.sh. Every host reads the same global batches and keeps its rows; `--distributed`
# calls jax.distributed.initialize() (docs/multihost.md).
#
#   TPU_NAME=pt-v3-32 ZONE=europe-west4-a ACCELERATOR=v3-32 MODEL_DIR=gs://my-bucket/rte \
#   TFDS_DATA_DIR=gs://my-bucket/tfds scripts/tpu/train_rte.sh
#
# Required: TPU_NAME, ZONE, ACCELERATOR (as given to create_vm.sh), MODEL_DIR (gs://),
# TFDS_DATA_DIR (gs://, where TFDS prepares/reads super_glue/rte).
# Optional: SIZE (small|base|large|xl|xxl, default base), MODEL_PARALLEL (devices each frozen
# weight is split over; default by SIZE: 1, except xl 4 and xxl 8), TRAIN_STEPS (absolute, as in
# T5X: default 1_130_000 = 30,000 steps from checkpoint_1100000), BATCH_SIZE (32),
# NUM_MICROBATCHES (1; more splits each batch's activations, same result).
#
# Before training, `prompt-tuning plan` on worker 0 checks that the run fits one device of
# ACCELERATOR with MODEL_PARALLEL; if it does not, nothing is started.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
: "${ACCELERATOR:?set ACCELERATOR to the slice type, e.g. v3-32}"
: "${MODEL_DIR:?set MODEL_DIR (gs://...)}"
: "${TFDS_DATA_DIR:?set TFDS_DATA_DIR (gs://..., where TFDS data is prepared)}"
: "${SIZE:=base}" "${TRAIN_STEPS:=1_130_000}" "${BATCH_SIZE:=32}" "${NUM_MICROBATCHES:=1}"

case "$SIZE" in
  small|base|large) DEFAULT_MODEL_PARALLEL=1 ;;
  xl) DEFAULT_MODEL_PARALLEL=4 ;;
  xxl) DEFAULT_MODEL_PARALLEL=8 ;;
  *) echo "error: SIZE=$SIZE; choose small, base, large, xl or xxl" >&2; exit 1 ;;
esac
: "${MODEL_PARALLEL:=$DEFAULT_MODEL_PARALLEL}"

# Devices (JAX devices) of the slice and the memory of each, by TPU generation; the number in
# the accelerator type counts TensorCores (chips for v5e and v6e).
GENERATION="${ACCELERATOR%%-*}"
COUNT="${ACCELERATOR##*-}"
case "$GENERATION" in
  v2) DEVICES=$COUNT; DEVICE_GIB=8 ;;
  v3) DEVICES=$COUNT; DEVICE_GIB=16 ;;
  v4) DEVICES=$((COUNT / 2)); DEVICE_GIB=32 ;;
  v5p) DEVICES=$((COUNT / 2)); DEVICE_GIB=95 ;;
  v5litepod|v5e) DEVICES=$COUNT; DEVICE_GIB=16 ;;
  v6e) DEVICES=$COUNT; DEVICE_GIB=32 ;;
  *) echo "error: ACCELERATOR=$ACCELERATOR; expected e.g. v3-32, v4-16, v5litepod-8, v6e-8" >&2
     exit 1 ;;
esac

CKPT="gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_${SIZE}/checkpoint_1100000"
GIN_FLAGS=(
  "--gin_file=models/t5_1_1_${SIZE}_prompt.gin"
  "--gin_file=prompts/from_class_labels.gin"
  "--gin_file=runs/prompt_finetune.gin"
  "--gin.CLASS_LABELS=['entailment', 'not_entailment']"
  "--gin.MODEL_DIR='$MODEL_DIR'"
  "--gin.MIXTURE_OR_TASK_NAME='super_glue_rte'"
  "--gin.INITIAL_CHECKPOINT_PATH='$CKPT'"
  "--gin.TRAIN_STEPS=$TRAIN_STEPS"
  "--gin.BATCH_SIZE=$BATCH_SIZE"
  "--gin.train.num_microbatches=$NUM_MICROBATCHES"
  "--gin.make_mesh.model_parallel_size=$MODEL_PARALLEL"
)
QUOTED="$(printf '%q ' "${GIN_FLAGS[@]}")"

echo "checking the fit: T5 1.1 $SIZE on $ACCELERATOR ($DEVICES devices of $DEVICE_GIB GiB), model parallel $MODEL_PARALLEL"
if ! gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=0 --command "
  set -euo pipefail
  cd prompt_tuning && JAX_PLATFORMS=cpu .venv/bin/prompt-tuning plan $QUOTED \
    --num_devices $DEVICES --device_memory_gib $DEVICE_GIB
"; then
  echo "error: no training started: the plan above failed (with MODEL_PARALLEL=$MODEL_PARALLEL, NUM_MICROBATCHES=$NUM_MICROBATCHES on $ACCELERATOR)" >&2
  exit 1
fi

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -euo pipefail
  cd prompt_tuning && .venv/bin/prompt-tuning train --distributed \
    --tfds_data_dir=$(printf %q "$TFDS_DATA_DIR") $QUOTED
"
