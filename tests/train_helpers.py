"""Running the gin-configured trainer in-process on the toy task (tests only)."""
import contextlib
import io
import json
import os
import subprocess
import sys
from typing import Sequence, Tuple

import pytest

from prompt_tuning import cli, configurables, gin_utils

TOY_BINDINGS = (
    "MIXTURE_OR_TASK_NAME = 'toy_parity'",
    "MIXTURE_OR_TASK_MODULE = 'prompt_tuning.data.toy_tasks'",
    "INITIAL_CHECKPOINT_PATH = None",
    "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}",
    "BATCH_SIZE = 8",
    "EVAL_PERIOD = None",
    "train.log_every = 1",
)
TOY_FILES = ("models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin")
# The toy task and model for eval/infer runs (runs/prompt_eval.gin and the like).
TOY_EVAL_BINDINGS = tuple(b for b in TOY_BINDINGS if b.startswith(
    ("MIXTURE_OR_TASK", "INITIAL_CHECKPOINT_PATH", "TASK_FEATURE_LENGTHS", "BATCH_SIZE")))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_train(model_dir, steps: int, extra: Sequence[str] = (), files: Sequence[str] = TOY_FILES):
  """Trains the toy prompt model; returns the trainer's summary dict."""
  from prompt_tuning.train import trainer
  configurables.parse(list(files), [*TOY_BINDINGS, f"MODEL_DIR = '{model_dir}'",
                                f"TRAIN_STEPS = {steps}", f"CHECKPOINT_PERIOD = {steps}", *extra])
  return gin_utils.call(trainer.train)


def run_cli(argv: Sequence[str]) -> Tuple[int, str]:
  """`prompt-tuning ARGV` in-process, as a user runs it: (exit code, stdout + stderr)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    with pytest.raises(SystemExit) as exit_info:
      cli.main(list(argv))
  return exit_info.value.code, out.getvalue()


def cli_process(argv: Sequence) -> subprocess.CompletedProcess:
  """`python -m prompt_tuning ARGV` run in this process, as `subprocess.run(...,
  capture_output=True, text=True)` returns it: exit code, stdout, stderr (an uncaught
  exception's traceback and exit code 1, as the interpreter's). A subprocess costs ~10 s of
  imports; keep those for what needs a fresh process (device counts, signals, several hosts)."""
  import traceback  # pylint: disable=g-import-not-at-top
  out, err = io.StringIO(), io.StringIO()
  code = 0
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      cli.main([str(a) for a in argv])
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception:  # pylint: disable=broad-except
      traceback.print_exc()
      code = 1
  return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def losses(summary):
  return [h["loss"] for h in summary["train_history"]]


def run_on_eight_devices(script: str, timeout: int = 600):
  """Runs `script` in a subprocess with 8 fake CPU devices; returns the JSON it prints
  after `RESULT` (JAX fixes its device count at start-up, hence the subprocess). The
  script runs from the repo with `json` imported."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", f"import json, sys; sys.path.insert(0, {REPO!r})\n"
                         + script], env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.split("RESULT")[-1])
