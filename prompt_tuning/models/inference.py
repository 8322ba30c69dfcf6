"""A model bound to its parameters, with jitted batch scoring and generation.

`InferenceModel` is what the `score` and `generate` commands (and evaluation
code) call with padded token arrays (`prompts.tuned_model` loads one from a
backbone folder and a prompt file). Parameters are jit *arguments*, not
closed-over constants, so a big backbone is not baked into the compiled
program; shapes are the cache key, so callers pad to a few fixed shapes.
"""
import functools
from typing import Any, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models import decoding
from prompt_tuning.models.losses import sequence_log_likelihood

Array = jax.Array


def shift_right(targets: Array) -> Array:
  """Teacher-forcing decoder inputs: `[B, Lt]` targets shifted right with 0 as start token."""
  return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]


def score_batch(model, params: Any, encoder_input_tokens: Array, target_tokens: Array,
                target_weights: Array) -> Array:
  """Sum of `target_weights * log p(target token)` per example, `[B]`.

  Args:
    model: a `T5` module (with or without a prompt).
    params: its parameters (the `'params'` collection).
    encoder_input_tokens: `[B, L]` int, 0 = padding.
    target_tokens: `[B, Lt]` int, EOS included, 0-padded.
    target_weights: `[B, Lt]`, 1 on target tokens and 0 on padding.
  """
  logits = model.apply({"params": params}, encoder_input_tokens, shift_right(target_tokens))
  return sequence_log_likelihood(logits, target_tokens, target_weights)


class InferenceModel:
  """`score` and `generate` over numpy token arrays, jitted once per shape."""

  def __init__(self, model, params: Any):
    self.model = model
    self.params = jax.device_put(params)
    self._score = jax.jit(functools.partial(score_batch, model))
    static = ("max_decode_length", "beam_size", "alpha", "eos_id")
    self._search = jax.jit(functools.partial(decoding.generate, model), static_argnames=static)
    # Temperature and top-k stay traced: one program serves every setting.
    self._sample = jax.jit(functools.partial(decoding.generate, model),
                           static_argnames=static[:1] + static[3:])

  @property
  def vocab_size(self) -> int:
    return self.model.config.vocab_size

  def score(self, encoder_input_tokens: np.ndarray, target_tokens: np.ndarray,
            target_weights: Optional[np.ndarray] = None) -> np.ndarray:
    """log p(targets | inputs) per row, `[B]` float32; weights default to `targets > 0`."""
    if target_weights is None:
      target_weights = target_tokens > 0
    return np.asarray(self._score(self.params, jnp.asarray(encoder_input_tokens, jnp.int32),
                                  jnp.asarray(target_tokens, jnp.int32),
                                  jnp.asarray(target_weights, jnp.float32)))

  def generate(self, encoder_input_tokens: np.ndarray, *, max_decode_length: int,
               beam_size: int = 1, alpha: float = 0.6, temperature: float = 0.0, topk: int = 0,
               rng: Optional[Array] = None, eos_id: int = decoding.EOS_ID
               ) -> Tuple[np.ndarray, np.ndarray]:
    """(tokens `[B, T]`, 0 after EOS; log-likelihood `[B]`); see `decoding.generate`."""
    inputs = jnp.asarray(encoder_input_tokens, jnp.int32)
    if temperature > 0:
      if beam_size > 1:
        raise ValueError("beam search is deterministic; use temperature 0 with beam_size > 1")
      tokens, log_likelihood = self._sample(
          self.params, inputs, max_decode_length=max_decode_length,
          temperature=jnp.float32(temperature), topk=jnp.int32(topk),
          rng=jax.random.PRNGKey(0) if rng is None else rng, eos_id=eos_id)
    else:
      tokens, log_likelihood = self._search(
          self.params, inputs, max_decode_length=max_decode_length, beam_size=beam_size,
          alpha=float(alpha), eos_id=eos_id)
    return np.asarray(tokens), np.asarray(log_likelihood)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> List[np.ndarray]:
  """Example indices grouped into batches of similar length (longest first).

  Similar lengths waste less padding and, with bucketed shapes, hit fewer
  distinct compiled programs; longest first surfaces out-of-memory at once.
  """
  order = np.argsort(-np.asarray(lengths), kind="stable")
  return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
