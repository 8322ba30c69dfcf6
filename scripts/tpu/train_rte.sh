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
# weight is split over; default by SIZE: 1, except xl 4 and xxl 8, doubled while the data
# shards outnumber BATCH_SIZE), TRAIN_STEPS (absolute, as in T5X: default 1_130_000 = 30,000
# steps from checkpoint_1100000), BATCH_SIZE (32), NUM_MICROBATCHES (default 'auto': the
# smallest count whose compiled step fits one device of ACCELERATOR; more splits each batch's
# activations, same result), ACTIVATION_DTYPE (bfloat16, as T5X), FROZEN_DTYPE (float32: the
# frozen weights as the checkpoint stores them; bfloat16 halves them), REMAT (none|full|dots|
# dots_saveable, default none). The defaults fit every size on the slices of docs/training.md's
# table ("Settings that fit").
#
# Before training, `prompt-tuning plan` on worker 0 checks that the run fits one device of
# ACCELERATOR (PLAN_COMPILE=1: by XLA's compiled memory on fake CPU devices, slower; a bf16 run
# is compiled there with float32 activations, its upper bound: docs/performance.md); if it does
# not, nothing is started. `train` itself compiles the step with abstract weights on the TPUs and
# checks it (and resolves NUM_MICROBATCHES='auto') before the checkpoint is read.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
: "${ACCELERATOR:?set ACCELERATOR to the slice type, e.g. v3-32}"
: "${MODEL_DIR:?set MODEL_DIR (gs://...)}"
: "${TFDS_DATA_DIR:?set TFDS_DATA_DIR (gs://..., where TFDS data is prepared)}"
: "${SIZE:=base}" "${TRAIN_STEPS:=1_130_000}" "${BATCH_SIZE:=32}" "${NUM_MICROBATCHES:=auto}"
: "${ACTIVATION_DTYPE:=bfloat16}" "${FROZEN_DTYPE:=float32}" "${REMAT:=none}" "${PLAN_COMPILE:=0}"

case "$SIZE" in
  small|base|large) DEFAULT_MODEL_PARALLEL=1 ;;
  xl) DEFAULT_MODEL_PARALLEL=4 ;;
  xxl) DEFAULT_MODEL_PARALLEL=8 ;;
  *) echo "error: SIZE=$SIZE; choose small, base, large, xl or xxl" >&2; exit 1 ;;
esac
case "$REMAT" in
  none|full|dots|dots_saveable) ;;
  *) echo "error: REMAT=$REMAT; choose none, full, dots or dots_saveable" >&2; exit 1 ;;
esac
for dtype in "$ACTIVATION_DTYPE" "$FROZEN_DTYPE"; do
  case "$dtype" in
    float32|bfloat16) ;;
    *) echo "error: ACTIVATION_DTYPE=$ACTIVATION_DTYPE, FROZEN_DTYPE=$FROZEN_DTYPE; each is float32 or bfloat16" >&2
       exit 1 ;;
  esac
done
case "$NUM_MICROBATCHES" in
  auto) MICROBATCHES_GIN="'auto'" ;;
  ''|*[!0-9]*) echo "error: NUM_MICROBATCHES=$NUM_MICROBATCHES; give a count (1, 2, ...) or auto" >&2
     exit 1 ;;
  *) MICROBATCHES_GIN="$NUM_MICROBATCHES" ;;
esac

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
if [ -z "${MODEL_PARALLEL:-}" ]; then
  # The size's default, doubled while there would be more data shards than examples per batch.
  MODEL_PARALLEL=$(( DEFAULT_MODEL_PARALLEL < DEVICES ? DEFAULT_MODEL_PARALLEL : DEVICES ))
  while [ $(( DEVICES / MODEL_PARALLEL )) -gt "$BATCH_SIZE" ]; do
    MODEL_PARALLEL=$(( MODEL_PARALLEL * 2 ))
  done
fi

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
  "--gin.NUM_MICROBATCHES=$MICROBATCHES_GIN"
  "--gin.make_mesh.model_parallel_size=$MODEL_PARALLEL"
  "--gin.ACTIVATION_DTYPE='$ACTIVATION_DTYPE'"
  "--gin.train.frozen_dtype='$FROZEN_DTYPE'"
  "--gin.T5Config.remat='$REMAT'"
)
PLAN_FLAGS=(--num_devices "$DEVICES" --device_memory_gib "$DEVICE_GIB")
if [ "$PLAN_COMPILE" = 1 ]; then PLAN_FLAGS+=(--compile); fi
QUOTED="$(printf '%q ' "${GIN_FLAGS[@]}")"

echo "checking the fit: T5 1.1 $SIZE on $ACCELERATOR ($DEVICES devices of $DEVICE_GIB GiB), model parallel $MODEL_PARALLEL, microbatches $NUM_MICROBATCHES, activations $ACTIVATION_DTYPE, frozen weights $FROZEN_DTYPE, remat $REMAT"
if ! gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=0 --command "
  set -euo pipefail
  cd prompt_tuning && JAX_PLATFORMS=cpu .venv/bin/prompt-tuning plan $QUOTED \
    ${PLAN_FLAGS[*]}
"; then
  echo "error: no training started: the plan above failed (with MODEL_PARALLEL=$MODEL_PARALLEL, NUM_MICROBATCHES=$NUM_MICROBATCHES, ACTIVATION_DTYPE=$ACTIVATION_DTYPE, FROZEN_DTYPE=$FROZEN_DTYPE, REMAT=$REMAT on $ACCELERATOR)" >&2
  exit 1
fi

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -euo pipefail
  cd prompt_tuning && .venv/bin/prompt-tuning train --distributed \
    --tfds_data_dir=$(printf %q "$TFDS_DATA_DIR") $QUOTED
"
