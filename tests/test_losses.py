"""Cross-entropy with z-loss and label smoothing, sequence log-likelihood, accuracy."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.models import losses


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


def test_z_loss_term_by_hand():
  logits = jnp.array([[[0.0, np.log(3.0)]]])  # Z = 1 + 3
  loss, z_loss, weight_sum = losses.cross_entropy_with_z_loss(logits, jnp.array([[1]]),
                                                              z_loss=1e-2)
  expected_z = 1e-2 * np.log(4.0) ** 2
  np.testing.assert_allclose(z_loss, expected_z, rtol=1e-6)
  # The loss sum includes the z-loss term (T5X semantics).
  np.testing.assert_allclose(loss, -np.log(3.0 / 4.0) + expected_z, rtol=1e-6)
  assert float(weight_sum) == 1.0


def test_plain_cross_entropy_matches_optax():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 11))
  targets = jax.random.randint(jax.random.PRNGKey(1), (2, 3), 0, 11)
  loss, z_loss, _ = losses.cross_entropy_with_z_loss(logits, targets, z_loss=0.0)
  np.testing.assert_allclose(
      loss, optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum(), rtol=1e-5)
  assert float(z_loss) == 0.0


def test_label_smoothing_by_hand():
  logits = np.array([[[1.0, -0.5, 2.0]]])
  s = 0.3
  soft = np.array([0.15, 0.7, 0.15])  # target 1 keeps 1 - s, the others share s
  entropy = -np.sum(soft * np.log(soft))
  expected = -np.sum(soft * _log_softmax(logits)[0, 0]) - entropy
  loss, _, _ = losses.cross_entropy_with_z_loss(jnp.asarray(logits), jnp.array([[1]]), z_loss=0.0,
                                                label_smoothing=s)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("smoothing", [0.1, 0.5])
def test_label_smoothing_loss_is_zero_at_its_minimum(smoothing):
  vocab, target = 5, 2
  smoothed = np.full(vocab, smoothing / (vocab - 1))
  smoothed[target] = 1.0 - smoothing
  # Logits equal to the log of the smoothed distribution predict it exactly.
  best = jnp.asarray(np.log(smoothed))[None, None]
  loss, _, _ = losses.cross_entropy_with_z_loss(best, jnp.array([[target]]), z_loss=0.0,
                                                label_smoothing=smoothing)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)
  others = jax.random.normal(jax.random.PRNGKey(0), (1, 8, vocab))
  other_loss, _, _ = losses.cross_entropy_with_z_loss(
      others, jnp.full((1, 8), target), z_loss=0.0, label_smoothing=smoothing)
  assert float(other_loss) > 0.0


def test_weights_select_tokens_and_sum():
  logits = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 6))
  targets = jax.random.randint(jax.random.PRNGKey(3), (2, 4), 0, 6)
  weights = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0]], jnp.float32)
  loss, z_loss, weight_sum = losses.cross_entropy_with_z_loss(logits, targets, weights)
  x = np.asarray(logits, np.float64)
  log_z = np.log(np.sum(np.exp(x), axis=-1))
  token_z = 1e-4 * log_z ** 2
  token_loss = -np.take_along_axis(_log_softmax(x), np.asarray(targets)[..., None], -1)[..., 0]
  kept = np.asarray(weights) > 0
  expected_z = token_z[kept].sum()
  expected_loss = token_loss[kept].sum() + expected_z
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(z_loss, expected_z, rtol=1e-5)
  assert float(weight_sum) == 3.0
  # Without weights every position counts.
  assert float(losses.cross_entropy_with_z_loss(logits, targets)[2]) == 8.0


def test_sequence_log_likelihood_by_hand():
  logits = np.array([[[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
  targets = np.array([[2, 1, 0]])
  weights = np.array([[1.0, 1.0, 0.0]])
  log_probs = _log_softmax(logits)[0]
  expected = log_probs[0, 2] + log_probs[1, 1]
  got = losses.sequence_log_likelihood(jnp.asarray(logits), jnp.asarray(targets),
                                       jnp.asarray(weights))
  assert got.shape == (1,)
  np.testing.assert_allclose(got[0], expected, rtol=1e-6)
  unweighted = losses.sequence_log_likelihood(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(unweighted[0], expected + log_probs[2, 0], rtol=1e-6)


def test_token_accuracy_by_hand():
  logits = jnp.array([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
  targets = jnp.array([[1, 1, 0]])
  correct, total = losses.token_accuracy(logits, targets, jnp.array([[1.0, 1.0, 0.0]]))
  assert (float(correct), float(total)) == (1.0, 2.0)
  correct, total = losses.token_accuracy(logits, targets)
  assert (float(correct), float(total)) == (2.0, 3.0)
