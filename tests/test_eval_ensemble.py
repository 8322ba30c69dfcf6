"""`prompt-tuning eval` of saved prompts, alone and as an ensemble."""
import json

import numpy as np

from prompt_tuning import configurables, gin_utils
from prompt_tuning.prompts.ensemble import combine_predictions, combine_scores
from prompt_tuning.train import eval_run
from tests.train_helpers import TOY_EVAL_BINDINGS

BINDINGS = list(TOY_EVAL_BINDINGS)


def test_majority_vote_and_mean_score():
  rows = np.array([[5, 1], [6, 1], [5, 1], [7, 1], [7, 1], [8, 1]])
  assert combine_predictions(rows, 3) == [[5, 1], [7, 1]]
  np.testing.assert_allclose(combine_scores(np.array([1.0, 2.0, 3.0, -1.0, -2.0, -3.0]), 3), [2, -2])


def test_ensemble_of_identical_prompts_equals_the_single_prompt(tmp_path):
  prompt = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
  np.save(tmp_path / "p.npy", prompt)
  configurables.parse(["models/t5_1_1_toy_prompt.gin", "prompts/from_file.gin", "runs/prompt_eval.gin"],
                  BINDINGS + [f"MODEL_DIR = '{tmp_path}/single'", f"PROMPT_FILE = '{tmp_path}/p.npy'"])
  single = gin_utils.call(eval_run.evaluate)
  configurables.parse(["models/t5_1_1_toy_prompt.gin", "runs/prompt_eval.gin", "prompts/ensemble.gin"],
                  BINDINGS + [f"MODEL_DIR = '{tmp_path}/ens'",
                              f"PROMPT_FILES = ['{tmp_path}/p.npy', '{tmp_path}/p.npy']"])
  ensembled = gin_utils.call(eval_run.evaluate)
  assert set(single) == {"toy_parity/accuracy"}
  assert ensembled == single
  written = json.loads((tmp_path / "ens" / "eval" / "metrics_validation.json").read_text())
  assert written == ensembled
