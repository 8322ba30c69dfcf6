"""JSON-lines examples for the `score` and `generate` commands.

Each line is an object such as `{"inputs": "...", "targets": "..."}`. This
module reads and validates such files (errors name the file and line),
tokenizes text with a SeqIO SentencePiece vocabulary exactly as a T5 task's
output features would (EOS appended, like `seqio.preprocessors.append_eos`),
and pads token lists into fixed-shape arrays.
"""
import json
import os
import sys
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning.errors import UserError

# SeqIO/T5 default: 100 sentinel ids appended to the 32,000 SentencePiece pieces.
DEFAULT_EXTRA_IDS = 100


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def objects(path: str, expected: str) -> Iterator[Tuple[int, Dict[str, Any]]]:
  """(line number, JSON object) of each non-blank line of a JSONL file.

  Every reader of a JSONL file goes through here, so each bad line is one
  UserError naming the file and the line (and the field, for text that is not
  text), never a decoder's traceback.

  Args:
    path: a local file.
    expected: what each line should hold, for the messages, e.g. `{"inputs", "targets"}`.
  """
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      where = f"{path} line {number}"
      try:
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a leading BOM is fine
      except UnicodeDecodeError as e:
        raise _not_utf8(where, raw, e) from None
      if not line.strip():
        continue
      try:
        value = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON ({e.msg} at column {e.colno}); each line "
                        f"must be one JSON object {expected}") from None
      if not isinstance(value, dict):
        raise UserError(f"{where} is a JSON {_JSON_TYPES.get(type(value), 'value')}, not an object "
                        f"{expected}")
      if "\\u" in line:  # only \u escapes can make a lone surrogate
        _check_text(value, where)
      yield number, value


def _not_utf8(where: str, raw: bytes, error: UnicodeDecodeError) -> UserError:
  return UserError(f"{where} is not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
                   f"{error.start + 1}); save the file as UTF-8")


def not_utf8_error(path: str) -> UserError:
  """The error naming the first line of `path` that is not UTF-8 text, for readers that decode
  in blocks and so cannot say which line failed (e.g. `csv` over a text file)."""
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        raw.decode("utf-8-sig" if number == 1 else "utf-8")
      except UnicodeDecodeError as e:
        return _not_utf8(f"{path} line {number}", raw, e)
  return UserError(f"{path} is not UTF-8 text; save the file as UTF-8")


def _check_text(value: Any, where: str, field: str = "") -> None:
  """Refuses a string holding a lone UTF-16 surrogate (JSON's `"\\ud800"`): no text encodes it."""
  if isinstance(value, str):
    try:
      value.encode("utf-8")
    except UnicodeEncodeError as e:
      raise UserError(f"{where}: field {field or '(the value)'!r} holds a lone UTF-16 surrogate "
                      f"(\\u{ord(value[e.start]):04x} at character {e.start + 1}), which is not "
                      "text; remove it or pair it") from None
  elif isinstance(value, dict):
    for key, item in value.items():
      _check_text(item, where, f"{field}.{key}" if field else str(key))
  elif isinstance(value, list):
    for index, item in enumerate(value):
      _check_text(item, where, f"{field}[{index}]")


def read_examples(path: str, required_keys: Sequence[str]) -> List[Dict[str, Any]]:
  """Reads a JSONL file of objects whose `required_keys` hold strings.

  Blank lines are skipped. Raises UserError naming the file and line number
  for unreadable files, bad JSON, non-objects, missing keys, non-string
  values or text with lone surrogates, and for a file without examples.
  """
  if not os.path.isfile(path):
    raise UserError(f"inputs file {path} does not exist; pass a JSONL file with one "
                    f"{{{', '.join(repr(k) for k in required_keys)}}} object per line")
  examples = []
  for number, example in objects(path, f"with keys {list(required_keys)}"):
    missing = [k for k in required_keys if k not in example]
    if missing:
      raise UserError(f"{path} line {number} lacks key(s) {missing}; "
                      f"each line needs {list(required_keys)}")
    for key in required_keys:
      if not isinstance(example[key], str):
        raise UserError(f"{path} line {number}: {key!r} must be a string, "
                        f"got {type(example[key]).__name__}")
    examples.append(example)
  if not examples:
    raise UserError(f"inputs file {path} has no examples; add one JSON object per line")
  return examples


def write_examples(records: Iterable[Dict[str, Any]], path: Optional[str]) -> None:
  """Writes one JSON object per line to `path`, or to stdout when `path` is None."""
  lines = (json.dumps(record, ensure_ascii=False) + "\n" for record in records)
  if path is None:
    for line in lines:
      sys.stdout.write(line)
    sys.stdout.flush()
    return
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UserError(f"output folder {parent} does not exist; create it or choose another --output")
  from prompt_tuning import fs  # pylint: disable=g-import-not-at-top
  # Atomic: a failed write (a full disk) leaves no half-written output that looks finished.
  fs.atomic_write(path, lambda f: f.writelines(line.encode("utf-8") for line in lines))


def load_vocabulary(path: str, extra_ids: int = DEFAULT_EXTRA_IDS):
  """A `seqio.SentencePieceVocabulary` for the SentencePiece model file at `path`."""
  if not os.path.isfile(path):
    raise UserError(f"vocabulary {path} does not exist; pass the SentencePiece model file, e.g. "
                    "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model copied locally")
  import seqio  # Imports TensorFlow: deferred so the CLI starts fast.
  vocab = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
  try:
    vocab.tokenizer  # pylint: disable=pointless-statement  (loads and validates the model)
  except Exception as e:  # sentencepiece raises RuntimeError/OSError with long messages
    raise UserError(f"vocabulary {path} is not a SentencePiece model "
                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
  return vocab


def tokenize(vocab, texts: Iterable[str], append_eos: bool = True) -> List[List[int]]:
  """Token ids of each text, with the vocabulary's EOS appended (as SeqIO's `append_eos`)."""
  tokens = [list(vocab.encode(text)) for text in texts]
  if append_eos:
    tokens = [t + [vocab.eos_id] for t in tokens]
  return tokens


def bucket_length(length: int, minimum: int = 8) -> int:
  """The smallest power of two >= `length` (and >= `minimum`).

  Padding to a few bucket sizes keeps the number of jit compilations
  logarithmic in the longest sequence.
  """
  bucket = minimum
  while bucket < length:
    bucket *= 2
  return bucket


def pad_sequences(sequences: Sequence[Sequence[int]], length: Optional[int] = None,
                  batch_size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Right-pads token lists with 0 into an array.

  Args:
    sequences: token lists.
    length: padded length; None pads to the longest sequence.
    batch_size: rows of the result; extra rows are all padding. None: one row
      per sequence.

  Returns:
    (tokens `[batch_size, length]` int32, lengths `[batch_size]` int32).
  """
  longest = max((len(s) for s in sequences), default=0)
  length = longest if length is None else length
  if longest > length:
    raise ValueError(f"a sequence of {longest} tokens does not fit the padded length {length}")
  batch_size = len(sequences) if batch_size is None else batch_size
  if len(sequences) > batch_size:
    raise ValueError(f"{len(sequences)} sequences do not fit a batch of {batch_size}")
  tokens = np.zeros((batch_size, length), np.int32)
  lengths = np.zeros((batch_size,), np.int32)
  for row, seq in enumerate(sequences):
    tokens[row, :len(seq)] = seq
    lengths[row] = len(seq)
  return tokens, lengths


def check_token_range(sequences: Iterable[Sequence[int]], vocab_size: int, vocab_path: str) -> None:
  """Raises UserError if any id is outside the model's embedding table."""
  largest = max((max(s) for s in sequences if len(s)), default=-1)
  if largest >= vocab_size:
    raise UserError(f"vocabulary {vocab_path} produced token id {largest}, but the model's "
                    f"vocab_size is {vocab_size}; use the vocabulary the checkpoint was "
                    "trained with")
