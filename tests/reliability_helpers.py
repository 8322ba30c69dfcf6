"""What the reliability tests share: prepared files, in-process CLI runs, the one-line check,
snapshots of a folder, and builders of each command's argv (tests/test_reliability*.py).

The prepared files (`prepare`, the session's `prepared` fixture in conftest.py):
a finished 2-step toy run, a backbone folder, a PEFT adapter and input files.
A test that changes them works on a copy.
"""
import hashlib
import os
import pathlib
import shutil
from typing import Callable, Sequence, Tuple

import numpy as np
import pytest

from prompt_tuning import cli
from tests.train_helpers import TOY_BINDINGS, TOY_FILES, toy_train

REPO = pathlib.Path(__file__).resolve().parents[1]
HF_FIXTURE = REPO / "tests" / "fixtures" / "hf_t5_tiny"  # d_model 32, like the toy model
TOY_MODULE = "prompt_tuning.data.toy_tasks"
EVAL_FILES = ("models/t5_1_1_toy_prompt.gin", "runs/prompt_eval.gin")
INFER_FILES = ("models/t5_1_1_toy_prompt.gin", "runs/prompt_infer.gin")
XPROMPT_FILES = ("models/t5_1_1_toy_prompt.gin", "methods/xprompt.gin", "runs/prompt_finetune.gin")
# The toy task's macros without the train-only ones (eval/infer gin files do not read them).
TASK_BINDINGS = tuple(b for b in TOY_BINDINGS if not b.startswith(("EVAL_PERIOD", "train.")))
NOT_WRITABLE = "/proc/self/prompt_tuning_run"  # refused even for root


class Prepared:
  """The files every case runs against, all under `root` (e.g. `p.run`, `p.pickled`)."""
  FILES = {
      "run": "run", "prompt": "run/prompts/step_2.npy", "backbone": "backbone",
      "adapter": "adapter", "jsonl": "in.jsonl", "latin1": "latin1.jsonl",
      "pickled": "pickled.npy", "random_bytes": "random.npy", "nan": "nan.npy",
      "narrow": "narrow.npy", "a_file": "a_file", "good_prompt": "good_prompt.npy",
      "torch_only": "torch_only",
  }

  def __init__(self, root: pathlib.Path):
    self.root = root

  def __getattr__(self, name: str) -> pathlib.Path:
    if name not in Prepared.FILES:
      raise AttributeError(name)
    return self.root / Prepared.FILES[name]


def run_cli(argv: Sequence, capsys, stdout: bool = False) -> Tuple[int, str]:
  """`prompt-tuning ARGV` in-process: (exit code, stderr; with `stdout`, stdout and stderr)."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return exit_info.value.code, out + err if stdout else err


def one_error_line(code, err: str, needles: Sequence[str] = (), absent: Sequence[str] = ()) -> str:
  """The single `error:` line of a failed command, checked to contain `needles`."""
  assert code not in (0, None), err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, err[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]
  for text in absent:
    assert text not in errors[0], errors[0]
  return errors[0]


def snapshot(root: pathlib.Path) -> dict:
  """Every folder and the sha256 of every file under `root`."""
  state = {}
  for folder, _, files in os.walk(root):
    state[os.path.relpath(folder, root) + "/"] = "folder"
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        state[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return state


def exit_code(argv) -> int:
  with pytest.raises(SystemExit) as exit_info:
    cli.main([str(a) for a in argv])
  return exit_info.value.code


def prepare(root: pathlib.Path) -> Prepared:
  """Writes the prepared files under `root`."""
  import gin
  p = Prepared(root)
  toy_train(p.run, 2)
  gin.clear_config()
  assert p.prompt.is_file()
  assert exit_code(["convert", "--from", "hf", "--input", HF_FIXTURE, "--output", p.backbone]) == 0
  np.save(p.good_prompt, np.ones((3, 32), np.float32))
  assert exit_code(["export", "--prompt", p.good_prompt, "--checkpoint", p.backbone,
                    "--output", p.adapter]) == 0
  p.jsonl.write_text('{"inputs": "Is it so?", "targets": "yes"}\n')
  p.latin1.write_bytes('{"inputs": "caf\u00e9", "targets": "yes"}\n'.encode("latin-1"))
  np.save(p.pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  p.random_bytes.write_bytes(np.random.default_rng(0).bytes(300))
  np.save(p.nan, np.full((3, 32), np.nan, np.float32))
  np.save(p.narrow, np.ones((3, 16), np.float32))
  p.a_file.write_text("not a folder\n")
  p.torch_only.mkdir()  # a Hugging Face folder with pickled PyTorch weights only
  (p.torch_only / "config.json").write_bytes((HF_FIXTURE / "config.json").read_bytes())
  (p.torch_only / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # a pickle
  return p


def copy_run(p: Prepared, target: pathlib.Path) -> pathlib.Path:
  """A copy of the prepared run to change."""
  shutil.copytree(p.run, target)
  return target


def is_one_line_refusal(argv, p: Prepared, capsys, needles: Sequence[str] = (),
                        absent: Sequence[str] = ()) -> str:
  """Runs `argv` against the prepared files: one `error:` line with `needles`, non-zero exit,
  and nothing under them changed or added. The line."""
  before = snapshot(p.root)
  code, err = run_cli(argv, capsys)
  line = one_error_line(code, err, needles, absent)
  assert snapshot(p.root) == before
  return line


# ---- argv builders --------------------------------------------------------------------


def gin_flags(files: Sequence[str], bindings: Sequence[str]):
  """`--gin_file=` and `--gin.` flags of gin files and `NAME = value` bindings."""
  return ([f"--gin_file={f}" for f in files] +
          [f"--gin.{b.replace(' = ', '=', 1)}" for b in bindings])


def _resolve(items, p):
  return [item(p) if callable(item) else item for item in items]


def train(*flags, model_dir=None, steps=4):
  """`prompt-tuning train` of the toy run (MODEL_DIR: the prepared run unless given)."""
  def argv(p):
    folder = model_dir(p) if callable(model_dir) else model_dir or p.run
    return ["train", *gin_flags(TOY_FILES, TOY_BINDINGS), f"--gin.MODEL_DIR='{folder}'",
            f"--gin.TRAIN_STEPS={steps}", *_resolve(flags, p)]
  return argv


def evaluate(*flags, command="eval", files=EVAL_FILES):
  return lambda p: [command, *gin_flags(files, TASK_BINDINGS), f"--gin.MODEL_DIR='{p.run}'",
                    f"--gin.PROMPT_FILE='{p.prompt}'", *_resolve(flags, p)]


def infer(*flags):
  return evaluate(*flags, command="infer", files=INFER_FILES)


def xprompt(*flags, files=XPROMPT_FILES):
  return lambda p: ["xprompt", *gin_flags(files, TOY_BINDINGS),
                    f"--gin.MODEL_DIR='{p.root / 'xp'}'", "--gin.TRAIN_STEPS=2", *flags]


def plan(*flags):
  return lambda p: ["plan", *gin_flags(TOY_FILES, TOY_BINDINGS), f"--gin.MODEL_DIR='{p.run}'",
                    *flags]


def score(*args, command="score"):
  def argv(p):
    named = {"--checkpoint": p.backbone, "--vocab": p.random_bytes, "--inputs_file": p.jsonl}
    extra = _resolve(args, p)
    for flag in list(named):
      if flag in extra:
        named.pop(flag)
    return [command, *[x for kv in named.items() for x in kv], *extra]
  return argv


def generate(*args):
  return score(*args, command="generate")


def export(*args):
  def argv(p):
    named = {"--prompt": p.good_prompt, "--checkpoint": p.backbone, "--output": p.root / "new"}
    extra = _resolve(args, p)
    for flag in list(named):
      if flag in extra:
        named.pop(flag)
    return ["export", *[x for kv in named.items() for x in kv], *extra]
  return argv


def convert(*args):
  return lambda p: ["convert", *_resolve(args, p)]


def tasks(*args):
  return lambda _: ["tasks", *args]


def path(name: str, *parts: str) -> Callable:
  """A path under the prepared files, resolved when the case runs."""
  return lambda p: str(pathlib.Path(getattr(p, name), *parts))


def gin_path(flag: str, name: str, *parts: str) -> Callable:
  """`--gin.FLAG='<prepared path>'`."""
  return lambda p: f"--gin.{flag}='{pathlib.Path(getattr(p, name), *parts)}'"
