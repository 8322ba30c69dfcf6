"""Token-level losses and scores for encoder-decoder training and rank classification.

Pure functions of logits; no model state. Semantics follow T5X:

* cross-entropy against (optionally label-smoothed) one-hot targets, minus a
  constant that makes the smoothed loss 0 at its minimum;
* z-loss `z_loss * log(Z)^2` per token (Z = sum of exp(logits)), which keeps the
  softmax normalizer near 1 and is *included* in the returned loss sum;
* sums (not means) weighted by the feature converter's loss weights, plus the
  weight sum, so callers normalise however they like (per token, per batch).
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def smoothing_normalizer(vocab_size: int, label_smoothing: float) -> float:
  """The entropy of the smoothed target distribution (the loss's minimum).

  With confidence `c = 1 - s` on the target and `s / (V - 1)` on each other id,
  the cross-entropy is at least the entropy `-(c log c + s log(s / (V - 1)))`;
  subtracting it makes a perfect prediction score 0.
  """
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab_size - 1)
  # The 1e-20 keeps log finite at s = 0, where the term is multiplied by 0.
  return float(-(confidence * np.log(confidence)
                 + (vocab_size - 1) * low * np.log(low + 1e-20)))


def token_cross_entropy_with_z_loss(logits: Array, targets: Array, z_loss: float = 1e-4,
                                    label_smoothing: float = 0.0) -> Tuple[Array, Array]:
  """Unweighted per-token loss (`cross_entropy_with_z_loss`'s terms): (`[B, L]` loss including
  the z-loss, `[B, L]` z-loss alone), for `[B, L, V]` logits and `[B, L]` targets."""
  vocab_size = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab_size - 1)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, L]
  # sum_v soft_v * log p_v with soft = (c - low) * one_hot + low, without
  # materialising the `[B, L, V]` one-hot: (c - low) * log p_target + low * sum_v log p_v.
  target_log_prob = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - log_z
  expected_log_prob = (confidence - low) * target_log_prob
  if low:
    expected_log_prob = expected_log_prob + low * (jnp.sum(logits, axis=-1) - vocab_size * log_z)
  token_z_loss = z_loss * jnp.square(log_z)
  token_loss = (-expected_log_prob - smoothing_normalizer(vocab_size, label_smoothing)
                + token_z_loss)
  return token_loss, token_z_loss


def cross_entropy_with_z_loss(logits: Array, targets: Array, weights: Optional[Array] = None,
                              z_loss: float = 1e-4,
                              label_smoothing: float = 0.0) -> Tuple[Array, Array, Array]:
  """Weighted token cross-entropy with z-loss and label smoothing (T5X semantics).

  Args:
    logits: `[B, L, V]` unnormalised scores.
    targets: `[B, L]` int target ids.
    weights: `[B, L]` loss weights (0 on padding); None weighs every token 1.
    z_loss: coefficient of `log(Z)^2` per token.
    label_smoothing: probability mass `s` spread uniformly over the other
      `V - 1` ids.

  Returns:
    (loss_sum, z_loss_sum, weight_sum): scalars. `loss_sum` includes the z-loss
    term; `z_loss_sum` reports that term alone.
  """
  token_loss, token_z_loss = token_cross_entropy_with_z_loss(logits, targets, z_loss,
                                                             label_smoothing)
  if weights is None:
    weight_sum = jnp.asarray(np.prod(targets.shape), jnp.float32)
  else:
    weights = weights.astype(jnp.float32)
    token_loss = token_loss * weights
    token_z_loss = token_z_loss * weights
    weight_sum = jnp.sum(weights)
  return jnp.sum(token_loss), jnp.sum(token_z_loss), weight_sum


def token_log_likelihoods(logits: Array, targets: Array) -> Array:
  """`[B, L, V]` logits, `[B, L]` targets -> `[B, L]` log p(target) (float32)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def sequence_log_likelihood(logits: Array, targets: Array,
                            weights: Optional[Array] = None) -> Array:
  """Sum over target positions of `weights * log p(target)`: `[B]`.

  This is the rank-classification score: with `weights` 1 on the target tokens
  (EOS included) and 0 on padding, it is log p(targets | inputs).
  """
  token_ll = token_log_likelihoods(logits, targets)
  if weights is not None:
    token_ll = token_ll * weights.astype(jnp.float32)
  return jnp.sum(token_ll, axis=-1)


def token_accuracy(logits: Array, targets: Array,
                   weights: Optional[Array] = None) -> Tuple[Array, Array]:
  """(weighted count of positions where argmax == target, weight sum): scalars."""
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  if weights is None:
    return jnp.sum(correct), jnp.asarray(np.prod(targets.shape), jnp.float32)
  weights = weights.astype(jnp.float32)
  return jnp.sum(correct * weights), jnp.sum(weights)
