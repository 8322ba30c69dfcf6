"""InfoNCE, the mutual-information lower bound both InfoPrompt losses use.

With one positive score `s_0 = l(x, y)` and `K - 1` negative scores
`s_j = l(x, y_j)`, `y_j` drawn independently of `x`, the per-example estimate

  I_NCE = log K + s_0 - log sum_{j=0}^{K-1} exp(s_j)

is, in expectation, a lower bound on `I(X; Y)` for any critic `l`, tight
(up to `log K`) for the optimal critic `l = log p(y | x) / p(y) + const`.
Since the positive is one of the `K` terms of the sum, every single estimate
is at most `log K`.
"""
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def info_nce(positive_scores: Array, negative_scores: Array,
             negative_mask: Optional[Array] = None) -> Array:
  """Per-example InfoNCE lower bound on mutual information, in nats.

  Computed as `log K - log(1 + sum_j exp(s_j - s_0))` with a max-shifted
  log-sum-exp, so no score magnitude overflows. The subtracted term is >= 0
  mathematically; it is floored at 0 so that, also after rounding, every
  estimate is <= the float32 `log K` it reports (the floor only acts where
  the negatives' total weight rounds to nothing, so no useful gradient is lost).

  Args:
    positive_scores: `[...]` critic scores of the positive pairs (any leading
      shape, e.g. `[B]` or `[B, Q]`).
    negative_scores: `[..., K-1]` scores of the negatives of each positive.
    negative_mask: optional `[..., K-1]` bool; `False` entries are not
      negatives. An example with `n` valid negatives has `K = n + 1` (its
      bound is `log(n + 1)`; with none it is exactly 0).

  Returns:
    `[...]` float32 estimates, each <= `log K`.
  """
  positive = jnp.asarray(positive_scores, jnp.float32)
  negative = jnp.asarray(negative_scores, jnp.float32)
  if negative.shape[:-1] != positive.shape:
    raise ValueError(f"negative_scores {negative.shape} must be positive_scores {positive.shape} "
                     "plus a trailing axis of negatives")
  gaps = negative - positive[..., None]
  if negative_mask is None:
    # A constant: the float32 rounding of the exact log K.
    log_k = jnp.float32(np.log1p(negative.shape[-1]))
  else:
    negative_mask = jnp.broadcast_to(negative_mask, negative.shape)
    gaps = jnp.where(negative_mask, gaps, -jnp.inf)
    log_k = jnp.log1p(jnp.sum(negative_mask, axis=-1).astype(jnp.float32))
  # The positive's own term: its gap to itself is exactly 0.
  gaps = jnp.concatenate([jnp.zeros(positive.shape + (1,), jnp.float32), gaps], axis=-1)
  return log_k - jnp.maximum(jax.nn.logsumexp(gaps, axis=-1), 0.0)
