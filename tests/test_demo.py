"""The demo pipeline end to end with tiny step counts (machinery, not the accuracy target)."""
import json
import os

import pytest

from prompt_tuning import configurables, gin_utils
from prompt_tuning.demo import tasks
from prompt_tuning.run_dir import DemoDir

TINY = (
    "demo_backbone.emb_dim = 16", "demo_backbone.num_heads = 2", "demo_backbone.head_dim = 8",
    "demo_backbone.mlp_dim = 32", "demo_backbone.num_layers = 1",
    "PRETRAIN_STEPS = 3", "TRAIN_STEPS = 2", "EVAL_PERIOD = 2", "BATCH_SIZE = 4",
    "run_demo.pretrain_batch_size = 4", "PROMPT_LENGTH = 3", "run_demo.residual_bottleneck = 4",
    "run_demo.xprompt_pieces = 2", "run_demo.methods = ['prompt_tuning', 'residual']",
)


def test_held_out_inputs_never_appear_in_any_training_split():
  train = {x for op in tasks.OPERATIONS for x, _ in tasks.examples(op, "train", False)}
  held_out = {x for op in tasks.OPERATIONS for x, _ in tasks.examples(op, "validation", False)}
  assert held_out and not train & held_out
  assert all(tasks.is_held_out(x) for x in held_out)


def test_bare_task_is_ambiguous_without_the_instruction():
  bare = tasks.examples("reverse", "validation", False)
  instructed = tasks.examples("reverse", "validation", True)
  assert [x for x, _ in bare] == [x[len("reverse:"):] for x, _ in instructed]
  # Same inputs, different answers per operation: only the prompt can choose.
  digits = "3141"
  assert len({op(digits) for op in tasks.OPERATIONS.values()}) == len(tasks.OPERATIONS)


@pytest.mark.slow
def test_demo_pipeline_writes_summary_with_baseline(tmp_path):
  from prompt_tuning.demo import experiment
  configurables.parse(["runs/demo.gin"], [*TINY, f"MODEL_DIR = '{tmp_path}'"])
  summary = gin_utils.call(experiment.run_demo)
  with open(DemoDir(tmp_path).summary) as f:
    written = json.load(f)
  assert written["task"] == "demo_bare_reverse"
  assert 0.0 <= written["baseline"]["held_out_exact_match"] <= 1.0
  assert 0.0 <= written["backbone"]["instructed_exact_match"] <= 1.0
  assert os.path.exists(os.path.join(tmp_path, "backbone", "config.json"))
  rows = {r["method"]: r for r in written["methods"]}
  assert set(rows) == {"prompt_tuning", "residual"}
  for row in rows.values():
    assert row["steps"] == 2
    assert 0.0 <= row["held_out_exact_match"] <= 1.0
    assert row["eval_history"] and row["train_history"]
    assert os.path.exists(os.path.join(row["model_dir"], "train_summary.json"))
  assert rows["prompt_tuning"]["trainable_parameters"] == 3 * 16
  assert rows["residual"]["trainable_parameters"] > rows["prompt_tuning"]["trainable_parameters"]
  assert os.path.getsize(written["learning_curves"]) > 0
  assert summary["methods"] == written["methods"]


def test_unknown_method_is_a_user_error(tmp_path):
  from prompt_tuning.demo import experiment
  from prompt_tuning.errors import UserError
  configurables.parse(["runs/demo.gin"], [*TINY, f"MODEL_DIR = '{tmp_path}'",
                                      "run_demo.methods = ['lora']"])
  with pytest.raises(UserError, match="lora"):
    gin_utils.call(experiment.run_demo)
