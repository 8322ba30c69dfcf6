"""Each prompt initializer's defining property (Lester et al. section 3) and the placement."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from prompt_tuning.errors import UserError
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.prompt import place_prompt

TABLE = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
SHAPE = (6, 8)
RNG = jax.random.PRNGKey(3)


def test_uniform_is_the_reference_codes_range_by_default_and_the_papers_centered():
  """Flax's `uniform(0.5)` of the reference code draws from [0, 0.5); the paper's is
  [-0.5, 0.5]."""
  value = np.asarray(initializers.uniform(0.5)(RNG, (200, 8), TABLE))
  assert value.shape == (200, 8)
  assert value.min() >= 0.0 and value.max() < 0.5
  assert value.min() < 0.05 and value.max() > 0.45
  value = np.asarray(initializers.uniform(0.5, centered=True)(RNG, (200, 8), TABLE))
  assert value.min() >= -0.5 and value.max() <= 0.5
  assert value.min() < -0.45 and value.max() > 0.45


@pytest.mark.parametrize("scale", [0.0, -0.5, float("inf"), float("nan")])
def test_uniform_scale_must_be_a_positive_number(scale):
  with pytest.raises(UserError, match="uniform.scale must be a positive number"):
    initializers.uniform(scale)


def test_sampled_vocab_without_a_population_size_draws_from_the_whole_table():
  value = np.asarray(initializers.sampled_vocab(population_size=None, population_start=290)(
      RNG, (10, TABLE.shape[1]), TABLE))
  ids = {int(np.flatnonzero((TABLE == row).all(axis=1))[0]) for row in value}
  assert ids == set(range(290, 300))  # the table's last 10 rows, each once


def test_sampled_vocab_rows_are_distinct_rows_of_the_population():
  value = np.asarray(initializers.sampled_vocab(population_size=50, population_start=10)(
      RNG, SHAPE, TABLE))
  ids = [int(np.flatnonzero((TABLE == row).all(axis=1))[0]) for row in value]
  assert all(10 <= i < 60 for i in ids)
  assert len(set(ids)) == len(ids)


def test_class_labels_rows_are_averaged_label_piece_embeddings():
  vocab = seqio.ByteVocabulary()
  labels = ["yes", "no"]
  value = np.asarray(initializers.class_labels(labels, vocabulary=vocab,
                                               fallback=initializers.sampled_vocab(100))(
                                                   RNG, SHAPE, TABLE))
  for row, label in zip(value, labels):
    # A mean of a few f32 values: a few ulps of the table's scale (entries can cancel to ~0).
    np.testing.assert_allclose(row, TABLE[vocab.encode(label)].mean(axis=0), rtol=1e-6,
                               atol=1e-6 * float(np.abs(TABLE).max()))
  for row in value[len(labels):]:  # leftover rows come from the sampled-vocab fallback
    assert (TABLE[:100] == row).all(axis=1).any()


def test_class_labels_longer_than_the_prompt_is_a_user_error():
  init = initializers.class_labels(["a", "b", "c"], vocabulary=seqio.ByteVocabulary())
  with pytest.raises(UserError, match="do not fit a prompt of length 2"):
    init(RNG, (2, 8), TABLE)


def test_from_file_loads_exactly_and_names_both_shapes_on_mismatch(tmp_path):
  saved = np.arange(48, dtype=np.float32).reshape(SHAPE)
  np.save(tmp_path / "p.npy", saved)
  np.testing.assert_array_equal(initializers.from_file(str(tmp_path / "p.npy"))(RNG, SHAPE, TABLE),
                                saved)
  # Another length: PROMPT_LENGTH was set against the file's (prompts/from_file.gin reads it).
  with pytest.raises(UserError, match=r"PROMPT_LENGTH 5 disagrees with the 6 tokens of PROMPT_FILE"):
    initializers.from_file(str(tmp_path / "p.npy"))(RNG, (5, 8), TABLE)
  # Another width: another backbone.
  with pytest.raises(UserError, match=r"\(6, 8\).*\(6, 4\)"):
    initializers.from_file(str(tmp_path / "p.npy"))(RNG, (6, 4), TABLE)
  with pytest.raises(UserError, match="does not exist"):
    initializers.from_file(str(tmp_path / "missing.npy"))(RNG, SHAPE, TABLE)


def test_from_t5x_checkpoint_reads_the_named_variable(tmp_path):
  from prompt_tuning.io.t5x import save_t5x
  prompt = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
  save_t5x(str(tmp_path / "checkpoint_5"), {"encoder": {"prompt": {"prompt": {"prompt": prompt}}}})
  value = initializers.from_t5x_checkpoint(str(tmp_path / "checkpoint_5"),
                                           "encoder/prompt/prompt/prompt")(RNG, SHAPE, TABLE)
  np.testing.assert_array_equal(value, prompt)


def test_suffix_placement_puts_the_prompt_before_eos():
  tokens = jnp.array([[5, 6, 7, 1, 0, 0], [9, 1, 0, 0, 0, 0]])
  embedded = tokens[..., None].astype(jnp.float32)
  prompt = -jnp.arange(1, 3, dtype=jnp.float32)[:, None]
  placed, valid = place_prompt(prompt, tokens, embedded, tokens > 0, "suffix")
  assert placed[..., 0].tolist() == [[5, 6, 7, -1, -2, 1, 0, 0], [9, -1, -2, 1, 0, 0, 0, 0]]
  assert valid.sum(axis=1).tolist() == [6, 4]
  placed, valid = place_prompt(prompt, tokens, embedded, tokens > 0, "prefix")
  assert placed[0, :3, 0].tolist() == [-1, -2, 5] and valid.sum(axis=1).tolist() == [6, 4]
