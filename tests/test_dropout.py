"""DROPOUT_RATE, T5X's macro: 0.1 while tuning, and never in the passes that must be exact."""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.errors import UserError
from prompt_tuning.models import decoding
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts.prompt import Prompt
from prompt_tuning.prompts.initializers import uniform
from prompt_tuning.train.initialize import build_model
from prompt_tuning.train.step import LossConfig, token_loss_sums
from tests.train_helpers import losses, toy_train

CONFIG = T5Config(vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=4,
                  relative_attention_max_distance=8)
RATE = 0.5


def _models():
  """The same prompt model without and with dropout, and shared variables."""
  prompt = Prompt(length=3, initializer=uniform(0.5, centered=True))
  plain = T5(CONFIG, prompt=prompt)
  dropped = T5(CONFIG.replace(dropout_rate=RATE), prompt=prompt)
  tokens = jnp.ones((1, 4), jnp.int32)
  variables = plain.init(jax.random.PRNGKey(0), tokens, tokens)
  return plain, dropped, variables


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  inputs = rng.integers(3, CONFIG.vocab_size, (4, 7)).astype(np.int32)
  inputs[1, 5:] = 0
  targets = rng.integers(3, CONFIG.vocab_size, (4, 3)).astype(np.int32)
  decoder_inputs = np.concatenate([np.zeros((4, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets}


@pytest.mark.slow
def test_training_passes_drop_out_and_deterministic_passes_do_not():
  plain, dropped, variables = _models()
  batch, config = _batch(), LossConfig()

  def loss(model, enable_dropout, key):
    return float(token_loss_sums(model, variables, batch, jax.random.PRNGKey(key), config,
                                 enable_dropout)[0])

  exact = loss(plain, False, 0)
  assert loss(dropped, False, 0) == loss(dropped, False, 1) == exact  # eval / scoring losses
  assert loss(dropped, True, 0) != loss(dropped, True, 1)  # the train step's pass drops out
  assert loss(dropped, True, 0) != exact


def test_decoding_ignores_dropout():
  plain, dropped, variables = _models()
  inputs = jnp.asarray(_batch()["encoder_input_tokens"])
  for kwargs in ({}, {"beam_size": 2}):
    want = decoding.generate(plain, variables["params"], inputs, max_decode_length=4, **kwargs)
    got = decoding.generate(dropped, variables["params"], inputs, max_decode_length=4, **kwargs)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_xprompt_importance_scores_ignore_dropout():
  from prompt_tuning.methods.xprompt import masks as xprompt  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.xprompt.search import SearchContext  # pylint: disable=g-import-not-at-top
  prompt = Prompt(length=3, initializer=uniform(0.5, centered=True),
                  reparameterizations=(("xprompt", functools.partial(xprompt.XPromptMask, 4)),))
  tokens = jnp.ones((1, 4), jnp.int32)
  scores = []
  for rate in (0.0, RATE):
    model = T5(CONFIG.replace(dropout_rate=rate), prompt=prompt)
    variables = model.init(jax.random.PRNGKey(0), tokens, tokens)
    importance = SearchContext.importance_fn(types.SimpleNamespace(model=model), per_example=True)
    stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), _batch(0), _batch(1))
    scores.append(importance(variables["params"], variables[xprompt.MASK_COLLECTION], stacked))
  for with_dropout, without in zip(jax.tree_util.tree_leaves(scores[1]),
                                   jax.tree_util.tree_leaves(scores[0])):
    np.testing.assert_array_equal(with_dropout, without)


def test_infoprompt_prompt_free_pass_ignores_dropout():
  from prompt_tuning.methods.infoprompt.term import prompt_free_representation  # pylint: disable=g-import-not-at-top
  plain, dropped, variables = _models()
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  for z_source in ("decoder_first", "encoder_mean"):
    np.testing.assert_array_equal(
        prompt_free_representation(dropped, variables, batch, z_source),
        prompt_free_representation(plain, variables, batch, z_source))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.1", True])
def test_a_rate_outside_zero_one_is_one_line(rate):
  with pytest.raises(UserError, match=r"DROPOUT_RATE \(build_model.dropout_rate\) = .* is not a "
                                      r"rate in \[0, 1\)"):
    build_model(model_config=CONFIG, dropout_rate=rate)


def test_the_run_file_tunes_with_t5x_dropout_and_the_flag_changes_it(tmp_path):
  default = toy_train(tmp_path / "default", steps=3)
  assert "DROPOUT_RATE = 0.1" in (tmp_path / "default" / "config.gin").read_text()
  flagged = toy_train(tmp_path / "flagged", steps=3, extra=["DROPOUT_RATE = 0.0"])
  assert "DROPOUT_RATE = 0.0" in (tmp_path / "flagged" / "config.gin").read_text()
  # Same data, init and keys: only the masks make the first loss differ.
  assert losses(default)[0] != pytest.approx(losses(flagged)[0], rel=1e-6)
