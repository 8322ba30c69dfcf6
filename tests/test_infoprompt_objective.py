"""InfoPrompt's objective as the paper defines it (issue 25).

* Eq. 9: the representation term scores a sample at Z against samples at Z'. When the prompt
  changes nothing (Z' = Z), no training of the critics and Gaussian heads can raise the
  estimate above 0; when it does change Z, they can. (Scoring the raw Z against sampled
  negatives, as before, reached log K = 3.466 in the first test within 50 steps.)
* θ reads no label by default: wrong targets change the task loss, not the MI terms.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio

from prompt_tuning import configurables
from prompt_tuning.errors import UserError
from prompt_tuning.methods.infoprompt import loss, representations
from prompt_tuning.train.run_setup import build_run
from prompt_tuning.train.step import LossConfig, token_loss_sums
from tests.train_helpers import TOY_BINDINGS, TOY_FILES, toy_train

B, L, E, K = 64, 6, 16, 32
STEPS = 50
# 50x the heads' configured learning rate: a strong adversary for the no-information case.
LEARNING_RATE = 0.05


def _trained_estimate(prompt, z, z_prime) -> float:
  """Trains every info/ parameter (both critics, f_μ, f_σ; nothing else) to maximize the
  representation estimate for STEPS steps, then returns its mean over fresh draws."""
  config = loss.InfoPromptConfig(num_negatives=K, gamma=0.0)
  rng = np.random.default_rng(1)
  embeddings = jnp.asarray(rng.standard_normal((B, L, E)), jnp.float32)
  fixed = dict(prompt=prompt, z=z, z_prime=z_prime, input_embeddings=embeddings,
               input_valid=jnp.ones((B, L), bool), theta=None, example_ids=jnp.arange(B))
  features = {"prompt": prompt, "decoder_hidden": z[:, None], "input_embeddings": embeddings,
              "input_valid": fixed["input_valid"]}
  params = nn.meta.unbox(loss.make_heads(config).init(jax.random.PRNGKey(0), features))["params"]
  assert set(params) == {"head_critic", "representation_critic", "gaussian"}

  def estimate(p, key):
    return jnp.mean(loss.mutual_information(config, p, key=key, **fixed)["mi_representation"])

  optimizer = optax.adam(LEARNING_RATE)

  @jax.jit
  def step(p, state, i):
    grads = jax.grad(lambda p: -estimate(p, jax.random.PRNGKey(i)))(p)
    updates, state = optimizer.update(grads, state)
    return optax.apply_updates(p, updates), state

  state = optimizer.init(params)
  for i in range(STEPS):
    params, state = step(params, state, i)
  return float(np.mean([estimate(params, jax.random.PRNGKey(10_000 + i)) for i in range(8)]))


@pytest.mark.parametrize("gap", [0.0, 1e-3])
def test_a_prompt_without_information_leaves_nothing_for_the_heads_to_win(gap):
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.standard_normal((4, E)), jnp.float32)
  z = jnp.asarray(rng.standard_normal((B, E)), jnp.float32)
  z_prime = z + gap * jnp.asarray(rng.standard_normal((B, E)), jnp.float32)
  # Positive and negatives are exchangeable, so the expected estimate is <= 0 for any heads;
  # 512 estimates average it to within a few hundredths (-0.025 measured). The shortcut
  # (raw Z as the positive) reached log K = 3.466 here.
  assert _trained_estimate(prompt, z, z_prime) < 0.1 * np.log(K)


def test_a_prompt_that_changes_the_representation_raises_the_estimate():
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.standard_normal((B, 1, E)), jnp.float32)  # one per example
  z_prime = jnp.asarray(rng.standard_normal((B, E)), jnp.float32)
  z = z_prime + prompt[:, 0]  # the prompt's content shows in the representation
  assert _trained_estimate(prompt, z, z_prime) > 0.75 * np.log(K)


# ----------------------------------------------------------------------------- θ

def test_theta_is_the_class_mean_or_the_gold_label_column():
  kernel = jnp.asarray(np.random.default_rng(2).standard_normal((8, 300)), jnp.float32)
  classes = representations.class_label_tokens(["even", "odd"], seqio.ByteVocabulary())
  np.testing.assert_array_equal(classes, [[104, 121, 104, 113], [114, 103, 103, 0]])
  targets = jnp.asarray([[114, 103, 103, 1], [104, 121, 104, 113]], jnp.int32)
  k = np.asarray(kernel)
  class_mean = representations.theta_vectors("class_mean", kernel, 2, "first", classes)
  np.testing.assert_allclose(class_mean, np.stack([(k[:, 104] + k[:, 114]) / 2] * 2), rtol=1e-6)
  gold = representations.theta_vectors("gold_label", kernel, 2, "first", target_tokens=targets)
  np.testing.assert_array_equal(gold, k[:, [114, 104]].T)
  with pytest.raises(UserError, match="'' tokenizes to nothing"):
    representations.class_label_tokens(["even", ""], seqio.ByteVocabulary())


INFO_FILES = (*TOY_FILES, "methods/infoprompt.gin")
INFO = ("INFOPROMPT_NEGATIVES = 8", "CLASS_LABELS = ['even', 'odd']")


def _batch(targets):
  """A toy_parity batch (byte ids: + 3, EOS 1) with the given target words."""
  vocab = seqio.ByteVocabulary()

  def rows(texts, length):
    out = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
      ids = vocab.encode(text) + [1]
      out[i, :len(ids)] = ids
    return out

  inputs = rows(["1234", "57", "908", "66", "1", "24680", "135", "77"], 16)
  target_tokens = rows(targets, 8)
  return {"encoder_input_tokens": jnp.asarray(inputs),
          "decoder_target_tokens": jnp.asarray(target_tokens),
          "decoder_input_tokens": jnp.asarray(np.pad(target_tokens[:, :-1], ((0, 0), (1, 0)))),
          "decoder_loss_weights": jnp.asarray(target_tokens > 0, jnp.float32),
          "example_index": jnp.arange(8, dtype=jnp.int32)}


@pytest.mark.slow
@pytest.mark.parametrize("theta", ["class_mean", "gold_label"])
def test_the_default_mi_terms_read_no_label(tmp_path, theta):
  configurables.parse(list(INFO_FILES), [*TOY_BINDINGS, *INFO, f"MODEL_DIR = '{tmp_path}'",
                                     f"InfoPromptConfig.theta = '{theta}'"])
  ctx, loss_config = build_run(seed=0), LossConfig()
  right = ["even", "odd", "even", "even", "odd", "even", "odd", "odd"]
  wrong = ["odd" if t == "even" else "even" for t in right]
  sums = [token_loss_sums(ctx.model, ctx.variables, _batch(t), jax.random.PRNGKey(3), loss_config,
                          enable_dropout=True)[1] for t in (right, wrong)]
  assert abs(float(sums[0]["loss"]) - float(sums[1]["loss"])) > 0.1  # the task loss reads them
  # Z is the decoder state at the first target position (it sees BOS only) and Z' comes from
  # a pass without the targets: the representation term never reads them.
  np.testing.assert_allclose(sums[1]["example_sum/mi_representation"],
                             sums[0]["example_sum/mi_representation"], rtol=1e-6, atol=1e-6)
  mi_head = [float(s["example_sum/mi_head"]) for s in sums]
  if theta == "class_mean":  # the default: the same θ for every example
    np.testing.assert_allclose(mi_head[1], mi_head[0], rtol=1e-6, atol=1e-6)
  else:  # supervised θ (not the paper's): each example's own label column
    assert abs(mi_head[1] - mi_head[0]) > 1e-3


def test_class_mean_theta_without_label_words_is_one_line(tmp_path):
  with pytest.raises(UserError) as error:
    toy_train(tmp_path / "run", steps=1, files=INFO_FILES, extra=["INFOPROMPT_NEGATIVES = 8"])
  message = str(error.value).splitlines()[0]
  assert "needs the task's label words: set CLASS_LABELS" in message
  assert "theta='gold_label'" in message
