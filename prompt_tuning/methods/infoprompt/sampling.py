"""Per-example randomness of InfoPrompt: which context tokens are negatives, and
the Gaussian noise of the representation term's samples (positive and negatives).

Everything random is a function of `(base_key, example_id)` only, never of the
example's position in the (micro)batch, the batch size, the device it lands on
or the padded input length. A run on 8 devices or with microbatches therefore
samples exactly what a 1-device run does. Each example's key is
`fold_in(base_key, example_id)`; from it, `fold_in(key, CONTEXT_STREAM)` draws
context negatives and `fold_in(key, NOISE_STREAM)` the Gaussian noise.
"""
import jax
import jax.numpy as jnp

Array = jax.Array
CONTEXT_STREAM = 0
NOISE_STREAM = 1


def example_keys(base_key: Array, example_ids: Array) -> Array:
  """`[B]` int example ids -> `[B]` keys `fold_in(base_key, id)` (one per example)."""
  return jax.vmap(lambda i: jax.random.fold_in(base_key, i))(jnp.asarray(example_ids, jnp.int32))


def _stream(keys: Array, stream: int) -> Array:
  return jax.vmap(lambda k: jax.random.fold_in(k, stream))(keys)


def sample_context_positions(keys: Array, valid: Array, num: int):
  """Positions of `num` context tokens per example, drawn without replacement.

  Each position `i` gets a uniform draw from `fold_in(key, i)`; the valid
  positions in increasing order of their draws form a random permutation, and
  slot `s` takes its element `s mod n` (`n` = the example's valid tokens).
  So the draws never depend on the padded length `L`, and contexts shorter
  than `num` tokens are cycled through (each token used as evenly as possible)
  rather than padded.

  Args:
    keys: `[B]` per-example keys (`example_keys`).
    valid: `[B, L]` bool, the example's non-padding tokens.
    num: number of negatives `K - 1`.

  Returns:
    (`[B, num]` int32 positions into `L`, `[B, num]` bool mask: False only for
    examples without any valid token, e.g. batch padding).
  """
  keys = _stream(keys, CONTEXT_STREAM)
  length = valid.shape[-1]

  def one(key, row_valid):
    draws = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(
        jnp.arange(length, dtype=jnp.int32))
    # Uniform draws lie in [0, 1): padding sorts after every valid token.
    order = jnp.argsort(jnp.where(row_valid, draws, 2.0)).astype(jnp.int32)
    count = jnp.sum(row_valid.astype(jnp.int32))
    positions = order[jnp.arange(num, dtype=jnp.int32) % jnp.maximum(count, 1)]
    return positions, jnp.broadcast_to(count > 0, (num,))

  return jax.vmap(one)(keys, valid)


def gaussian_noise(keys: Array, num: int, dim: int) -> Array:
  """`[B]` keys -> `[B, num, dim]` standard normal noise (float32), per example."""
  keys = _stream(keys, NOISE_STREAM)
  return jax.vmap(lambda k: jax.random.normal(k, (num, dim), jnp.float32))(keys)
