"""Gin plumbing: T5X-style flags and one-line configuration errors."""
import pytest

from prompt_tuning import configurables
from prompt_tuning.cli import split_gin_flags
from prompt_tuning.errors import UserError


def test_gin_flags_are_split_from_the_rest():
  rest, bindings = split_gin_flags(["--gin_file=a.gin", "--gin.MODEL_DIR='/tmp/x'",
                                    "--gin.TRAIN_STEPS", "5", "--other"])
  assert rest == ["--gin_file=a.gin", "--other"]
  assert bindings == ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=5"]


def test_required_macros_left_unset_are_named():
  with pytest.raises(UserError, match="INITIAL_CHECKPOINT_PATH, MIXTURE_OR_TASK_NAME, MODEL_DIR"):
    configurables.parse(["models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin"], [])
  configurables.parse(["models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin"],
                  ["MODEL_DIR = '/tmp/x'", "MIXTURE_OR_TASK_NAME = 'toy_parity'",
                   "INITIAL_CHECKPOINT_PATH = None"])


def test_bad_binding_is_one_line_naming_it():
  with pytest.raises(UserError) as error:
    configurables.parse(["models/t5_1_1_toy_prompt.gin"], ["Prompt.lenght = 3"])
  assert "lenght" in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(UserError, match="nope.gin not found"):
    configurables.parse(["nope.gin"], [])
