"""Autoregressive decoding with a KV cache: greedy, temperature sampling, beam search.

The search loops are model-agnostic: they drive a `step_fn(tokens [N], cache)
-> (logits [N, V], cache)` that feeds one token per sequence and returns the
next-token logits, inside `jax.lax.while_loop`, so they jit once per shape.
`t5_step_fn` binds that interface to the `T5` module (encoder run once, prompt
included); `generate` picks the algorithm.

Conventions (T5): decoding starts from token 0, stops per sequence at EOS
(id 1), and positions after EOS are 0 (padding). `max_decode_length` counts
generated tokens, EOS included.
"""
from typing import Any, Callable, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Cache = Any
StepFn = Callable[[Array, Cache], Tuple[Array, Cache]]

EOS_ID = 1
# Log-probability of impossible hypotheses: finite so arithmetic on it stays NaN-free.
NEG_INF = -1.0e7


def brevity_penalty(alpha: float, length: Array) -> Array:
  """GNMT length normalisation `((5 + length) / 6) ** alpha` (T5X's beam-search default)."""
  return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def _write_at(tokens: Array, index: Array, values: Array) -> Array:
  """`tokens[..., index] = values` for a traced `index` (tokens `[..., T]`, values `[...]`)."""
  at_index = jnp.arange(tokens.shape[-1]) == index
  return jnp.where(at_index, values[..., None], tokens)


def sample_decode(step_fn: StepFn, cache: Cache, batch_size: int, max_decode_length: int, *,
                  temperature: Union[float, Array] = 0.0, topk: Union[int, Array] = 0,
                  rng: Optional[Array] = None, eos_id: int = EOS_ID) -> Tuple[Array, Array]:
  """Greedy (`temperature` the Python number 0) or temperature/top-k sampling.

  Args:
    step_fn: one decoding step, see the module docstring.
    cache: the decoding cache for `batch_size` sequences.
    batch_size: B.
    max_decode_length: T, the most tokens generated per sequence.
    temperature: 0 takes the argmax; otherwise sample from softmax(logits / t).
      May be a traced scalar (then it samples), so one compiled program
      serves every temperature.
    topk: if > 0, sample only among the `topk` most likely tokens (ties at
      the k-th value included). May be a traced scalar.
    rng: PRNG key, required when sampling.
    eos_id: the token that ends a sequence.

  Returns:
    (tokens `[B, T]` int32, 0 after EOS; log_likelihood `[B]`, the sum of the
    model's (untempered) log-probabilities of the generated tokens incl. EOS).
  """
  greedy = isinstance(temperature, (int, float)) and temperature == 0
  if not greedy and rng is None:
    raise ValueError("sampling (temperature > 0) needs an rng")
  if rng is None:
    rng = jax.random.PRNGKey(0)  # unused by greedy decoding; keeps the loop state uniform
  filter_topk = not (isinstance(topk, int) and topk == 0)

  def cond(state):
    i, _, _, done, _, _, _ = state
    return (i < max_decode_length) & ~jnp.all(done)

  def body(state):
    i, last, tokens, done, log_likelihood, cache, rng = state
    logits, cache = step_fn(last, cache)
    logits = logits.astype(jnp.float32)
    if greedy:
      next_tokens = jnp.argmax(logits, axis=-1)
    else:
      rng, key = jax.random.split(rng)
      scaled = logits / temperature
      if filter_topk:
        # A sort rather than lax.top_k, so k may be traced.
        descending = -jnp.sort(-scaled, axis=-1)
        kth_index = jnp.clip(topk - 1, 0, scaled.shape[-1] - 1)
        kth_best = jax.lax.dynamic_slice_in_dim(descending, kth_index, 1, axis=-1)
        scaled = jnp.where((topk > 0) & (scaled < kth_best), -jnp.inf, scaled)
      next_tokens = jax.random.categorical(key, scaled, axis=-1)
    next_tokens = jnp.where(done, 0, next_tokens).astype(jnp.int32)
    token_ll = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                   next_tokens[:, None], axis=-1)[:, 0]
    log_likelihood = log_likelihood + jnp.where(done, 0.0, token_ll)
    tokens = _write_at(tokens, i, next_tokens)
    done = done | (next_tokens == eos_id)
    return i + 1, next_tokens, tokens, done, log_likelihood, cache, rng

  state = (jnp.array(0, jnp.int32), jnp.zeros((batch_size,), jnp.int32),
           jnp.zeros((batch_size, max_decode_length), jnp.int32), jnp.zeros((batch_size,), bool),
           jnp.zeros((batch_size,), jnp.float32), cache, rng)
  _, _, tokens, _, log_likelihood, _, _ = jax.lax.while_loop(cond, body, state)
  return tokens, log_likelihood


def _gather_beams(x: Array, beam_indices: Array) -> Array:
  """x `[B, K, ...]`, beam_indices `[B, K']` -> `[B, K', ...]`."""
  return jnp.take_along_axis(x, beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2)),
                             axis=1)


def _gather_cache(cache: Cache, flat_indices: Array) -> Cache:
  """Reorders the per-sequence cache entries along the batch axis.

  Keys/values are `[B*K, T, H, D]`; the decode position and key positions are
  shared by all sequences (ndim 0 and 1) and stay as they are.
  """
  return jax.tree_util.tree_map(
      lambda leaf: jnp.take(leaf, flat_indices, axis=0) if leaf.ndim >= 2 else leaf, cache)


def beam_search(step_fn: StepFn, cache: Cache, batch_size: int, beam_size: int,
                max_decode_length: int, *, alpha: float = 0.6,
                eos_id: int = EOS_ID) -> Tuple[Array, Array]:
  """Beam search with length normalisation, T5X-style.

  Hypotheses are ranked by `log p(y) / brevity_penalty(alpha, len(y))` with
  `len(y)` counting EOS. At each step the `2K` best extensions of the live
  beams are split into finished (ending in EOS) and live ones, so K live beams
  always remain. The search stops when no live beam can still beat the worst
  kept finished hypothesis (sound for `alpha >= 0`, since log-probabilities
  only fall and the penalty only grows) or at `max_decode_length`. A row with
  no finished hypothesis returns its live beams, scored at the maximum length.
  With `beam_size=1` and `alpha=0` this is exactly greedy decoding.

  Args:
    step_fn: one decoding step over `B*K` sequences (row `b*K + k` is beam k of
      example b).
    cache: the decoding cache for `B*K` sequences.
    batch_size: B.
    beam_size: K.
    max_decode_length: T.
    alpha: length-penalty exponent; 0 ranks by raw log-probability.
    eos_id: the token that ends a sequence.

  Returns:
    (tokens `[B, K, T]` int32, 0 after EOS; scores `[B, K]`), best first. When
    fewer than K hypotheses finished, the empty slots score `NEG_INF`.
  """
  k = beam_size
  max_penalty = brevity_penalty(alpha, max_decode_length)
  offsets = (jnp.arange(batch_size) * k)[:, None]

  def cond(state):
    i, _, _, live_logprobs, _, finished_scores, finished_flags, _ = state
    best_live = live_logprobs[:, 0] / max_penalty
    worst_finished = jnp.min(jnp.where(finished_flags, finished_scores, NEG_INF), axis=1)
    can_improve = jnp.any(best_live > worst_finished)
    return (i < max_decode_length) & can_improve

  def body(state):
    (i, last, live_tokens, live_logprobs, finished_tokens, finished_scores, finished_flags,
     cache) = state
    logits, cache = step_fn(last.reshape(-1), cache)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    vocab_size = log_probs.shape[-1]
    # 2K extensions: even if K of them end in EOS, K remain to stay live.
    num_candidates = min(2 * k, k * vocab_size)
    candidates = (live_logprobs[:, :, None] + log_probs.reshape(batch_size, k, vocab_size))
    top_logprobs, top_index = jax.lax.top_k(candidates.reshape(batch_size, -1), num_candidates)
    source_beam = top_index // vocab_size  # [B, 2K]
    new_token = (top_index % vocab_size).astype(jnp.int32)
    sequences = _write_at(_gather_beams(live_tokens, source_beam), i, new_token)
    ends = new_token == eos_id

    # Live: the K best extensions that do not end here.
    live_logprobs, pick = jax.lax.top_k(jnp.where(ends, NEG_INF, top_logprobs), k)
    live_tokens = _gather_beams(sequences, pick)
    last = jnp.take_along_axis(new_token, pick, axis=1)
    parent = jnp.take_along_axis(source_beam, pick, axis=1)
    cache = _gather_cache(cache, (offsets + parent).reshape(-1))

    # Finished: merge the newly ended hypotheses into the K best so far.
    # Extensions of never-started beams (log-prob near NEG_INF) are not real hypotheses.
    ended = ends & (top_logprobs > NEG_INF / 2)
    new_scores = jnp.where(ended, top_logprobs / brevity_penalty(alpha, i + 1), NEG_INF)
    all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
    all_flags = jnp.concatenate([finished_flags, ended], axis=1)
    all_tokens = jnp.concatenate([finished_tokens, sequences], axis=1)
    finished_scores, keep = jax.lax.top_k(jnp.where(all_flags, all_scores, NEG_INF), k)
    finished_flags = jnp.take_along_axis(all_flags, keep, axis=1)
    finished_tokens = _gather_beams(all_tokens, keep)
    return (i + 1, last, live_tokens, live_logprobs, finished_tokens, finished_scores,
            finished_flags, cache)

  # Only beam 0 is live at the start, so the first step does not pick K copies of one token.
  initial_logprobs = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch_size, 1))
  tokens0 = jnp.zeros((batch_size, k, max_decode_length), jnp.int32)
  state = (jnp.array(0, jnp.int32), jnp.zeros((batch_size, k), jnp.int32), tokens0,
           initial_logprobs, tokens0, jnp.full((batch_size, k), NEG_INF, jnp.float32),
           jnp.zeros((batch_size, k), bool), cache)
  state = jax.lax.while_loop(cond, body, state)
  _, _, live_tokens, live_logprobs, finished_tokens, finished_scores, finished_flags, _ = state
  none_finished = ~jnp.any(finished_flags, axis=1)  # [B]
  tokens = jnp.where(none_finished[:, None, None], live_tokens, finished_tokens)
  scores = jnp.where(none_finished[:, None], live_logprobs / max_penalty, finished_scores)
  return tokens, scores


def t5_step_fn(model, params: Any, encoder_input_tokens: Array, max_decode_length: int,
               copies: int = 1) -> Tuple[StepFn, Cache]:
  """Binds the `T5` module to the step interface.

  Runs the encoder once (the prompt module, if any, included), repeats each
  example's encoding `copies` times (rows `b*copies + c`, for beams), and
  sizes a fresh KV cache for `max_decode_length` decoder positions.

  Args:
    model: a `prompt_tuning.models.t5.T5`.
    params: its parameter tree (what sits under `'params'`).
    encoder_input_tokens: `[B, L]` int tokens, 0 = padding.
    max_decode_length: T.
    copies: sequences decoded per example.

  Returns:
    (step_fn, cache) for `B * copies` sequences.
  """
  # Full variable dicts (e.g. with XPrompt's `prompt_masks`) pass through.
  variables = dict(params) if "params" in params else {"params": params}
  encoded, valid = model.apply(variables, encoder_input_tokens, method="encode")
  if copies > 1:
    encoded = jnp.repeat(encoded, copies, axis=0)
    valid = jnp.repeat(valid, copies, axis=0)
  # A decode-mode call on a full-length dummy target creates the cache variables
  # (zeros plus position bookkeeping); its logits are discarded.
  dummy = jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)
  _, created = model.apply(variables, encoded, valid, dummy, decode=True,
                             method="decode", mutable=["cache"])

  def step_fn(tokens: Array, cache: Cache) -> Tuple[Array, Cache]:
    logits, updated = model.apply({**variables, "cache": cache}, encoded, valid,
                                  tokens[:, None], decode=True, method="decode",
                                  mutable=["cache"])
    return logits[:, 0], updated["cache"]

  return step_fn, created["cache"]


def generate(model, params: Any, encoder_input_tokens: Array, *, max_decode_length: int,
             beam_size: int = 1, alpha: float = 0.6, temperature: Union[float, Array] = 0.0,
             topk: Union[int, Array] = 0, rng: Optional[Array] = None,
             eos_id: int = EOS_ID) -> Tuple[Array, Array]:
  """Decodes a batch with the T5 module: greedy, sampling or beam search.

  `beam_size > 1` runs beam search (and requires `temperature == 0`);
  otherwise `temperature` selects greedy (Python 0) or sampling (> 0 or a
  traced scalar; needs `rng`), see `sample_decode`.

  Returns:
    (tokens `[B, T]`, 0 after EOS; log_likelihood `[B]`, the model's
    log-probability of each returned sequence incl. EOS).
  """
  batch_size = encoder_input_tokens.shape[0]
  if beam_size > 1:
    if not (isinstance(temperature, (int, float)) and temperature == 0):
      raise ValueError("beam search is deterministic; use temperature 0 with beam_size > 1")
    step_fn, cache = t5_step_fn(model, params, encoder_input_tokens, max_decode_length, beam_size)
    tokens, scores = beam_search(step_fn, cache, batch_size, beam_size, max_decode_length,
                                 alpha=alpha, eos_id=eos_id)
    best = tokens[:, 0]
    # Undo the length normalisation to report a plain log-likelihood.
    ends = best == eos_id
    length = jnp.where(jnp.any(ends, axis=1), jnp.argmax(ends, axis=1) + 1, max_decode_length)
    return best, scores[:, 0] * brevity_penalty(alpha, length)
  step_fn, cache = t5_step_fn(model, params, encoder_input_tokens, max_decode_length)
  return sample_decode(step_fn, cache, batch_size, max_decode_length, temperature=temperature,
                       topk=topk, rng=rng, eos_id=eos_id)


def sequence_lengths(tokens: np.ndarray, eos_id: int = EOS_ID) -> np.ndarray:
  """`[..., T]` decoded tokens -> `[...]` lengths up to and including the first EOS."""
  ends = tokens == eos_id
  return np.where(ends.any(-1), ends.argmax(-1) + 1, tokens.shape[-1])

