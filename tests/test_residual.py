"""Residual Prompt Tuning: the reparameterization, its gradients, folding and gin file."""
import functools
from pathlib import Path

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.prompt import Prompt, encoder_prompt
from prompt_tuning.methods.residual import ResidualReparameterization, mlp_parameter_count

CONFIG = T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=4, mlp_dim=16,
                  num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=4,
                  relative_attention_max_distance=8)
LENGTH = 4
REPO = Path(__file__).resolve().parents[1]


def _batch():
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, CONFIG.vocab_size, (2, 6)).astype(np.int32)
  inputs[1, 4:] = 0  # padding
  targets = rng.integers(2, CONFIG.vocab_size, (2, 3)).astype(np.int32)
  decoder_inputs = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
  return {"inputs": jnp.asarray(inputs), "decoder_inputs": jnp.asarray(decoder_inputs),
          "targets": jnp.asarray(targets)}


def _model(**residual_kwargs):
  residual = functools.partial(ResidualReparameterization, **{"bottleneck": 8, **residual_kwargs})
  return T5(CONFIG, prompt=Prompt(length=LENGTH, reparameterizations=(("residual", residual),)))


def fold(model, variables):
  return np.asarray(encoder_prompt(model, variables))


def _init(model, seed=0):
  batch = _batch()
  return nn.meta.unbox(model.init(jax.random.PRNGKey(seed), batch["inputs"],
                                  batch["decoder_inputs"]))


def _loss(model, variables, batch):
  logits = model.apply(variables, batch["inputs"], batch["decoder_inputs"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()


def _mlp(variables):
  return variables["params"]["prompt"]["residual"]


@pytest.mark.slow
@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("separate_mlps", [False, True])
def test_zero_up_projection_gives_the_raw_prompt(layer_norm, separate_mlps):
  model = _model(layer_norm=layer_norm, separate_mlps=separate_mlps)
  variables = _init(model)
  raw = np.asarray(variables["params"]["prompt"]["prompt"])
  # With the default (random) W_up the reparameterization changes the prompt ...
  assert not np.allclose(fold(model, variables), raw, atol=1e-4)
  # ... and with W_up = 0 and b_up = 0 (the LayerNorm bias is zero at init) it is the identity.
  up = _mlp(variables)["up"]
  up["kernel"] = jnp.zeros_like(up["kernel"])
  up["bias"] = jnp.zeros_like(up["bias"])
  np.testing.assert_array_equal(fold(model, variables), raw)


def test_without_residual_the_mlp_output_alone_is_used():
  model = _model(residual=False, layer_norm=False)
  variables = _init(model)
  mlp = _mlp(variables)
  raw = np.asarray(variables["params"]["prompt"]["prompt"])
  hidden = np.maximum(raw @ np.asarray(mlp["down"]["kernel"]) + np.asarray(mlp["down"]["bias"]), 0)
  expected = hidden @ np.asarray(mlp["up"]["kernel"]) + np.asarray(mlp["up"]["bias"])
  # f32 matmuls over 16 and 8 terms of O(1): reassociation error ~1e-6 absolute.
  np.testing.assert_allclose(fold(model, variables), expected, rtol=1e-5, atol=1e-5)
  with_residual = _model(residual=True, layer_norm=False)
  np.testing.assert_allclose(fold(with_residual, variables), raw + expected, rtol=1e-5, atol=1e-5)


def test_layer_norm_normalises_the_mlp_branch():
  model = _model(layer_norm=True)
  variables = _init(model)
  mlp = _mlp(variables)
  raw = np.asarray(variables["params"]["prompt"]["prompt"], np.float64)
  hidden = np.maximum(raw @ np.asarray(mlp["down"]["kernel"]) + np.asarray(mlp["down"]["bias"]), 0)
  pre = hidden @ np.asarray(mlp["up"]["kernel"]) + np.asarray(mlp["up"]["bias"])
  centred = pre - pre.mean(axis=-1, keepdims=True)
  normed = centred / np.sqrt(np.mean(centred ** 2, axis=-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(fold(model, variables), raw + normed, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("separate_mlps", [False, True])
def test_gradients_reach_the_prompt_and_every_mlp_parameter(separate_mlps):
  model = _model(separate_mlps=separate_mlps)
  variables = _init(model)
  batch = _batch()

  def loss(prompt_params):
    params = dict(variables["params"], prompt=prompt_params)
    return _loss(model, {"params": params}, batch)

  grads = traverse_util.flatten_dict(jax.grad(loss)(variables["params"]["prompt"]), sep="/")
  expected = {"prompt", "residual/down/kernel", "residual/down/bias",
              "residual/up/kernel", "residual/up/bias",
              "residual/layer_norm/scale", "residual/layer_norm/bias"}
  assert set(grads) == expected
  for name, grad in grads.items():
    assert np.all(np.isfinite(grad)), name
    assert np.abs(np.asarray(grad)).sum() > 0, f"no gradient reaches {name}"


def test_folded_export_evaluates_identically_to_the_training_forward(tmp_path):
  model = _model(separate_mlps=True)
  variables = _init(model)
  batch = _batch()
  # Move away from the initial point, so that the MLP is not at its init.
  optimizer = optax.adam(0.05)
  trainable = variables["params"]["prompt"]
  state = optimizer.init(trainable)

  def loss(prompt_params):
    return _loss(model, {"params": dict(variables["params"], prompt=prompt_params)}, batch)

  for _ in range(3):
    updates, state = optimizer.update(jax.grad(loss)(trainable), state, trainable)
    trainable = optax.apply_updates(trainable, updates)
  trained = {"params": dict(variables["params"], prompt=trainable)}
  training_logits = model.apply(trained, batch["inputs"], batch["decoder_inputs"])

  path = tmp_path / "prompt.npy"
  np.save(path, fold(model, trained))
  plain = T5(CONFIG, prompt=Prompt(length=LENGTH, initializer=initializers.from_file(str(path))))
  plain_variables = _init(plain)
  assert set(plain_variables["params"]["prompt"]) == {"prompt"}
  backbone = {k: v for k, v in trained["params"].items() if k != "prompt"}
  plain_variables = {"params": dict(backbone, prompt=plain_variables["params"]["prompt"])}
  plain_logits = plain.apply(plain_variables, batch["inputs"], batch["decoder_inputs"])
  np.testing.assert_allclose(plain_logits, training_logits, rtol=1e-5, atol=1e-5)
  # Two programs (folded vs reparameterized prompt): f32 reassociation through the model.
  np.testing.assert_allclose(_loss(plain, plain_variables, batch), loss(trainable), rtol=1e-5)


def test_shared_and_separate_parameter_counts():
  counts = {}
  for separate in (False, True):
    mlp = _mlp(_init(_model(separate_mlps=separate)))
    counts[separate] = sum(np.size(x) for x in jax.tree_util.tree_leaves(mlp))
    e, m = CONFIG.emb_dim, 8
    assert counts[separate] == mlp_parameter_count(e, m, LENGTH, separate_mlps=separate)
  assert counts[False] == 2 * 16 * 8 + 8 + 16 + 2 * 16
  assert counts[True] == LENGTH * counts[False]
  no_norm = _mlp(_init(_model(layer_norm=False)))
  assert sum(np.size(x) for x in jax.tree_util.tree_leaves(no_norm)) == counts[False] - 2 * 16


def test_separate_mlps_act_on_their_own_token_only():
  model = _model(separate_mlps=True)
  variables = _init(model)
  before = fold(model, variables)
  down = _mlp(variables)["down"]
  assert down["kernel"].shape == (LENGTH, CONFIG.emb_dim, 8)
  # Per-token kernels are drawn independently, not copies of one matrix.
  assert not np.allclose(down["kernel"][0], down["kernel"][1])
  down["kernel"] = down["kernel"].at[2].multiply(3.0)
  after = fold(model, variables)
  changed = np.any(np.abs(after - before) > 1e-6, axis=-1)
  assert changed.tolist() == [False, False, True, False]


def test_mlp_parameters_carry_prompt_logical_axes():
  for separate, lead in ((False, ()), (True, ("prompt",))):
    boxed = _model(separate_mlps=separate).init(jax.random.PRNGKey(0), _batch()["inputs"],
                                                 _batch()["decoder_inputs"])
    mlp = traverse_util.flatten_dict(boxed["params"]["prompt"]["residual"], sep="/")
    assert mlp["down/kernel"].names == lead + ("prompt_embed", "prompt_mlp")
    assert mlp["up/kernel"].names == lead + ("prompt_mlp", "prompt_embed")
    assert mlp["layer_norm/scale"].names == lead + ("prompt_embed",)


def test_dropout_only_in_training_mode():
  module = ResidualReparameterization(bottleneck=8, dropout_rate=0.5)
  prompt = jax.random.normal(jax.random.PRNGKey(1), (LENGTH, 16))
  variables = module.init(jax.random.PRNGKey(0), prompt)
  eval_a = module.apply(variables, prompt)
  eval_b = module.apply(variables, prompt, deterministic=True)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = module.apply(variables, prompt, deterministic=False,
                       rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(train, eval_a)


def test_unknown_activation_is_a_user_error():
  module = ResidualReparameterization(bottleneck=4, activation="swishy")
  with pytest.raises(UserError, match="activation"):
    module.init(jax.random.PRNGKey(0), jnp.ones((2, 8)))


def test_gin_file_adds_the_reparameterization():
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [str(REPO / "configs" / "methods" / "residual.gin")],
        ["Prompt.length = 4", "RESIDUAL_BOTTLENECK = 8",
         "ResidualReparameterization.separate_mlps = True"])
    prompt = Prompt()
  finally:
    gin.clear_config()
  ((name, make),) = prompt.reparameterizations
  residual = make(name=name)
  assert name == "residual" and isinstance(residual, ResidualReparameterization)
  assert residual.bottleneck == 8 and residual.separate_mlps
  variables = _init(T5(CONFIG, prompt=prompt))
  assert _mlp(variables)["down"]["kernel"].shape == (4, CONFIG.emb_dim, 8)


def test_dropout_comes_before_layer_norm_as_in_the_official_code():
  # Linear -> ReLU -> Linear -> Dropout -> LayerNorm, + x: with dropout active,
  # the branch is still normalized per token (zero mean, unit variance at init).
  module = ResidualReparameterization(bottleneck=8, dropout_rate=0.5)
  prompt = jax.random.normal(jax.random.PRNGKey(1), (LENGTH, CONFIG.emb_dim))
  variables = nn.meta.unbox(module.init(jax.random.PRNGKey(0), prompt))
  out = module.apply(variables, prompt, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
  branch = np.asarray(out - prompt)
  np.testing.assert_allclose(branch.mean(axis=-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(branch.var(axis=-1), 1.0, rtol=1e-3)
  # Dropped entries are zeros *before* the norm, so each token's dropped entries share
  # one value (-mean/std) and none is exactly zero; normalizing first, then dropping
  # (the old order) leaves exact zeros in the branch instead.
  assert not (branch == 0).any()
  for row in branch:
    values, counts = np.unique(row, return_counts=True)
    assert counts.max() >= 2, row


def test_torch_style_initialization_is_uniform_in_the_fan_in_bound():
  module = ResidualReparameterization(bottleneck=64, init_style="torch")
  prompt = jnp.ones((LENGTH, CONFIG.emb_dim))
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), prompt))["params"]
  for name, fan_in in (("down", CONFIG.emb_dim), ("up", 64)):
    bound = 1 / np.sqrt(fan_in)
    for leaf in (params[name]["kernel"], params[name]["bias"]):
      leaf = np.asarray(leaf)
      assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.8 * bound
  assert ResidualReparameterization().bottleneck == 800  # the official scripts' default


def test_the_mlp_can_have_its_own_learning_rate():
  from prompt_tuning.train import optim
  model = _model()
  variables = _init(model)
  trainable = {"prompt": variables["params"]["prompt"]}
  tx = optim.partitioned(optim.adafactor(learning_rate=0.3),
                         {"prompt/residual/.*": optim.adafactor(learning_rate=0.0,
                                                                  weight_decay_rate=None)})
  state = tx.init(trainable)
  grads = jax.tree_util.tree_map(jnp.ones_like, trainable)
  updates, state = tx.update(grads, state, trainable)
  new = optax.apply_updates(trainable, updates)
  flat_old, flat_new = (traverse_util.flatten_dict(t, sep="/") for t in (trainable, new))
  for path in flat_old:
    moved = not np.array_equal(flat_old[path], flat_new[path])
    assert moved == (not path.startswith("prompt/residual/")), path
  assert float(optim.current_learning_rate(state)) == pytest.approx(0.3)


@pytest.mark.slow
def test_training_with_a_separate_mlp_learning_rate(tmp_path):
  from tests.train_helpers import TOY_FILES, toy_train
  summary = toy_train(tmp_path / "run", steps=2, files=(*TOY_FILES, "methods/residual.gin"),
                      extra=["RESIDUAL_BOTTLENECK = 4", "train.optimizer = @partitioned()",
                             "partitioned.default = @adafactor()",
                             "partitioned.by_pattern = {'prompt/residual/.*': @mlp/adafactor()}",
                             "mlp/adafactor.learning_rate = 0.0",
                             "mlp/adafactor.weight_decay_rate = None",
                             "train.return_variables = True"])
  assert len(summary["train_history"]) == 2
  assert summary["train_history"][-1]["learning_rate"] == pytest.approx(0.3)
