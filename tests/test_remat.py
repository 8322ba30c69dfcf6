"""Per-layer remat policies change memory and time only: same loss and prompt gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import plan as plan_lib
from prompt_tuning.errors import UserError
from prompt_tuning.models import losses
from prompt_tuning.models.config import REMAT_POLICIES, T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.prompt import Prompt

CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)


RNG = np.random.default_rng(0)
ENC = jnp.asarray(RNG.integers(1, 64, (2, 7)), jnp.int32)
TGT = jnp.asarray(RNG.integers(1, 64, (2, 4)), jnp.int32)
DEC = jnp.pad(TGT, ((0, 0), (1, 0)))[:, :-1]


def _model(remat):
  return T5(CONFIG.replace(remat=remat), prompt=Prompt(length=3, initializer=initializers.uniform()))


def _loss_and_prompt_grad(remat, params):
  model = _model(remat)
  frozen = {k: v for k, v in params.items() if k != "prompt"}

  def loss(prompt):
    logits = model.apply({"params": {**frozen, "prompt": prompt}}, ENC, DEC)
    return -jnp.sum(losses.sequence_log_likelihood(logits, TGT))

  value, grad = jax.jit(jax.value_and_grad(loss))(params["prompt"])
  return value, jax.tree_util.tree_leaves(grad)


@pytest.mark.slow
def test_every_policy_gives_the_loss_and_gradients_of_no_remat():
  # Remat changes no parameter: one set of variables serves every policy.
  params = nn.meta.unbox(jax.jit(_model(False).init)(jax.random.PRNGKey(0), ENC, DEC))["params"]
  want_loss, want_grad = _loss_and_prompt_grad(False, params)
  assert np.abs(np.asarray(want_grad[0])).max() > 0
  for policy in sorted(set(REMAT_POLICIES) - {"none"}):
    loss, grad = _loss_and_prompt_grad(policy, params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=policy)
    np.testing.assert_allclose(grad[0], want_grad[0], rtol=1e-4, atol=1e-6, err_msg=policy)


def test_unknown_policy_is_a_user_error():
  with pytest.raises(UserError, match="not a remat policy"):
    CONFIG.replace(remat="dots_only")


def test_plan_keeps_less_the_more_a_policy_recomputes():
  # T5 1.1 large's depth: 'dots_saveable' keeps nearly what 'none' does (the float32 attention
  # scores too), so one layer's working set, which remat adds, tips a shallow stack over it.
  shape = plan_lib.ActivationShape(emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32, vocab_size=64,
                                   num_encoder_layers=24, num_decoder_layers=24, batch=8,
                                   encoder_length=17, decoder_length=4)
  size = {p: plan_lib.activation_bytes(plan_lib.ActivationShape(**{**shape.__dict__, "remat": p}),
                                       1, 1) for p in REMAT_POLICIES}
  assert 0 < size["full"] < size["dots"] < size["dots_saveable"] < size["none"]
