"""Per-layer prompts end to end: train, export, and an eval that loads exactly the trained run."""
import flax
import numpy as np
import pytest

from prompt_tuning import configurables, gin_utils
from prompt_tuning.errors import UserError
from tests.train_helpers import TOY_BINDINGS, TOY_FILES, toy_train


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


@pytest.mark.slow
def test_per_layer_export_evaluates_exactly_the_trained_prompts(tmp_path):
  from prompt_tuning.train import eval_run
  run = tmp_path / "run"
  summary = toy_train(run, steps=2, files=(*TOY_FILES, "prompts/per_layer.gin"),
                      extra=["train.return_variables = True"])
  trained = _flat(summary["trainable"])
  assert {"prompt/prompt/prompt", "prompt/layers_1"} <= set(trained)
  export = run / "exports" / "step_2"
  files = ("models/t5_1_1_toy_prompt.gin", "runs/deltas_eval.gin", "prompts/per_layer.gin")
  bindings = [b for b in TOY_BINDINGS if not b.startswith(("EVAL_PERIOD", "train."))]
  configurables.parse(list(files), [*bindings, f"MODEL_DIR = '{run}'", f"DELTAS_FILE = '{export}'",
                                "evaluate.num_examples = 16"])
  ctx = eval_run.load_run("toy_parity", "prompt_tuning.data.toy_tasks",
                          {"inputs": 16, "targets": 8}, None, deltas_file=str(export))
  params = _flat(ctx.variables["params"])
  for path, value in trained.items():  # every layer's prompt, not only the input prompt
    np.testing.assert_array_equal(np.asarray(params[path]), np.asarray(value), err_msg=path)
  metrics = gin_utils.call(eval_run.evaluate)
  assert metrics and all(np.isfinite(v) for v in metrics.values())
  # Without DELTAS_FILE the layer prompts would be random: refused.
  configurables.parse(list(files), [*bindings, f"MODEL_DIR = '{run}'", "DELTAS_FILE = None"])
  with pytest.raises(UserError, match="randomly initialized parameters"):
    gin_utils.call(eval_run.evaluate)
