"""Eval and infer evaluate exactly the prompt the user named, and refuse a random one."""

import gin
import numpy as np
import pytest

from prompt_tuning import configurables
from prompt_tuning.errors import UserError
from prompt_tuning.train import eval_run
from tests.train_helpers import TOY_EVAL_BINDINGS, cli_process, toy_train

BINDINGS = list(TOY_EVAL_BINDINGS)


def _eval_context(files, bindings):
  """The run context `prompt-tuning eval` builds for these gin files (its checks included)."""
  configurables.parse(files, BINDINGS + bindings)
  config = gin.get_bindings(eval_run.evaluate)
  return eval_run.load_run(config["mixture_or_task_name"], config["mixture_or_task_module"],
                           config["task_feature_lengths"], config["initial_checkpoint_path"],
                           config.get("allow_random_parameters", False))


def test_the_evaluated_prompt_is_the_exported_prompt(tmp_path):
  # The reference's command line: model gin file, runs/prompt_eval.gin, PROMPT_FILE only.
  toy_train(tmp_path / "run", steps=3)
  exported = tmp_path / "run" / "prompts" / "step_3.npy"
  ctx = _eval_context(["models/t5_1_1_toy_prompt.gin", "runs/prompt_eval.gin"],
                      [f"MODEL_DIR = '{tmp_path}/eval'", f"PROMPT_FILE = '{exported}'"])
  np.testing.assert_array_equal(ctx.exported_prompt(), np.load(exported))


def test_eval_without_a_prompt_file_is_refused(tmp_path):
  # The model file after the eval file puts the sampled-vocab initializer back.
  with pytest.raises(UserError, match="refusing to evaluate randomly initialized parameters "
                     r"\(prompt/prompt\).*PROMPT_FILE.*allow_random_parameters"):
    _eval_context(["runs/prompt_eval.gin", "models/t5_1_1_toy_prompt.gin"],
                  [f"MODEL_DIR = '{tmp_path}'", f"PROMPT_FILE = '{tmp_path}/unused.npy'"])


def test_a_random_prompt_is_evaluated_only_when_asked(tmp_path):
  ctx = _eval_context(["runs/prompt_eval.gin", "models/t5_1_1_toy_prompt.gin"],
                      [f"MODEL_DIR = '{tmp_path}'", f"PROMPT_FILE = '{tmp_path}/unused.npy'",
                       "evaluate.allow_random_parameters = True"])
  assert ctx.exported_prompt().shape == (4, 32)


def test_method_parameters_that_were_not_loaded_are_refused(tmp_path):
  # An exported Residual prompt already has the MLP folded in; adding the method
  # file again would pass it through a fresh, random MLP.
  np.save(tmp_path / "p.npy", np.zeros((4, 32), np.float32))
  with pytest.raises(UserError, match=r"prompt/residual/.*drop those method files"):
    _eval_context(["models/t5_1_1_toy_prompt.gin", "methods/residual.gin",
                   "runs/prompt_eval.gin"],
                  [f"MODEL_DIR = '{tmp_path}'", f"PROMPT_FILE = '{tmp_path}/p.npy'",
                   "RESIDUAL_BOTTLENECK = 4"])


def test_cli_refusal_is_one_line_and_writes_nothing(tmp_path):
  out_dir = tmp_path / "eval"
  proc = cli_process(
      ["eval", "--gin_file=runs/prompt_eval.gin",
       "--gin_file=models/t5_1_1_toy_prompt.gin", *[f"--gin.{b}" for b in BINDINGS],
       f"--gin.MODEL_DIR='{out_dir}'", f"--gin.PROMPT_FILE='{tmp_path}/x.npy'"])
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "refusing to evaluate randomly initialized" in errors[0]
  assert not out_dir.exists()
