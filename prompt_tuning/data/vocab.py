"""The T5 SentencePiece vocabulary, loaded lazily.

`get_vocabulary()` is what model code calls; `DEFERRED_VOCABULARY` is what task
registrations use. The deferred one resolves `get_vocabulary()` on first use,
so registering tasks never opens the SentencePiece file, and a gin binding of
`get_vocabulary.path` made after `import prompt_tuning.tasks` still applies.
"""
import functools
import os
from typing import Optional

import gin
import seqio

from prompt_tuning.errors import UserError

VOCAB_ENV = "PROMPT_TUNING_VOCAB"
T5_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
EXTRA_IDS = 100


def default_vocab_path() -> str:
  """`$PROMPT_TUNING_VOCAB` if set, else the public T5 vocabulary on GCS."""
  return os.environ.get(VOCAB_ENV) or T5_VOCAB_PATH


class _SentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio's vocabulary, whose model file failing to load is one line naming the way out.

  seqio reads the file on first use (encode, decode, ids), often deep inside a
  data pipeline; without network access the default `gs://` file otherwise
  ends in a long TensorFlow traceback.
  """

  def _model_context(self):
    _check_reachable(self.sentencepiece_model_file)
    try:
      return super()._model_context()
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (tf.errors.*, OSError, sentencepiece)
      path = self.sentencepiece_model_file
      lines = [l.strip() for l in str(e).splitlines() if l.strip()]
      why = (lines[0] if lines else type(e).__name__)[:200]
      hint = " (no network access to gs://?)" if path.startswith("gs://") else ""
      raise UserError(f"cannot read the SentencePiece vocabulary {path}{hint}: {why}; set "
                      f"${VOCAB_ENV} to a local sentencepiece.model (T5's: {T5_VOCAB_PATH}) "
                      "or bind get_vocabulary.path") from None


def _check_reachable(path: str) -> None:
  """A gs:// vocabulary without network fails in seconds, not after minutes of retries."""
  from prompt_tuning import fs  # pylint: disable=g-import-not-at-top
  fs.check_reachable(path, f"set ${VOCAB_ENV} to a local copy of it (gsutil cp {path} .) or bind "
                     "get_vocabulary.path")


@functools.lru_cache(maxsize=8)
def _load(path: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
  # seqio reads the model file on first encode/decode, not here.
  return _SentencePieceVocabulary(path, extra_ids=extra_ids)


@gin.configurable
def get_vocabulary(path: Optional[str] = None,
                   extra_ids: int = EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """The (cached) SentencePiece vocabulary at `path`.

  Args:
    path: a SentencePiece model file (local or `gs://`). Default:
      `$PROMPT_TUNING_VOCAB`, else T5's `cc_all.32000.100extra` model.
    extra_ids: sentinel ids appended after the pieces (T5: 100, so
      vocab_size is 32100).
  """
  return _load(path or default_vocab_path(), extra_ids)


def check_vocabulary(vocabulary: seqio.Vocabulary) -> None:
  """Reads a SentencePiece vocabulary's model file now, or raises a UserError saying how
  its path was chosen ($PROMPT_TUNING_VOCAB, the gs:// default, get_vocabulary.path)."""
  if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return
  _check_reachable(vocabulary.sentencepiece_model_file)
  try:
    vocabulary.tokenizer  # pylint: disable=pointless-statement  (reads and parses the file)
  except Exception as e:  # pylint: disable=broad-except  (tf.errors.*, OSError, RuntimeError)
    path = vocabulary.sentencepiece_model_file
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if os.environ.get(VOCAB_ENV) == path:
      source, way_out = f"${VOCAB_ENV}", f"point ${VOCAB_ENV} at a SentencePiece model file"
    elif path == T5_VOCAB_PATH and not os.environ.get(VOCAB_ENV):
      source, way_out = "the default", (f"set ${VOCAB_ENV} to a local copy of it (machines "
                                        "without network cannot read gs://)")
    else:
      source, way_out = "get_vocabulary.path", "bind get_vocabulary.path to a SentencePiece file"
    raise UserError(f"cannot read the SentencePiece vocabulary {path} ({source}): {first}; "
                    f"{way_out}") from None


def check_vocabularies(provider: seqio.DatasetProviderBase) -> None:
  """`check_vocabulary` of every task's features (the tasks of a mixture included).

  Called before datasets are built: inside a tf.data pipeline the failure
  would surface as TensorFlow's multi-line "in user code" error instead.
  """
  for task in seqio.get_subtasks(provider):
    for feature in task.output_features.values():
      vocabulary = feature.vocabulary
      if isinstance(vocabulary, DeferredVocabulary):
        vocabulary = vocabulary.resolved
      check_vocabulary(vocabulary)


class DeferredVocabulary(seqio.Vocabulary):
  """Delegates every call to `get_vocabulary()`, resolved at call time."""

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def resolved(self) -> seqio.Vocabulary:
    return get_vocabulary()

  # Public API: forward to the resolved vocabulary.
  @property
  def bos_id(self):
    return self.resolved.bos_id

  @property
  def eos_id(self):
    return self.resolved.eos_id

  @property
  def pad_id(self):
    return self.resolved.pad_id

  @property
  def unk_id(self):
    return self.resolved.unk_id

  @property
  def extra_ids(self):
    return self.resolved.extra_ids

  @property
  def vocab_size(self):
    return self.resolved.vocab_size

  @property
  def _base_vocab_size(self):
    return self.resolved._base_vocab_size  # pylint: disable=protected-access

  def _encode(self, s):
    return self.resolved.encode(s)

  def encode(self, s):
    return self.resolved.encode(s)

  def _decode(self, ids):
    return self.resolved.decode(ids)

  def decode(self, ids):
    return self.resolved.decode(ids)

  def _encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def _decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  def decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  def __getattr__(self, name):
    # Only reached for attributes not defined above (e.g. `tokenizer`).
    if name.startswith("__"):
      raise AttributeError(name)
    return getattr(self.resolved, name)

  def __eq__(self, other):
    return isinstance(other, DeferredVocabulary) or other == self.resolved

  def __hash__(self):
    return hash(DeferredVocabulary)

  def __repr__(self):
    return "DeferredVocabulary(get_vocabulary())"


DEFERRED_VOCABULARY = DeferredVocabulary()


def output_features(vocabulary: Optional[seqio.Vocabulary] = None) -> dict:
  """`inputs` and `targets` features with EOS appended, as T5 tasks use."""
  vocabulary = vocabulary or DEFERRED_VOCABULARY
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }
