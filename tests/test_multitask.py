"""Multi-task prompts: per-example task prompts in mixed batches, isolation, data tokens, runs."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.multitask import MultiTaskPrompt
from prompt_tuning.prompts.prompt import Prompt, encoder_prompt, place_prompt
from prompt_tuning.run_dir import InferenceEvalDir
from tests.test_eval_logs import check_predictions, scalars
from tests.train_helpers import run_on_eight_devices

CONFIG = T5Config(vocab_size=40, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                  num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
MODES = {"add": {}, "concat": {"task_length": 2}, "concat_features": {"shared_features": 3},
         "project": {}}
TASKS = ("a", "b")
# Rows of tasks b, a, b, a: the first token is the task token (39 - t).
INPUTS = np.array([[5, 6, 1, 0, 0], [7, 8, 9, 1, 0], [4, 1, 0, 0, 0], [3, 3, 3, 3, 1]])
ROW_TASKS = np.array([1, 0, 1, 0])
DECODER = np.array([[0, 3, 4], [0, 5, 1], [0, 2, 2], [0, 7, 1]])
MARKED = np.concatenate([(39 - ROW_TASKS)[:, None], INPUTS], axis=1)


TABLE = jax.random.normal(jax.random.PRNGKey(5), (CONFIG.vocab_size, CONFIG.emb_dim))


def multitask_prompt(mode, placement="prefix", shared=None):
  shared = shared or Prompt(length=3, initializer=initializers.uniform(), placement=placement)
  return MultiTaskPrompt(shared=shared, tasks=TASKS, mode=mode, **MODES[mode])


def randomized(params, seed=1):
  """Every parameter random (an `add` prompt starts with zero task prompts)."""
  leaves, tree = jax.tree_util.tree_flatten(nn.meta.unbox(params))
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, l.shape)
                                             for k, l in zip(keys, leaves)])


def module_variables(module):
  params = module.init(jax.random.PRNGKey(0), MARKED, TABLE[MARKED], TABLE)["params"]
  return {"params": randomized(params)}


@pytest.mark.parametrize("mode,placement", [(m, "prefix") for m in MODES] + [("concat", "suffix")])
def test_each_row_gets_its_tasks_prompt_in_place_of_its_task_token(mode, placement):
  module = multitask_prompt(mode, placement)
  variables = module_variables(module)
  embedded, valid = module.apply(variables, MARKED, TABLE[MARKED], TABLE)
  per_task = module.apply(variables, TABLE, method="task_prompts")  # [T, P, E]
  assert per_task.shape == (len(TASKS), module.length, CONFIG.emb_dim)
  assert not np.allclose(per_task[0], per_task[1])
  for t in range(len(TASKS)):
    rows = ROW_TASKS == t
    want, want_valid = place_prompt(per_task[t], INPUTS[rows], TABLE[INPUTS[rows]],
                                    INPUTS[rows] > 0, placement)
    np.testing.assert_array_equal(embedded[rows], want)
    np.testing.assert_array_equal(valid[rows], want_valid)


def test_mixed_batch_equals_running_each_task_alone():
  model = T5(CONFIG, prompt=multitask_prompt("project"))
  variables = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), MARKED, DECODER))
  variables = {"params": {**variables["params"],
                          "prompt": randomized(variables["params"]["prompt"])}}
  mixed = jax.jit(model.apply)(variables, MARKED, DECODER)
  per_task = np.asarray(encoder_prompt(model, variables))
  alone = T5(CONFIG, prompt=Prompt(length=per_task.shape[1]))
  run_alone = jax.jit(alone.apply)
  for t in range(len(TASKS)):
    rows = ROW_TASKS == t
    params = {**variables["params"], "prompt": {"prompt": jnp.asarray(per_task[t])}}
    want = run_alone({"params": params}, INPUTS[rows], DECODER[rows])
    np.testing.assert_allclose(mixed[rows], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", list(MODES))
def test_gradients_reach_only_the_rows_tasks_and_the_shared_prompt(mode):
  module = multitask_prompt(mode)
  params = module_variables(module)["params"]
  only_a = ROW_TASKS == 0
  weights = jax.random.normal(jax.random.PRNGKey(2), (int(only_a.sum()), module.length + INPUTS.shape[1],
                                                       CONFIG.emb_dim))

  def loss(params):
    embedded, _ = module.apply({"params": params}, MARKED[only_a], TABLE[MARKED[only_a]], TABLE)
    return jnp.sum(weights * embedded)
  grads = jax.grad(loss)(params)
  assert np.abs(grads["shared"]["prompt"]).sum() > 0
  task_grads = {k: v for k, v in grads.items() if k != "shared"}
  assert task_grads
  for name, g in task_grads.items():
    assert np.abs(g[0]).sum() > 0, name
    np.testing.assert_array_equal(g[1], 0.0, err_msg=name)


def test_a_row_without_a_task_token_gets_a_nan_prompt_not_another_tasks():
  module = multitask_prompt("add")
  variables = module_variables(module)
  tokens = np.concatenate([[[5]], MARKED[:1, 1:]], axis=1)
  embedded, _ = module.apply(variables, tokens, TABLE[tokens], TABLE)
  assert np.isnan(embedded[0, :module.length]).all()
  np.testing.assert_array_equal(embedded[0, module.length:], TABLE[tokens[0, 1:]])


def test_settings_that_cannot_work_are_one_line_errors():
  tokens = MARKED[:1]
  for kw, match in [({"mode": "sum"}, "mode 'sum' is unknown"),
                    ({"mode": "concat_features"}, "shared_features"),
                    ({"mode": "add", "task_length": 2}, "only read by mode 'concat'"),
                    ({"mode": "add", "task_token_base": 80}, "task tokens 79..80")]:
    module = MultiTaskPrompt(shared=Prompt(length=2), tasks=TASKS, **kw)
    with pytest.raises(UserError, match=match):
      module.init(jax.random.PRNGKey(0), tokens, TABLE[tokens], TABLE)


def test_residual_reparameterizes_the_shared_prompt_and_xprompt_is_refused():
  from prompt_tuning.methods.residual.reparameterization import ResidualReparameterization
  make = lambda name: ResidualReparameterization(bottleneck=4, name=name)
  module = multitask_prompt("add", shared=Prompt(length=3, reparameterizations=(("residual", make),)))
  variables = module.init(jax.random.PRNGKey(0), MARKED, TABLE[MARKED], TABLE)
  assert "residual" in variables["params"]["shared"]
  assert np.isfinite(module.apply(variables, MARKED, TABLE[MARKED], TABLE)[0]).all()
  # The refusal reads the slot name (`prompt_reparameterizations.xprompt`).
  masked = multitask_prompt("add", shared=Prompt(length=3, reparameterizations=(("xprompt", make),)))
  with pytest.raises(UserError, match="XPrompt"):
    masked.init(jax.random.PRNGKey(0), MARKED, TABLE[MARKED], TABLE)


def test_data_path_starts_each_input_with_its_tasks_token():
  from prompt_tuning.data import toy_tasks  # noqa: F401  (registers the toy mixture)
  from prompt_tuning.data.task_tokens import prepend_token
  from prompt_tuning.train import data
  import tensorflow as tf
  np.testing.assert_array_equal(prepend_token(tf.constant([4, 5, 1, 0]), 9).numpy(), [9, 4, 5, 1])
  np.testing.assert_array_equal(prepend_token(tf.constant([4, 5, 1]), 9, 8).numpy(), [9, 4, 5, 1])
  tokens = {"toy_parity": 383, "toy_first_parity": 382}
  lengths = {"inputs": 8, "targets": 4}
  plain = next(data.batches("toy_mixture", lengths, "train", 64, seed=3))
  marked = next(data.batches("toy_mixture", lengths, "train", 64, seed=3, task_tokens=tokens))
  first = marked["encoder_input_tokens"][:, 0]
  assert set(first.tolist()) == {382, 383}  # both tasks, mixed in one batch
  # Same examples in the same order: the task token took the first position.
  np.testing.assert_array_equal(marked["encoder_input_tokens"][:, 1:],
                                plain["encoder_input_tokens"][:, :-1])
  np.testing.assert_array_equal(marked["decoder_target_tokens"], plain["decoder_target_tokens"])
  # Each row's token names the task its target came from (the two parities differ).
  even, odd = (np.frombuffer(w.encode(), np.uint8) + 3 for w in ("even", "odd"))
  digits = plain["encoder_input_tokens"] - 3 - ord("0")
  n_digits = (plain["encoder_input_tokens"] > 1).sum(axis=1)
  for i, token in enumerate(first):
    digit = digits[i, 0] if token == 382 else digits[i, n_digits[i] - 1]
    want = even if digit % 2 == 0 else odd
    np.testing.assert_array_equal(marked["decoder_target_tokens"][i, :len(want)], want)
  with pytest.raises(UserError, match="does not know"):
    next(data.batches("toy_mixture", lengths, "train", 8, seed=3, task_tokens={"toy_parity": 383}))


# One subprocess (8 fake devices) for every run check: 4 steps on one device, and on a 2x4
# mesh stopped after 2 steps and resumed; the resumed run evaluates at step 4.
_RUN_SCRIPT = r"""
from tests.train_helpers import toy_train, losses, TOY_FILES
files = (*TOY_FILES, "prompts/multitask.gin")
bindings = ["MIXTURE_OR_TASK_NAME = 'toy_mixture'", "CHECKPOINT_PERIOD = 2"]
one = toy_train({tmp!r} + "/one", steps=4, files=files,
                extra=bindings + ["make_mesh.mesh_shape = [1, 1]",
                                  "make_mesh.devices = @first_devices()"])
mesh = bindings + ["make_mesh.mesh_shape = [2, 4]", "EVAL_PERIOD = 4"]
toy_train({tmp!r} + "/mesh", steps=2, files=files, extra=mesh)
resumed = toy_train({tmp!r} + "/mesh", steps=4, files=files, extra=mesh)
print("RESULT" + json.dumps({{"one": losses(one), "resumed": losses(resumed),
                             "steps": [h["step"] for h in resumed["train_history"]],
                             "eval": resumed["eval_history"][-1]}}))
"""


@pytest.mark.slow
def test_mixture_run_on_a_mesh_resumes_reports_each_task_and_exports_per_task(tmp_path):
  """One test (one subprocess, run once under pytest-xdist): resume, per-task eval, exports."""
  from prompt_tuning import configurables, gin_utils
  from prompt_tuning.train import eval_run
  from tests.train_helpers import TOY_EVAL_BINDINGS
  result = run_on_eight_devices(_RUN_SCRIPT.format(tmp=str(tmp_path)))
  # A 2x4 mesh run stopped at step 2 and resumed computes the one-device losses.
  assert result["steps"] == [1, 2, 3, 4]
  np.testing.assert_allclose(result["resumed"], result["one"], rtol=2e-5)
  # Evaluation reports each task of the mixture.
  run, evaluated = tmp_path / "mesh", result["eval"]
  assert evaluated["step"] == 4
  assert {"toy_parity/accuracy", "toy_first_parity/accuracy"} <= set(evaluated)
  # One [P, E] prompt per task.
  prompts = {t: np.load(run / "prompts" / "step_4" / f"{t}.npy")
             for t in ("toy_parity", "toy_first_parity")}
  assert all(p.shape == (4, 32) for p in prompts.values())
  assert not np.allclose(prompts["toy_parity"], prompts["toy_first_parity"])
  # The single-task eval of one exported prompt reproduces that task's mixture metric ...
  configurables.parse(["models/t5_1_1_toy_prompt.gin", "runs/prompt_eval.gin"],
                  [*TOY_EVAL_BINDINGS, "MIXTURE_OR_TASK_NAME = 'toy_first_parity'",
                   f"PROMPT_FILE = '{run}/prompts/step_4/toy_first_parity.npy'",
                   f"EVAL_OUTPUT_DIR = '{tmp_path / 'single'}'"])
  metrics = gin_utils.call(eval_run.evaluate)
  assert metrics["toy_first_parity/accuracy"] == evaluated["toy_first_parity/accuracy"]
  # ... and the run's export (DELTAS_FILE) evaluates the whole mixture as training did.
  configurables.parse(["models/t5_1_1_toy_prompt.gin", "runs/deltas_eval.gin",
                   "prompts/multitask.gin"],
                  [*TOY_EVAL_BINDINGS, "MIXTURE_OR_TASK_NAME = 'toy_mixture'",
                   f"DELTAS_FILE = '{run}/exports/step_4'", f"MODEL_DIR = '{tmp_path / 'all'}'"])
  metrics = gin_utils.call(eval_run.evaluate)
  for task in ("toy_parity", "toy_first_parity"):
    assert metrics[f"{task}/accuracy"] == evaluated[f"{task}/accuracy"]
  # T5X's inference_eval files of each task: the run's at each evaluation (step 2, where the
  # first launch stopped, and 4), then eval's under its results folder.
  for task in ("toy_parity", "toy_first_parity"):
    logs = InferenceEvalDir(str(run / "inference_eval"))
    for step in (2, 4):
      check_predictions(logs.predictions(task, step), 32)
    lines = [json.loads(l) for l in open(logs.metrics(task), encoding="utf-8")]
    assert [line["step"] for line in lines] == [2, 4]
    assert lines[-1]["accuracy"] == evaluated[f"{task}/accuracy"]
    assert scalars(logs.tensorboard(task), "eval/accuracy") == [
        (2, lines[0]["accuracy"]), (4, lines[1]["accuracy"])]
    check_predictions(InferenceEvalDir(str(tmp_path / "all" / "eval" / "inference_eval"))
                      .predictions(task, 4), 32)
  # (A multi-task prompt's per-task file names no step: the initial checkpoint's, 0.)
  check_predictions(InferenceEvalDir(str(tmp_path / "single" / "inference_eval"))
                    .predictions("toy_first_parity", 0), 32)
  # Train scalars under T5X's tags in MODEL_DIR/train/, across both launches: the per-token
  # loss of the history, and T5X's `loss`, its sum over the step's target tokens.
  means = scalars(run / "train", "loss_per_nonpadding_target_token")
  assert [step for step, _ in means] == [1, 2, 3, 4]
  np.testing.assert_allclose([v for _, v in means], result["resumed"], rtol=1e-6)
  sums = [v for _, v in scalars(run / "train", "loss")]
  tokens = [v for _, v in scalars(run / "train", "target_tokens")]
  np.testing.assert_allclose(sums, np.multiply(result["resumed"], tokens), rtol=1e-6)
  assert [step for step, _ in scalars(run / "train", "timing/steps_per_second")] == [1, 2, 3, 4]


def test_the_references_sentinel_form_reads_tasks_from_extra_ids():
  from prompt_tuning.data.task_tokens import task_tokens_of
  # <extra_id_t> = base - t: with base 30, the rows start with tokens 29 (task b) or 30 (task a).
  module = MultiTaskPrompt(shared=Prompt(length=3), tasks=TASKS, task_token_base=30)
  sentinel = np.concatenate([(30 - ROW_TASKS)[:, None], INPUTS], axis=1)
  variables = {"params": randomized(
      module.init(jax.random.PRNGKey(0), sentinel, TABLE[sentinel], TABLE)["params"])}
  embedded, _ = module.apply(variables, sentinel, TABLE[sentinel], TABLE)
  per_task = module.apply(variables, TABLE, method="task_prompts")
  np.testing.assert_array_equal(embedded[:, :3], per_task[ROW_TASKS])
  # With the tokens already in the data, the data path adds none; without a multi-task
  # prompt the setting is an error, not ignored.
  model = T5(CONFIG, prompt=module)
  assert task_tokens_of(model) == {"a": 30, "b": 29}
  assert task_tokens_of(model, tokens_in_data=True) is None
  with pytest.raises(UserError, match="not a MultiTaskPrompt"):
    task_tokens_of(T5(CONFIG, prompt=Prompt(length=3)), tokens_in_data=True)
