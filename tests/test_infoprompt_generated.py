"""InfoPrompt's input-generated prompt (§4.2): the module, training, export and eval."""
import os

import flax
import numpy as np
import pytest

from prompt_tuning import configurables, gin_utils
from prompt_tuning.errors import UserError
from prompt_tuning.models.t5 import T5
from prompt_tuning.train.run_setup import build_run
from tests.train_helpers import TOY_BINDINGS, TOY_FILES, toy_train

GEN_FILES = (*TOY_FILES, "methods/infoprompt.gin", "prompts/generated.gin")
GEN = ("INFOPROMPT_NEGATIVES = 8", "GENERATED_PROMPT_RANK = 4", "CLASS_LABELS = ['even', 'odd']")
TOKENS = np.array([[5, 6, 7, 8, 1, 0], [9, 1, 0, 0, 0, 0]], np.int32)


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def _context(tmp_path, extra=()):
  configurables.parse(list(GEN_FILES), [*TOY_BINDINGS, *GEN, f"MODEL_DIR = '{tmp_path}'", *extra])
  return build_run(seed=0)


def _mean(values, valid):
  w = valid[..., None].astype(np.float64)
  return (values * w).sum(1) / w.sum(1)


def _generated(params, pooled):
  """`p_i = W_up_i · W_down_i · P'` in float64, from the raw parameters."""
  down = np.asarray(params["prompt"]["generator"]["down"], np.float64)  # [P, E, r]
  up = np.asarray(params["prompt"]["generator"]["up"], np.float64)  # [P, r, E]
  return np.einsum("be,per,prf->bpf", pooled, down, up)


@pytest.mark.parametrize("source", ["encoder", "embeddings"])
def test_each_example_gets_the_prompt_generated_from_its_own_input(tmp_path, source):
  ctx = _context(tmp_path, [f"generated_prompt.source = '{source}'"])
  params = ctx.variables["params"]
  x, valid = ctx.model.apply(ctx.variables, TOKENS, method=T5.embed_encoder_inputs)
  p = ctx.prompt_length
  assert x.shape == (2, p + TOKENS.shape[1], 32) and bool(np.all(valid[:, :p]))

  def bare(module, tokens):
    embedded = module.token_embedder(tokens)
    return embedded, module.encoder(embedded, tokens > 0, deterministic=True)
  embedded, encoded = (np.asarray(a, np.float64)
                       for a in ctx.model.apply(ctx.variables, TOKENS, method=bare))
  phi = encoded if source == "encoder" else embedded
  expected = _generated(params, _mean(phi, TOKENS > 0))
  np.testing.assert_allclose(np.asarray(x[:, :p]), expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(x[:, p:]), embedded.astype(np.float32))
  # Per example: the two inputs get different prompts, and the prompt is what the
  # model features (InfoPrompt's queries) see.
  assert not np.allclose(expected[0], expected[1])
  features = ctx.model.apply(ctx.variables, TOKENS, method=T5.input_features)
  np.testing.assert_allclose(np.asarray(features["prompt"]), np.asarray(x[:, :p]), atol=1e-6)


@pytest.mark.slow
def test_train_exports_the_generator_and_eval_loads_exactly_it(tmp_path):
  from prompt_tuning.train import eval_run
  run = tmp_path / "run"
  summary = toy_train(run, steps=3, files=GEN_FILES,
                      extra=[*GEN, "train.return_variables = True"])
  trained = _flat(summary["trainable"])
  assert {"prompt/generator/down", "prompt/generator/up"} <= set(trained)
  assert {k.split("/")[0] for k in trained} == {"prompt", "info"}
  last = summary["train_history"][-1]
  assert np.isfinite(last["mi_head"]) and np.isfinite(last["mi_representation"])
  # No fixed [P, E] prompt exists: nothing under prompts/, the generator is in exports/.
  assert not (run / "prompts").exists() or not os.listdir(run / "prompts")
  export = run / "exports" / "step_3"
  assert (export / "export.json").exists()

  files = ("models/t5_1_1_toy_prompt.gin", "runs/deltas_eval.gin", "methods/infoprompt.gin",
           "prompts/generated.gin")
  bindings = [b for b in TOY_BINDINGS if not b.startswith(("EVAL_PERIOD", "train."))]
  configurables.parse(list(files), [*bindings, *GEN, f"MODEL_DIR = '{run}'",
                                f"DELTAS_FILE = '{export}'", "evaluate.num_examples = 16"])
  ctx = eval_run.load_run("toy_parity", "prompt_tuning.data.toy_tasks",
                          {"inputs": 16, "targets": 8}, None, deltas_file=str(export))
  params = _flat(ctx.variables["params"])
  for path, value in trained.items():
    np.testing.assert_array_equal(np.asarray(params[path]), np.asarray(value), err_msg=path)
  metrics = gin_utils.call(eval_run.evaluate)
  assert metrics and all(k.startswith("toy_parity/") for k in metrics)
  assert eval_run.evaluated_step(ctx.model, None, str(export)) == 3  # the export's step
  # Without DELTAS_FILE the generator would be random: refused.
  configurables.parse(list(files), [*bindings, *GEN, f"MODEL_DIR = '{run}'", "DELTAS_FILE = None"])
  with pytest.raises(UserError, match="randomly initialized parameters"):
    gin_utils.call(eval_run.evaluate)


@pytest.mark.parametrize("extra_file, extra_bindings, binding", [
    ("methods/residual.gin", [], "Prompt.reparameterizations"),
    ("prompts/from_class_labels.gin", ["CLASS_LABELS = ['odd', 'even']"], "Prompt.initializer"),
])
def test_options_of_a_learned_prompt_are_refused(tmp_path, extra_file, extra_bindings, binding):
  from prompt_tuning.train.initialize import build_model
  files = (*TOY_FILES, extra_file, "methods/infoprompt.gin", "prompts/generated.gin")
  configurables.parse(list(files), [*TOY_BINDINGS, *GEN, f"MODEL_DIR = '{tmp_path}'",
                                *extra_bindings])
  with pytest.raises(UserError) as e:
    gin_utils.call(build_model)
  message = str(e.value).splitlines()[0]  # gin appends where the call came from
  assert message.startswith(f"{binding} is bound")
  assert "prompts/generated.gin" in message


def _step_flops(tmp_path, files, extra):
  """XLA's FLOP count of the compiled train step of the toy run configured by `files`."""
  import jax
  from prompt_tuning.commands.bench import _flops, random_batch
  from prompt_tuning.train import optim
  from prompt_tuning.train.run_setup import compile_train_step
  from prompt_tuning.train.step import LossConfig
  configurables.parse(list(files), [*TOY_BINDINGS, f"MODEL_DIR = '{tmp_path}'", *extra])
  ctx = build_run(seed=0)
  split = ctx.split(("prompt/.*", "info/.*"))
  step = compile_train_step(ctx, split, optim.adafactor(), loss_config=LossConfig())
  batch = random_batch(np.random.default_rng(0), 8, 16, 8, ctx.model.config.vocab_size)
  batch = ctx.partitioner.shard_batch({**batch, "example_index": np.arange(8, dtype=np.int32)})
  with ctx.partitioner.context():
    compiled = step.step.lower(split.trainable, step.opt_state, split.frozen, batch,
                               jax.random.PRNGKey(0)).compile()
  return _flops(compiled)


@pytest.mark.slow
def test_the_bare_input_is_encoded_once_per_step(tmp_path):
  """The generator's Φ(X), InfoPrompt's bare features and its prompt-free Z′ each run the
  encoder on the bare input; XLA merges the identical passes, so InfoPrompt adds less to a
  generated-prompt step than to a fixed-prompt one (where Z′ needs its own bare pass)."""
  info = ["INFOPROMPT_NEGATIVES = 8", "CLASS_LABELS = ['even', 'odd']"]
  info_files = (*TOY_FILES, "methods/infoprompt.gin")
  fixed = _step_flops(tmp_path, TOY_FILES, [])
  fixed_info = _step_flops(tmp_path, info_files, info)
  generated = _step_flops(tmp_path, (*GEN_FILES,), [*GEN, "INFOPROMPT_BETA = 0.0",
                                                    "INFOPROMPT_GAMMA = 0.0"])
  generated_info = _step_flops(tmp_path, GEN_FILES, list(GEN))
  assert generated_info - generated < 0.5 * (fixed_info - fixed)
