"""Greedy, sampling and beam-search decoding against teacher-forced recomputation."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import decoding
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.inference import InferenceModel, shift_right
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts.prompt import Prompt

VOCAB = 7
EOS = decoding.EOS_ID


def _config(num_layers=1):
  return T5Config(vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=num_layers, num_decoder_layers=num_layers,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16)


def _init(model, seed=0, eos_boost=0.0):
  """Random parameters, drawn in numpy (compiling `model.init` is slow on CPU).

  `eos_boost` raises EOS's logit so sequences end at varied lengths.
  """
  tokens = jnp.ones((1, 4), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)["params"])
  rng = np.random.default_rng(seed)
  scale = lambda path, shape: (1.0 if len(shape) == 1 or "embedding" in str(path)
                               else 1.0 / np.sqrt(shape[0]))
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.normal(size=s.shape) * scale(path, s.shape)).astype(np.float32), shapes)
  params["decoder"]["logits_dense"]["kernel"][:, EOS] *= 1.0 + eos_boost
  return params


# Rows of different lengths (0 = padding) so masking matters.
INPUTS = jnp.array([[3, 4, 5, 6, 2, 1],
                    [2, 6, 1, 0, 0, 0],
                    [5, 5, 5, 1, 0, 0],
                    [4, 3, 1, 0, 0, 0]], jnp.int32)


@pytest.fixture(scope="module")
def tiny():
  model = T5(_config())
  return model, _init(model, eos_boost=1.5)


@pytest.fixture(scope="module")
def runner(tiny):
  return InferenceModel(*tiny)


@jax.jit
def _teacher_forced_log_probs(params, inputs, targets):
  logits = T5(_config()).apply({"params": params}, inputs, shift_right(targets))
  return jax.nn.log_softmax(logits, axis=-1)


def test_kv_cache_logits_equal_full_recompute():
  # Two layers (one cache each) and a soft prompt lengthening the encoder input.
  model = T5(_config(num_layers=2), prompt=Prompt(length=3))
  params = _init(model, seed=1)
  targets = jax.random.randint(jax.random.PRNGKey(2), (INPUTS.shape[0], 5), 0, VOCAB)
  full = jax.jit(model.apply)({"params": params}, INPUTS, shift_right(targets))

  @jax.jit
  def step(params, cache, tokens):
    step_fn, _ = decoding.t5_step_fn(model, params, INPUTS, max_decode_length=5)
    return step_fn(tokens, cache)

  cache = jax.jit(lambda p: decoding.t5_step_fn(model, p, INPUTS, max_decode_length=5)[1])(params)
  decoder_inputs = shift_right(targets)
  for t in range(5):  # one token per call, as in decoding
    logits, cache = step(params, cache, decoder_inputs[:, t])
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5)


def test_greedy_equals_argmax_over_teacher_forcing(tiny, runner):
  _, params = tiny
  length = 6
  tokens, log_likelihood = runner.generate(np.asarray(INPUTS), max_decode_length=length)
  for row in range(INPUTS.shape[0]):
    prefix = []
    expected_ll = 0.0
    while len(prefix) < length and (not prefix or prefix[-1] != EOS):
      # Recompute from the whole prefix each step: no cache involved. Later
      # (zero) positions cannot affect position t under causal attention.
      targets = jnp.array([prefix + [0] * (length - len(prefix))], jnp.int32)
      log_probs = _teacher_forced_log_probs(params, INPUTS[row:row + 1], targets)[0, len(prefix)]
      prefix.append(int(jnp.argmax(log_probs)))
      expected_ll += float(log_probs[prefix[-1]])
    expected = prefix + [0] * (length - len(prefix))
    assert tokens[row].tolist() == expected
    np.testing.assert_allclose(log_likelihood[row], expected_ll, rtol=1e-5)
  # The boosted EOS makes some, but not all, rows stop early: both paths are covered.
  lengths = decoding.sequence_lengths(tokens)
  assert (lengths < length).any()


def test_beam_size_one_without_length_penalty_equals_greedy(tiny, runner):
  model, params = tiny
  greedy, greedy_ll = runner.generate(np.asarray(INPUTS), max_decode_length=6)

  @jax.jit
  def beam_of_one(params, inputs):
    step_fn, cache = decoding.t5_step_fn(model, params, inputs, 6)
    return decoding.beam_search(step_fn, cache, inputs.shape[0], 1, 6, alpha=0.0)

  beams, scores = beam_of_one(params, INPUTS)
  np.testing.assert_array_equal(beams[:, 0], greedy)
  np.testing.assert_allclose(scores[:, 0], greedy_ll, rtol=1e-5)


def test_sampling_at_vanishing_temperature_or_top1_equals_greedy(runner):
  greedy, _ = runner.generate(np.asarray(INPUTS), max_decode_length=6)
  for temperature, topk in [(1e-6, 0), (1.0, 1)]:
    sampled, _ = runner.generate(np.asarray(INPUTS), max_decode_length=6,
                                 temperature=temperature, topk=topk, rng=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(sampled, greedy)


def test_sampling_draws_only_among_topk_and_varies_with_seed(tiny, runner):
  _, params = tiny
  inputs = np.asarray(INPUTS)  # the shapes of the other tests: no new compilation
  draws = [runner.generate(inputs, max_decode_length=6, temperature=2.0, topk=2,
                           rng=jax.random.PRNGKey(seed))[0] for seed in range(2)]
  assert not np.array_equal(draws[0], draws[1])
  tokens = draws[0]
  log_probs = _teacher_forced_log_probs(params, inputs, jnp.asarray(tokens))
  rank = jnp.sum(log_probs > jnp.take_along_axis(log_probs, tokens[..., None], -1), axis=-1)
  generated = jnp.arange(tokens.shape[1])[None] < decoding.sequence_lengths(tokens)[:, None]
  assert bool(jnp.all(jnp.where(generated, rank < 2, True)))


def _finished_hypotheses(max_length):
  """Every sequence that ends with EOS within `max_length` tokens."""
  others = [t for t in range(VOCAB) if t != EOS]
  for n in range(max_length):
    for prefix in itertools.product(others, repeat=n):
      yield list(prefix) + [EOS]


def test_exhaustive_beam_search_finds_the_best_hypotheses(tiny, runner):
  """With enough beams to keep every prefix, beam search equals brute-force search."""
  model, params = tiny
  max_length = 3
  beam_size = VOCAB * (VOCAB - 1) ** (max_length - 1) // 2  # 2K covers all extensions
  inputs = INPUTS[:2]

  @jax.jit
  def search(params, inputs, alpha):
    step_fn, cache = decoding.t5_step_fn(model, params, inputs, max_length, copies=beam_size)
    return decoding.beam_search(step_fn, cache, inputs.shape[0], beam_size, max_length,
                                alpha=alpha)

  hypotheses = list(_finished_hypotheses(max_length))
  targets = np.zeros((len(hypotheses), max_length), np.int32)
  for i, h in enumerate(hypotheses):
    targets[i, :len(h)] = h
  lengths = decoding.sequence_lengths(targets)
  weights = np.arange(max_length)[None] < lengths[:, None]
  # Greedy over 6 steps (already compiled) agrees with greedy over 3 on the first 3.
  greedy, greedy_ll = runner.generate(np.asarray(INPUTS), max_decode_length=6)
  for alpha, row in itertools.product([0.0, 0.6], range(inputs.shape[0])):
    beams, scores = search(params, inputs, alpha)
    repeated = np.repeat(np.asarray(inputs[row:row + 1]), len(hypotheses), axis=0)
    log_likelihood = runner.score(repeated, targets, weights)
    brute = np.asarray(log_likelihood) / np.asarray(decoding.brevity_penalty(alpha, lengths))
    order = np.argsort(-brute)
    found = len(hypotheses)
    np.testing.assert_allclose(scores[row, :found], brute[order], rtol=1e-5)
    np.testing.assert_array_equal(beams[row, 0], targets[order[0]])
    greedy_length = decoding.sequence_lengths(np.asarray(greedy[row]))
    if greedy_length <= max_length and greedy[row, greedy_length - 1] == EOS:
      greedy_score = greedy_ll[row] / decoding.brevity_penalty(alpha, greedy_length)
      assert scores[row, 0] >= greedy_score - 1e-6


def test_beam_search_log_likelihood_matches_teacher_forcing(tiny):
  model, params = tiny
  runner = InferenceModel(model, params)
  tokens, log_likelihood = runner.generate(np.asarray(INPUTS), max_decode_length=6, beam_size=3)
  weights = np.arange(6)[None] < decoding.sequence_lengths(tokens)[:, None]
  np.testing.assert_allclose(runner.score(np.asarray(INPUTS), tokens, weights), log_likelihood,
                             rtol=1e-5)
  # Everything after the first EOS is padding.
  assert np.all(np.where(np.arange(6)[None] >= decoding.sequence_lengths(tokens)[:, None],
                         tokens == 0, True))
