"""Prompt initializers (Lester et al. 2021, section 3), as gin-bindable factories.

Each factory returns `init(rng, shape [P, E], embedding_table [V, E]) -> [P, E]`.
Initializers that read saved values (`from_file`, `from_t5x_checkpoint`) carry
`loads_saved_values = True`: eval and infer refuse any other prompt source.
The embedding table is the real (frozen) one: the trainer creates the prompt
after the backbone is loaded, so vocabulary- and label-based initializers see
the pretrained embeddings.
"""
from typing import Callable, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import checks
from prompt_tuning.errors import UserError

Initializer = Callable[[jax.Array, tuple, jax.Array], jax.Array]


@gin.configurable
def uniform(scale: float = 0.5, centered: bool = False) -> Initializer:
  """Uniform in `[0, scale)`, what the reference code computes (Flax's
  `initializers.uniform(0.5)`); `centered=True`: `[-scale, scale)`, the paper's
  "random uniform in [-0.5, 0.5]" (Lester et al. 2021, section 3.2)."""
  checks.positive_number(scale, "uniform.scale", "--gin.uniform.scale=0.5")
  low = -scale if centered else 0.0

  def init(rng, shape, embedding_table):
    del embedding_table
    return jax.random.uniform(rng, shape, jnp.float32, low, scale)
  return init


@gin.configurable
def sampled_vocab(population_size: Optional[int] = 5000, population_start: int = 0) -> Initializer:
  """Rows drawn (without replacement where possible) from embeddings of ids
  `[population_start, population_start + population_size)`; None: to the table's end.

  SentencePiece ids are ordered by frequency, so the default population is
  the 5,000 most frequent pieces, as in Lester et al.
  """
  def init(rng, shape, embedding_table):
    rows = embedding_table.shape[0]
    stop = rows if population_size is None else min(population_start + population_size, rows)
    size = stop - population_start
    if size <= 0:
      raise UserError(f"sampled_vocab population [{population_start}, {stop}) is empty; "
                      f"the embedding table has {embedding_table.shape[0]} rows")
    ids = population_start + jax.random.choice(rng, size, (shape[0],), replace=shape[0] > size)
    return jnp.asarray(embedding_table)[ids].astype(jnp.float32)
  return init


@gin.configurable
def class_labels(labels: Sequence[str] = gin.REQUIRED, vocabulary=None,
                 fallback: Optional[Initializer] = None) -> Initializer:
  """Row i = mean embedding of label i's pieces; leftover rows from `fallback`.

  Args:
    labels: the verbalizers, e.g. `CLASS_LABELS = ['entailment', 'not_entailment']`.
    vocabulary: a seqio vocabulary (default: the project's T5 vocabulary).
    fallback: initializer of rows past the labels (default: `sampled_vocab()`).
  """
  if not labels:  # e.g. CLASS_LABELS = None from methods/infoprompt.gin, read after this file
    raise UserError("class-label initialization (prompts/from_class_labels.gin) needs the label "
                    "words: set CLASS_LABELS, e.g. --gin.CLASS_LABELS=\"['entailment', "
                    "'not_entailment']\"")
  fallback = fallback or sampled_vocab()

  def init(rng, shape, embedding_table):
    if len(labels) > shape[0]:
      raise UserError(f"{len(labels)} class labels do not fit a prompt of length {shape[0]}; "
                      "raise PROMPT_LENGTH or drop labels")
    vocab = vocabulary
    if vocab is None:
      from prompt_tuning.data.vocab import get_vocabulary
      vocab = get_vocabulary()
    table = jnp.asarray(embedding_table, jnp.float32)
    rows = []
    for label in labels:
      ids = vocab.encode(label)
      if not ids:
        raise UserError(f"class label {label!r} tokenizes to nothing; check CLASS_LABELS")
      rows.append(table[jnp.asarray(ids)].mean(axis=0))
    rest = fallback(rng, (shape[0] - len(labels), shape[1]), embedding_table)
    return jnp.concatenate([jnp.stack(rows), rest.astype(jnp.float32)], axis=0)
  return init


@gin.configurable
def from_file(path: str = gin.REQUIRED) -> Initializer:
  """The prompt saved at `path` (`PROMPT_FILE`): an exported `.npy`, or a Hugging Face
  PEFT prompt-tuning adapter folder or its `.safetensors` (`prompts.files.read_prompt`)."""
  def init(rng, shape, embedding_table):
    del rng, embedding_table
    from prompt_tuning.prompts.files import read_prompt
    value = read_prompt(path, "PROMPT_FILE")
    return _checked(value, shape, f"prompt file {path}")
  init.loads_saved_values = True  # eval/infer accept it as a trained prompt
  init.path = path  # eval names its summaries' step after a `step_N.npy` file
  return init


@gin.configurable
def from_t5x_checkpoint(path: str = gin.REQUIRED,
                        variable: str = "prompt/prompt") -> Initializer:
  """A variable (e.g. a prompt tuned with T5X) read from a T5X checkpoint folder."""
  def init(rng, shape, embedding_table):
    del rng, embedding_table
    from prompt_tuning.io.t5x import read_t5x_variable
    return _checked(read_t5x_variable(path, variable), shape, f"{path}:{variable}")
  init.loads_saved_values = True
  return init


def _checked(value, shape, what: str) -> jax.Array:
  value = np.asarray(value)
  if value.ndim == 3 and value.shape[0] == 1:  # T5X/flaxformer store [1, P, E] sometimes
    value = value[0]
  if tuple(value.shape) != tuple(shape):
    raise UserError(f"{what} has shape {tuple(value.shape)} but the prompt is {tuple(shape)}; "
                    "set PROMPT_LENGTH to match or use a matching backbone")
  return jnp.asarray(value, jnp.float32)
