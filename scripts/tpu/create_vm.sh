#!/usr/bin/env bash
# Create a Cloud TPU VM slice and install prompt_tuning on every worker.
#
#   TPU_NAME=pt-v3-32 ZONE=europe-west4-a ACCELERATOR=v3-32 \
#   REPO_URL=https://github.com/<you>/prompt_tuning.git scripts/tpu/create_vm.sh
#
# Required: TPU_NAME, ZONE, REPO_URL (the git URL of this repository: your fork or mirror;
# the workers clone it). Optional: ACCELERATOR (v3-8), REPO_REF (a branch, tag or commit;
# default: the remote's default branch), RUNTIME (tpu-ubuntu2204-base), PYTHON_VERSION (3.11).
#
# The tpu-ubuntu2204-base image ships Python 3.10, but requirements.lock needs >= 3.11
# (jax 0.10.2), so each worker installs python${PYTHON_VERSION} from the deadsnakes PPA
# (apt) and builds prompt_tuning/.venv with it. An existing clone is updated (fast-forward
# only) if it is a clone of REPO_URL; any failure stops the script with its message.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
: "${REPO_URL:?set REPO_URL to the git URL of this repository (e.g. https://github.com/<you>/prompt_tuning.git)}"
: "${ACCELERATOR:=v3-8}" "${RUNTIME:=tpu-ubuntu2204-base}" "${PYTHON_VERSION:=3.11}"
: "${REPO_REF:=}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
JAX_VERSION="$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' "$ROOT/requirements.lock")"
if [ -z "$JAX_VERSION" ]; then
  echo "error: no 'jax==' pin in $ROOT/requirements.lock" >&2
  exit 1
fi

if gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  echo "TPU VM $TPU_NAME exists in $ZONE; installing on it"
else
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
    --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
fi

# Runs on every worker; values are quoted here, so the remote shell sees them verbatim.
REMOTE="$(cat <<EOS
set -euo pipefail
PY=python$(printf %q "$PYTHON_VERSION")
REPO_URL=$(printf %q "$REPO_URL")
REPO_REF=$(printf %q "$REPO_REF")
if ! command -v "\$PY" >/dev/null 2>&1; then
  sudo apt-get update -qq
  sudo apt-get install -y -qq software-properties-common
  sudo add-apt-repository -y ppa:deadsnakes/ppa
  sudo apt-get update -qq
  sudo apt-get install -y -qq "\$PY" "\$PY-venv" "\$PY-dev"
fi
if [ -d prompt_tuning/.git ]; then
  ORIGIN="\$(git -C prompt_tuning remote get-url origin)"
  if [ "\$ORIGIN" != "\$REPO_URL" ]; then
    echo "error: ~/prompt_tuning is a clone of \$ORIGIN, not \$REPO_URL; remove it or set REPO_URL" >&2
    exit 1
  fi
  git -C prompt_tuning fetch --quiet origin
  if [ -z "\$REPO_REF" ]; then git -C prompt_tuning pull --quiet --ff-only; fi
else
  git clone --quiet "\$REPO_URL" prompt_tuning
fi
if [ -n "\$REPO_REF" ]; then git -C prompt_tuning checkout --quiet "\$REPO_REF"; fi
cd prompt_tuning
"\$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.lock
.venv/bin/pip install -q "jax[tpu]==$JAX_VERSION"
.venv/bin/pip install -q --no-deps -e .
echo "worker ready: \$(.venv/bin/python --version), prompt-tuning in \$PWD/.venv"
EOS
)"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$REMOTE"
