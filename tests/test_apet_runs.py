"""APET and the PET baselines as runs: recorded selections, resume, meshes, exports, eval."""
import os

import flax
import numpy as np
import pytest

from prompt_tuning import configurables, gin_utils
from prompt_tuning.errors import UserError
from tests.train_helpers import TOY_BINDINGS, losses, run_on_eight_devices, toy_train

BASE = ("models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin")
# A budget that takes all three operations on the toy model (partial ADD included).
METHODS = {
    "lora": (("methods/lora.gin",), ["adamw.learning_rate = 1e-2"]),
    "apet": (("methods/apet.gin",), ["APET_BUDGET = 3001", "APET_SEED = 1",
                                     "adamw.learning_rate = 1e-2"]),
}


def _method(name):
  files, bindings = METHODS[name]
  return BASE + files, ["build_model.prompt = None", *bindings]


def _train(model_dir, method, steps, extra=()):
  files, bindings = _method(method)
  return toy_train(model_dir, steps=steps, files=files, extra=[*bindings, *extra])


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


# ---- resume, export, eval ----

def _eval_bindings(run, method, deltas):
  files, bindings = _method(method)
  files = ("models/t5_1_1_toy_prompt.gin", "runs/deltas_eval.gin") + files[2:]
  bindings = [*TOY_BINDINGS, *bindings, f"MODEL_DIR = '{run}'", f"DELTAS_FILE = '{deltas}'",
              "evaluate.num_examples = 16"]  # BATCH_SIZE = 8 comes from TOY_BINDINGS
  return files, [b for b in bindings if not b.startswith(("EVAL_PERIOD", "train."))]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "apet"])
def test_kill_and_resume_then_export_and_eval_round_trip(tmp_path, method):
  from prompt_tuning.train import eval_run, exports
  straight = _train(tmp_path / "straight", method, 4, ["train.return_variables = True"])
  run = tmp_path / "resumed"
  first = losses(_train(run, method, 4, ["train.stop_after_steps = 2", "CHECKPOINT_PERIOD = 2"]))
  second = losses(_train(run, method, 4, ["CHECKPOINT_PERIOD = 2"]))
  assert len(first) == 2 and second[:2] == first
  np.testing.assert_allclose(second, losses(straight), rtol=1e-5)
  assert sorted(os.listdir(run / "exports")) == ["step_2", "step_4"]

  # The export holds exactly the trained parameters, and eval loads exactly them.
  trained = _flat(straight["trainable"])
  export = tmp_path / "straight" / "exports" / "step_4"
  tensors, description = exports.read_export(str(export))
  assert {k.partition("/")[2] for k in tensors} == set(trained)
  assert description["step"] == 4 and description["methods"] == (
      ["lora"] if method == "lora" else ["adapter", "add", "prefix"])
  assert description["model_config"]["emb_dim"] == 32
  files, bindings = _eval_bindings(tmp_path / "straight", method, export)
  if method == "apet":  # eval rebuilds the positions from the recorded selection alone
    bindings += ["APET_BUDGET = None", "APET_SEED = 99",
                 f"APET_SELECTION_FILE = '{export}/apet_selection.json'"]
  configurables.parse(list(files), bindings)
  ctx = eval_run.load_run("toy_parity", "prompt_tuning.data.toy_tasks",
                          {"inputs": 16, "targets": 8}, None, deltas_file=str(export))
  params = _flat(ctx.variables["params"])
  for path, value in trained.items():
    np.testing.assert_array_equal(np.asarray(params[path]), np.asarray(value), err_msg=path)
  if method == "lora":
    metrics = gin_utils.call(eval_run.evaluate)
    assert metrics and all(k.startswith("toy_parity/") for k in metrics)
    assert (tmp_path / "straight" / "eval" / "metrics_validation.json").exists()
    _check_eval_refusals(tmp_path, files, bindings)
  else:
    _check_recorded_selection(run)


def _check_recorded_selection(run):
  from prompt_tuning.methods.apet.selection import Selection
  recorded = (run / "apet_selection.json").read_text()
  selection = Selection.from_json(recorded)
  assert (selection.budget, selection.seed) == (3001, 1)
  assert 0 not in selection.counts_by_operation().values()
  assert (run / "exports" / "step_4" / "apet_selection.json").read_text() == recorded
  # Another seed, even with the config check overridden: the positions would differ.
  with pytest.raises(UserError) as e:
    _train(run, "apet", 4, ["APET_SEED = 2", "train.allow_config_change = True"])
  message = str(e.value).splitlines()[0]
  assert f"{run}/apet_selection.json differs from what this config builds: " in message
  assert "APET_SELECTION_FILE" in message
  # The recorded selection (no budget needed) is accepted.
  summary = _train(run, "apet", 4, ["APET_BUDGET = None", "APET_SEED = 2",
                                    "train.allow_config_change = True",
                                    f"APET_SELECTION_FILE = '{run}/apet_selection.json'"])
  assert summary["final_step"] == 4 and summary["trainable_parameters"] == 3001


def _check_eval_refusals(tmp_path, files, bindings):
  from prompt_tuning.train import eval_run
  # Without DELTAS_FILE the LoRA pairs would be random: refused.
  without = [b for b in bindings if not b.startswith("DELTAS_FILE")]
  configurables.parse(list(files), [*without, "DELTAS_FILE = None"])
  with pytest.raises(UserError, match="refusing to evaluate randomly initialized parameters"):
    gin_utils.call(eval_run.evaluate)
  # Another rank: the plan differs from the export's.
  configurables.parse(list(files), [*bindings, "LORA_RANK = 4"])
  with pytest.raises(UserError, match="other deltas"):
    gin_utils.call(eval_run.evaluate)
  configurables.parse(list(files), [*bindings, f"DELTAS_FILE = '{tmp_path}/nowhere'"])
  with pytest.raises(UserError, match="nowhere does not exist"):
    gin_utils.call(eval_run.evaluate)


# ---- 8 fake devices ----

_MESH_SCRIPT = r"""
from tests.test_apet_runs import _train
from tests.train_helpers import losses
out = {{}}
for method in ("lora", "apet"):
  for shape in ([1, 1], [2, 4]):
    s = _train({tmp!r} + "/%s_%d_%d" % (method, *shape), method, 2,
               ["make_mesh.mesh_shape = %s" % shape]
               + (["make_mesh.devices = @first_devices()"] if shape == [1, 1] else []))
    out["%s %dx%d" % (method, *shape)] = losses(s)
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_eight_device_mesh_matches_one_device_for_lora_and_apet(tmp_path):
  result = run_on_eight_devices(_MESH_SCRIPT.format(tmp=str(tmp_path)))
  for method in ("lora", "apet"):
    assert len(result[f"{method} 1x1"]) == 2
    np.testing.assert_allclose(result[f"{method} 2x4"], result[f"{method} 1x1"], rtol=2e-5)


