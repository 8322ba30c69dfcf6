"""Reference-style gin files, T5X's flags and macro names, and the gin commands' usage."""
import os
import subprocess
import sys

import gin
import pytest

from prompt_tuning import configurables, gin_utils
from prompt_tuning.errors import UserError
from prompt_tuning.scripts import find_module
from tests.train_helpers import cli_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_MACROS = ["MODEL_DIR = '/tmp/x'", "MIXTURE_OR_TASK_NAME = 'toy_parity'",
              "INITIAL_CHECKPOINT_PATH = None"]


def _cli(*args, cwd=None):
  """In-process unless a test needs another working folder (a fresh process there)."""
  if cwd is None:
    return cli_process(list(args))
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  return subprocess.run([sys.executable, "-m", "prompt_tuning", *args], capture_output=True,
                        text=True, timeout=300, cwd=cwd, env=env)


def test_every_config_folder_is_a_package():
  # gin resolves `prompt_tuning/configs/models/x.gin` through the package; a namespace
  # package (no __init__.py) has no file path and crashed gin with "expected str ...".
  configs = os.path.join(REPO, "configs")
  for folder, _, files in os.walk(configs):
    if any(f.endswith(".gin") for f in files) and "__pycache__" not in folder:
      assert "__init__.py" in files, folder


def test_find_module_prints_the_installed_folder(tmp_path):
  run = lambda name: subprocess.run([sys.executable, "-m", "prompt_tuning.scripts.find_module",
                                     name], capture_output=True, text=True, cwd=tmp_path)
  found = run("prompt_tuning")
  assert found.returncode == 0
  folder = found.stdout.strip()
  assert os.path.isfile(os.path.join(folder, "__init__.py"))
  assert find_module.module_folder("prompt_tuning.configs.models").endswith("models")
  missing = run("t5x")
  assert missing.returncode == 1 and missing.stdout == ""
  assert "prompt-tuning does not need it" in missing.stderr and "Traceback" not in missing.stderr
  assert "is not installed" in run("no_such_module_here").stderr


@pytest.mark.parametrize("search_paths", [[], ["/nonexistent/..", "/"]])
def test_reference_style_gin_paths_resolve(tmp_path, monkeypatch, search_paths):
  monkeypatch.chdir(tmp_path)  # not the repository root
  prompt_dir = os.path.join(find_module.module_folder("prompt_tuning"), "..")
  configurables.parse(["prompt_tuning/configs/models/t5_1_1_toy_prompt.gin",
                   "prompt_tuning/configs/runs/prompt_finetune.gin"], TOY_MACROS,
                  search_paths + [prompt_dir])
  assert gin.query_parameter("T5Config.emb_dim") == 32
  # ... also in a user's own gin file that includes them the reference's way.
  mine = tmp_path / "mine.gin"
  mine.write_text("include 'prompt_tuning/configs/models/t5_1_1_toy_prompt.gin'\n"
                  "PROMPT_LENGTH = 3\n")
  configurables.parse([str(mine), "runs/prompt_finetune.gin"], TOY_MACROS)
  assert gin.query_parameter("%PROMPT_LENGTH") == 3


def test_tfds_data_dir_flag_sets_the_tfds_folder(tmp_path):
  import seqio  # pylint: disable=g-import-not-at-top
  from seqio import utils  # pylint: disable=g-import-not-at-top
  saved = os.environ.get("TFDS_DATA_DIR")
  try:
    gin_utils.set_tfds_data_dir(str(tmp_path))
    assert utils._TFDS_DATA_DIR_OVERRIDE == str(tmp_path)  # pylint: disable=protected-access
    assert os.environ["TFDS_DATA_DIR"] == str(tmp_path)
  finally:
    seqio.set_tfds_data_dir_override(None)
    if saved is None:
      os.environ.pop("TFDS_DATA_DIR", None)
    else:
      os.environ["TFDS_DATA_DIR"] = saved


def test_t5x_checkpoint_path_sets_initial_checkpoint_path():
  files = ["models/t5_1_1_toy_prompt.gin", "runs/prompt_eval.gin"]
  common = ["MIXTURE_OR_TASK_NAME = 'toy_parity'", "PROMPT_FILE = '/p.npy'"]
  configurables.parse(files, common + ["CHECKPOINT_PATH = '/ckpt/checkpoint_5'"])
  assert gin.query_parameter("%INITIAL_CHECKPOINT_PATH") == "/ckpt/checkpoint_5"
  configurables.parse(files, common + ["CHECKPOINT_PATH = '/a'", "INITIAL_CHECKPOINT_PATH = '/a'"])
  with pytest.raises(UserError, match="CHECKPOINT_PATH .* and INITIAL_CHECKPOINT_PATH .* name "
                     "different checkpoints"):
    configurables.parse(files, common + ["CHECKPOINT_PATH = '/a'", "INITIAL_CHECKPOINT_PATH = '/b'"])
  with pytest.raises(UserError, match="INITIAL_CHECKPOINT_PATH"):
    configurables.parse(files, common)


def test_t5x_dataset_config_bindings_reach_the_eval():
  from prompt_tuning.train import eval_run  # pylint: disable=g-import-not-at-top
  configurables.parse(["models/t5_1_1_toy_prompt.gin", "runs/prompt_eval.gin"],
                  ["MIXTURE_OR_TASK_NAME = 'toy_parity'", "PROMPT_FILE = '/p.npy'",
                   "CHECKPOINT_PATH = None", "utils.DatasetConfig.split = 'test'",
                   "utils.DatasetConfig.batch_size = 128"])
  bindings = gin.get_bindings(eval_run.evaluate)
  assert (bindings["split"], bindings["batch_size"], bindings["use_cached_tasks"]) == (
      "test", 128, False)
  # A T5X field with no counterpart is refused by name, not silently dropped
  # (every field: tests/test_t5x_settings.py).
  with pytest.raises(UserError, match="pack=True is refused"):
    configurables.parse(["runs/prompt_eval.gin"], ["utils.DatasetConfig.pack = True"])
  with pytest.raises(UserError, match="MODEL_DIR.*EVAL_OUTPUT_DIR"):
    eval_run.output_dir(None, None, "EVAL_OUTPUT_DIR", "eval")
  with pytest.raises(UserError, match="set only one"):
    eval_run.output_dir("/m", "/e", "EVAL_OUTPUT_DIR", "eval")
  assert eval_run.output_dir(None, "/e", "EVAL_OUTPUT_DIR", "eval").root == "/e"


@pytest.mark.parametrize("command", ["train", "eval"])
def test_no_flags_print_usage_and_the_required_macros(command, tmp_path):
  proc = _cli(command, cwd=tmp_path)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith(("usage:", "error:"))]
  assert lines[0].startswith(f"usage: prompt-tuning {command} --gin_file=")
  assert len(lines) == 2 and "MODEL_DIR" in lines[1] and "MIXTURE_OR_TASK_NAME" in lines[1]


def test_train_help_names_gin_flags_and_required_macros():
  proc = _cli("train", "--help")
  assert proc.returncode == 0
  for needle in ("--gin_file", "--gin.KEY=VALUE", "--tfds_data_dir",
                 "required macros: MODEL_DIR, MIXTURE_OR_TASK_NAME, INITIAL_CHECKPOINT_PATH"):
    assert needle in proc.stdout, needle


def test_required_macro_lists_match_the_run_gin_files():
  from prompt_tuning.commands import evaluate, train  # pylint: disable=g-import-not-at-top
  configurables.register()
  for files, listed in ((["models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin"],
                         train.REQUIRED_MACROS),
                        (["models/t5_1_1_toy_prompt.gin", "runs/prompt_eval.gin"],
                         evaluate.REQUIRED_MACROS)):
    with pytest.raises(UserError) as error:
      configurables.parse(files, [])
    required = str(error.value).split(": ", 1)[1].split(";")[0].split(", ")
    assert {name.split(" ")[0] for name in listed} >= set(required), (required, listed)


def test_gin_files_without_a_run_file_name_the_missing_bindings(tmp_path):
  proc = _cli("train", "--gin_file=models/t5_1_1_toy_prompt.gin", cwd=tmp_path)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  error = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1 and "runs/prompt_finetune.gin" in error[0] and "model_dir" in error[0]


def test_every_bench_flag_has_help():
  import argparse  # pylint: disable=g-import-not-at-top
  from prompt_tuning.commands import bench  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser()
  bench.add_arguments(parser)
  for action in parser._actions:  # pylint: disable=protected-access
    assert action.help, action.dest
