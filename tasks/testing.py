"""Test helpers: serve fixed rows as TFDS data, swap in a byte vocabulary.

  with mock_tfds_rows({"super_glue/cb": [{"premise": ..., "hypothesis": ...,
                                          "label": "neutral", "idx": 0}]}):
    seqio.get_mixture_or_task("super_glue_cb").get_dataset(...)

Rows are what a TFDS builder's generator yields (label names or ids); every
split of the named dataset serves them. Datasets not named get TFDS's random
mock data. No network and no prepared TFDS data are needed.
"""
import contextlib
from typing import Dict, Iterator, Mapping, Sequence

import seqio
import tensorflow_datasets as tfds

from prompt_tuning.data import vocab
from prompt_tuning.tasks.sources import rows_dataset


def _builder_key(builder) -> str:
  config = builder.builder_config
  return f"{builder.name}/{config.name}" if config else builder.name


@contextlib.contextmanager
def mock_tfds_rows(rows_by_name: Dict[str, Sequence[Mapping]],
                   num_random_examples: int = 2) -> Iterator[None]:
  """Within the context, TFDS dataset `name[/config]` serves the given rows.

  Args:
    rows_by_name: e.g. `{"glue/rte": [...], "imdb_reviews": [...]}`; a config
      named `wsc.fixed` is keyed `super_glue/wsc.fixed`.
    num_random_examples: size of the random mock data of other datasets.
  """
  def as_dataset(builder, split=None, **kwargs):
    key = _builder_key(builder)
    if key in rows_by_name:
      return rows_dataset(builder.info.features, list(rows_by_name[key]))
    return random_as_dataset(builder, split=split, **kwargs)

  # The random generator of mock_data is only reachable through the context.
  with tfds.testing.mock_data(num_examples=num_random_examples):
    builder_cls = tfds.core.dataset_builder.FileReaderBuilder
    random_as_dataset = builder_cls._as_dataset  # pylint: disable=protected-access
  with tfds.testing.mock_data(num_examples=num_random_examples, as_dataset_fn=as_dataset):
    yield


@contextlib.contextmanager
def byte_vocabulary() -> Iterator[seqio.Vocabulary]:
  """Within the context, `get_vocabulary()` (and so every registered task)
  uses `seqio.ByteVocabulary`: no SentencePiece file needed, fast to build."""
  original = vocab.get_vocabulary
  byte_vocab = seqio.ByteVocabulary()
  vocab.get_vocabulary = lambda *args, **kwargs: byte_vocab
  try:
    yield byte_vocab
  finally:
    vocab.get_vocabulary = original
