"""scripts/tpu/*.sh with a stub `gcloud` that records its arguments and runs the remote
command locally, in a fake worker home; no network, no TPU.

On the "worker", apt, sudo and the deadsnakes Python are stubs that record their calls
(`python3.11 -m venv` makes a venv whose pip records its arguments); git is real and
clones a local repository.
"""
import os
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CREATE = os.path.join(REPO, "scripts", "tpu", "create_vm.sh")
TRAIN = os.path.join(REPO, "scripts", "tpu", "train_rte.sh")

GCLOUD = r"""#!/usr/bin/env bash
# Records each call (arguments NUL-separated, then RS NUL) and emulates a TPU VM.
{ printf '%s\0' "$@"; printf '\036\0'; } >> "$STUB_DIR/gcloud.calls"
case " $* " in
  *" tpu-vm describe "*) [ -e "$STUB_DIR/tpu_exists" ]; exit ;;
  *" tpu-vm create "*) touch "$STUB_DIR/tpu_exists"; exit 0 ;;
  *" tpu-vm ssh "*)
    command=""
    while [ $# -gt 0 ]; do
      if [ "$1" = "--command" ]; then command="$2"; shift; fi
      shift
    done
    cd "$STUB_HOME" && HOME="$STUB_HOME" exec bash -c "$command" ;;
esac
echo "stub gcloud: unexpected call: $*" >&2
exit 3
"""

RECORD = r"""#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$STUB_DIR/commands.log"
"""

APT_GET = RECORD + r"""
# Installing the deadsnakes Python puts a python3.11 on PATH.
case " $* " in *" install "*python3.11*) cp "$STUB_DIR/python3.11.stub" "$STUB_DIR/bin/python3.11" ;; esac
"""

PYTHON = RECORD + r"""
# `python3.11 -m venv DIR`: a venv whose pip records its arguments.
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/usr/bin/env bash\necho "pip $*" >> "$STUB_DIR/commands.log"\n' > "$3/bin/pip"
  printf '#!/usr/bin/env bash\necho "Python 3.11.9"\n' > "$3/bin/python"
  chmod +x "$3/bin/pip" "$3/bin/python"
fi
"""

# The worker's prompt-tuning: `plan` is the real one (checks the fit), `train` records.
PROMPT_TUNING = """#!/usr/bin/env bash
{ printf '%s\\0' "$@"; printf '\\036\\0'; } >> "$STUB_DIR/prompt_tuning.calls"
if [ "$1" = "plan" ]; then exec "PYTHON" -m prompt_tuning "$@"; fi
"""


TOOLS = ("bash", "env", "git", "sed", "cat", "mkdir", "chmod", "basename", "dirname", "cp",
         "touch", "rm", "printf")


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  os.chmod(path, 0o755)


@pytest.fixture
def stubs(tmp_path):
  """(env, stub dir): stub gcloud/sudo/apt on PATH, an empty worker home."""
  stub = tmp_path / "stub"
  for name in ("sudo",):
    _write(str(stub / "bin" / name), '#!/usr/bin/env bash\nexec "$@"\n')
  _write(str(stub / "bin" / "gcloud"), GCLOUD)
  _write(str(stub / "bin" / "apt-get"), APT_GET)
  _write(str(stub / "bin" / "add-apt-repository"), RECORD)
  _write(str(stub / "python3.11.stub"), PYTHON)
  home = tmp_path / "worker"
  home.mkdir()
  # PATH: the stubs and a few real tools (git among them), not this machine's Pythons.
  tools = tmp_path / "tools"
  tools.mkdir()
  for name in TOOLS:
    found = shutil.which(name)
    if found is None:
      pytest.skip(f"{name} is not installed")
    os.symlink(found, tools / name)
  env = {"PATH": f"{stub / 'bin'}:{tools}", "HOME": str(tmp_path), "STUB_DIR": str(stub),
         "STUB_HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C.UTF-8"}
  return env, stub


def _calls(path):
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    records = f.read().split(b"\x1e\0")
  return [r.rstrip(b"\0").decode().split("\0") for r in records if r]


def _log(stub):
  path = stub / "commands.log"
  return path.read_text().splitlines() if path.exists() else []


def _source_repo(tmp_path):
  """A local git repository standing in for REPO_URL."""
  repo = tmp_path / "source.git"
  repo.mkdir(parents=True)
  git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
  subprocess.run(git + ["init", "-q", str(repo)], check=True)
  (repo / "README").write_text("prompt_tuning\n")
  subprocess.run(git + ["-C", str(repo), "add", "README"], check=True)
  subprocess.run(git + ["-C", str(repo), "commit", "-q", "-m", "init"], check=True)
  return str(repo)


def _run(script, env, **extra):
  return subprocess.run(["bash", script], env={**env, **extra}, capture_output=True, text=True,
                        timeout=300)


def test_create_vm_requires_repo_url(stubs):
  env, stub = stubs
  proc = _run(CREATE, env, TPU_NAME="pt", ZONE="europe-west4-a")
  assert proc.returncode != 0 and "REPO_URL" in proc.stderr
  assert _calls(stub / "gcloud.calls") == []


def test_create_vm_installs_python_311_and_the_locked_environment(stubs, tmp_path):
  env, stub = stubs
  repo = _source_repo(tmp_path)
  proc = _run(CREATE, env, TPU_NAME="pt", ZONE="europe-west4-a", ACCELERATOR="v3-32",
              REPO_URL=repo)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  calls = _calls(stub / "gcloud.calls")
  assert calls[0][:4] == ["compute", "tpus", "tpu-vm", "describe"]
  create = calls[1]
  assert create[:5] == ["compute", "tpus", "tpu-vm", "create", "pt"]
  assert create[create.index("--accelerator-type") + 1] == "v3-32"
  assert create[create.index("--version") + 1] == "tpu-ubuntu2204-base"
  assert "--worker=all" in calls[2]
  log = _log(stub)
  assert "add-apt-repository -y ppa:deadsnakes/ppa" in log
  assert any(l.startswith("apt-get install") and "python3.11-venv" in l for l in log), log
  assert "python3.11 -m venv .venv" in log
  with open(os.path.join(REPO, "requirements.lock")) as f:
    jax_pin = next(l.strip() for l in f if l.startswith("jax=="))
  pips = [l for l in log if l.startswith("pip install")]
  assert pips == ["pip install -q --upgrade pip", "pip install -q -r requirements.lock",
                  f"pip install -q jax[tpu]=={jax_pin[len('jax=='):]}",
                  "pip install -q --no-deps -e ."]
  assert (tmp_path / "worker" / "prompt_tuning" / "README").exists()
  assert "worker ready: Python 3.11.9" in proc.stdout

  # Again on the same VM: no new VM, no new Python, the clone is updated.
  (stub / "commands.log").unlink()
  proc = _run(CREATE, env, TPU_NAME="pt", ZONE="europe-west4-a", REPO_URL=repo)
  assert proc.returncode == 0, proc.stderr
  assert "exists" in proc.stdout
  assert not any(c[3] == "create" for c in _calls(stub / "gcloud.calls")[3:])
  assert not any(l.startswith("apt-get") for l in _log(stub))


def test_create_vm_stops_when_the_clone_fails(stubs, tmp_path):
  env, stub = stubs
  proc = _run(CREATE, env, TPU_NAME="pt", ZONE="z", REPO_URL=str(tmp_path / "no_such_repo"))
  assert proc.returncode != 0
  assert "no_such_repo" in proc.stderr
  assert not any(l.startswith("pip") for l in _log(stub))


def test_create_vm_refuses_a_clone_of_another_repository(stubs, tmp_path):
  env, stub = stubs
  other = _source_repo(tmp_path / "other")
  subprocess.run(["git", "clone", "-q", other, str(tmp_path / "worker" / "prompt_tuning")],
                 check=True)
  proc = _run(CREATE, env, TPU_NAME="pt", ZONE="z", REPO_URL=_source_repo(tmp_path))
  assert proc.returncode != 0 and "is a clone of" in proc.stderr
  assert not any(l.startswith("pip") for l in _log(stub))


def _worker_prompt_tuning(tmp_path):
  _write(str(tmp_path / "worker" / "prompt_tuning" / ".venv" / "bin" / "prompt-tuning"),
         PROMPT_TUNING.replace("PYTHON", sys.executable))


TRAIN_ENV = dict(TPU_NAME="pt", ZONE="europe-west4-a", ACCELERATOR="v3-32",
                 MODEL_DIR="gs://bucket/rte", TFDS_DATA_DIR="gs://bucket/tfds")


@pytest.mark.parametrize("missing", ["TFDS_DATA_DIR", "ACCELERATOR", "MODEL_DIR"])
def test_train_requires_its_settings(stubs, missing):
  env, stub = stubs
  proc = _run(TRAIN, env, **{k: v for k, v in TRAIN_ENV.items() if k != missing})
  assert proc.returncode != 0 and missing in proc.stderr
  assert _calls(stub / "gcloud.calls") == []


@pytest.mark.slow
def test_train_xxl_splits_the_model_and_checks_the_fit_first(stubs, tmp_path, shared_data):
  env, stub = stubs
  _worker_prompt_tuning(tmp_path)
  vocab = str(shared_data / "t5_vocab" / "sentencepiece.model")  # class labels are tokenized
  run_env = {**TRAIN_ENV, "SIZE": "xxl", "PROMPT_TUNING_VOCAB": vocab,
             "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
  proc = _run(TRAIN, env, **run_env)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  plan, train = _calls(stub / "prompt_tuning.calls")
  assert plan[0] == "plan" and train[0] == "train"
  assert "--gin.make_mesh.model_parallel_size=8" in plan and "--num_devices" in plan
  assert plan[plan.index("--num_devices") + 1] == "32"
  assert plan[plan.index("--device_memory_gib") + 1] == "16"
  assert "--compile" not in plan  # PLAN_COMPILE=1 asks for it
  # The v3-32 defaults: 8-way model parallel, bf16 activations, the count that fits chosen.
  assert "NUM_MICROBATCHES='auto': " in proc.stdout and "total per device" in proc.stdout
  for flag in ("--distributed", "--tfds_data_dir=gs://bucket/tfds",
               "--gin.make_mesh.model_parallel_size=8", "--gin.NUM_MICROBATCHES='auto'",
               "--gin.ACTIVATION_DTYPE='bfloat16'", "--gin.train.frozen_dtype='float32'",
               "--gin.T5Config.remat='none'",
               "--gin.TRAIN_STEPS=1_130_000", "--gin_file=models/t5_1_1_xxl_prompt.gin",
               "--gin.INITIAL_CHECKPOINT_PATH='gs://t5-data/pretrained_models/t5x/"
               "t5_1_1_lm100k_xxl/checkpoint_1100000'",
               "--gin.CLASS_LABELS=['entailment', 'not_entailment']"):
    assert flag in train, (flag, train)
  gcloud = _calls(stub / "gcloud.calls")
  assert "--worker=0" in gcloud[0] and "--worker=all" in gcloud[1]

  # Every knob plan may advise reaches both commands.
  (stub / "prompt_tuning.calls").unlink()
  proc = _run(TRAIN, env, **{**run_env, "NUM_MICROBATCHES": "2", "REMAT": "full",
                             "FROZEN_DTYPE": "bfloat16", "ACTIVATION_DTYPE": "float32"})
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  for call in _calls(stub / "prompt_tuning.calls"):
    for flag in ("--gin.NUM_MICROBATCHES=2", "--gin.T5Config.remat='full'",
                 "--gin.train.frozen_dtype='bfloat16'", "--gin.ACTIVATION_DTYPE='float32'"):
      assert flag in call, (flag, call)

  # Unsplit, XXL does not fit a 16 GiB v3 core: nothing is started. (One microbatch: a
  # batch of 32 cannot be cut in 4 over 32 data shards, which plan refuses first.)
  (stub / "prompt_tuning.calls").unlink()
  proc = _run(TRAIN, env, **{**run_env, "MODEL_PARALLEL": "1", "NUM_MICROBATCHES": "1"})
  assert proc.returncode != 0
  assert "more than the 16 GiB of one device" in proc.stderr
  assert "no training started" in proc.stderr
  assert [c[0] for c in _calls(stub / "prompt_tuning.calls")] == ["plan"]


@pytest.mark.parametrize("setting", ["REMAT=some", "FROZEN_DTYPE=int8", "NUM_MICROBATCHES=two"])
def test_train_rejects_a_bad_knob_before_any_call(stubs, setting):
  env, stub = stubs
  key, value = setting.split("=")
  proc = _run(TRAIN, env, **TRAIN_ENV, **{key: value})
  assert proc.returncode != 0 and f"{key}={value}" in proc.stderr
  assert _calls(stub / "gcloud.calls") == []


@pytest.mark.slow
def test_train_raises_model_parallel_until_the_batch_splits(stubs, tmp_path, shared_data):
  """64 devices, batch 32: 1-way model parallel would leave devices without an example."""
  env, stub = stubs
  _worker_prompt_tuning(tmp_path)
  vocab = str(shared_data / "t5_vocab" / "sentencepiece.model")
  proc = _run(TRAIN, env, **{**TRAIN_ENV, "SIZE": "small", "ACCELERATOR": "v3-64",
                             "PROMPT_TUNING_VOCAB": vocab, "TF_CPP_MIN_LOG_LEVEL": "3",
                             "PYTHONPATH": REPO})
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  plan, train = _calls(stub / "prompt_tuning.calls")
  assert "--gin.make_mesh.model_parallel_size=2" in plan and \
      "--gin.make_mesh.model_parallel_size=2" in train


def test_train_rejects_an_unknown_size_or_accelerator(stubs):
  env, stub = stubs
  assert "SIZE=huge" in _run(TRAIN, env, **TRAIN_ENV, SIZE="huge").stderr
  assert "ACCELERATOR=x9-8" in _run(TRAIN, env, **{**TRAIN_ENV, "ACCELERATOR": "x9-8"}).stderr
  assert _calls(stub / "gcloud.calls") == []


def test_scripts_are_valid_bash():
  for script in (CREATE, TRAIN):
    subprocess.run(["bash", "-n", script], check=True)
    assert shlex.split(open(script).readline()) == ["#!/usr/bin/env", "bash"]
