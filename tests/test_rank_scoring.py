"""One-pass rank classification (each input encoded once) scores every row as a full
model pass per (input, candidate) row does, for any number of candidates and with a
prompt ensemble."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning.models import losses
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.ensemble import PromptEnsemble
from prompt_tuning.prompts.prompt import Prompt
from prompt_tuning.train import rank_scoring
from prompt_tuning.train.evaluation import EvalModelFns
from prompt_tuning.train.partitioning import Partitioner, make_mesh

CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
INPUTS, TARGETS = 10, 6


class _Rows:
  """What seqio hands `score_fn`: an enumerated dataset of model features."""

  def __init__(self, rows):
    self.rows = rows

  def as_numpy_iterator(self):
    return iter(self.rows)


def _rows(classes_per_example, seed=0):
  """Rank-classification rows: each example's candidates consecutive, same inputs."""
  rng = np.random.default_rng(seed)
  rows = []
  for classes in classes_per_example:
    n_in = rng.integers(3, INPUTS + 1)
    enc = np.zeros(INPUTS, np.int32)
    enc[:n_in] = rng.integers(2, CONFIG.vocab_size, n_in)
    for c in range(classes):
      # The last position is padding in every row; the first candidate is the longest.
      n_t = TARGETS - 1 if c == 0 else rng.integers(1, TARGETS - 1)
      tgt = np.zeros(TARGETS, np.int32)
      tgt[:n_t] = rng.integers(2, CONFIG.vocab_size, n_t)
      rows.append((len(rows), {
          "encoder_input_tokens": enc, "decoder_target_tokens": tgt,
          "decoder_input_tokens": np.concatenate([[0], tgt[:-1]]).astype(np.int32),
          "decoder_loss_weights": (tgt > 0).astype(np.int32)}))
  return rows


def _fns(model):
  rows = _rows([1])
  variables = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0),
                                                rows[0][1]["encoder_input_tokens"][None],
                                                rows[0][1]["decoder_input_tokens"][None]))
  partitioner = Partitioner(make_mesh(devices=jax.devices()[:1]))
  shardings = jax.tree_util.tree_map(lambda _: partitioner.replicated, variables)
  return EvalModelFns(model, partitioner, variables, shardings, batch_size=2), variables


def _per_row_scores(model, variables, rows, copies=1):
  """Today's T5X way: a full forward pass per row (repeated per prompt), one row at a time
  (one compile for every dataset)."""
  score = _per_row_score_fn(model)
  scores = [score(variables, *(np.repeat(f[k][None], copies, axis=0) for k in KEYS))
            for _, f in rows]
  return np.asarray(scores).mean(axis=1)


KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
        "decoder_loss_weights")
_SCORE_FNS = {}


def _per_row_score_fn(model):
  if id(model) not in _SCORE_FNS:
    _SCORE_FNS[id(model)] = jax.jit(lambda variables, enc, dec_in, tgt, weights: (
        losses.sequence_log_likelihood(model.apply(variables, enc, dec_in), tgt, weights)))
  return _SCORE_FNS[id(model)]


@pytest.fixture(scope="module")
def single_prompt():
  model = T5(CONFIG, prompt=Prompt(length=3, initializer=initializers.uniform(0.5)))
  return (model,) + _fns(model)


@pytest.mark.parametrize("classes", [[2] * 5, [3] * 3, [5] * 3, [2, 5, 3, 1]])
def test_one_pass_scores_equal_a_pass_per_row(single_prompt, classes):
  model, fns, variables = single_prompt
  rows = _rows(classes, seed=len(classes))
  got = dict(fns.score_fn(_Rows(rows)))
  assert sorted(got) == list(range(len(rows)))
  want = _per_row_scores(model, variables, rows)
  np.testing.assert_allclose([got[i] for i in range(len(rows))], want, rtol=1e-5, atol=1e-5)


def test_one_pass_scores_of_a_prompt_ensemble(tmp_path):
  rng = np.random.default_rng(1)
  files = []
  for n in range(3):
    np.save(tmp_path / f"p{n}.npy", rng.normal(size=(3, CONFIG.emb_dim)).astype(np.float32))
    files.append(str(tmp_path / f"p{n}.npy"))
  model = T5(CONFIG, prompt=PromptEnsemble(prompt_files=files))
  fns, variables = _fns(model)
  assert fns.copies == 3
  rows = _rows([3, 3, 3])
  got = dict(fns.score_fn(_Rows(rows)))
  want = _per_row_scores(model, variables, rows, copies=3)
  np.testing.assert_allclose([got[i] for i in range(len(rows))], want, rtol=1e-5, atol=1e-5)


def test_groups_are_runs_of_equal_inputs_and_targets_are_cut_after_the_last_weight():
  rows = _rows([2, 3])
  indices, batch, n = next(rank_scoring.candidate_batches(iter(rows), 4))
  assert indices == [[0, 1], [2, 3, 4]] and n == 2
  assert batch["encoder_input_tokens"].shape == (4, INPUTS)
  assert batch["decoder_target_tokens"].shape == (4, 3, TARGETS - 1)
  assert not batch["decoder_loss_weights"][0, 2].any() and not batch["decoder_loss_weights"][2:].any()
