#!/usr/bin/env bash
# Create a Cloud TPU VM slice and install prompt_tuning on every worker.
#   TPU_NAME=pt-v3-32 ZONE=europe-west4-a ACCELERATOR=v3-32 scripts/tpu/create_vm.sh
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${ACCELERATOR:=v3-8}"
: "${RUNTIME:=tpu-ubuntu2204-base}" "${REPO_URL:=https://github.com/your-org/prompt_tuning.git}"
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
  --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  git clone $REPO_URL prompt_tuning || (cd prompt_tuning && git pull)
  cd prompt_tuning && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.lock \
    && .venv/bin/pip install -q 'jax[tpu]==0.10.2' && .venv/bin/pip install -q --no-deps -e .
"
