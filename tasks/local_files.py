"""Readers of the official SuperGLUE JSONL and GLUE TSV files.

For users who cannot reach TFDS's download hosts: unzip the official archives
under a data directory and every reader yields the same example dicts that
TFDS's `super_glue/*` and `glue/*` builders produce from those files (same
keys, label names, `-1` for unlabeled rows), so the task formats downstream
see identical input.

Layout under the data directory (the archives' own folder names):
  super_glue/{BoolQ,CB,COPA,MultiRC,ReCoRD,RTE,WiC,WSC}/{train,val,test}.jsonl
  super_glue/AX-b/AX-b.jsonl, super_glue/AX-g/AX-g.jsonl
  glue/{CoLA,SST-2,MRPC,QQP,STS-B,QNLI,RTE}/{train,dev,test}.tsv
  glue/MNLI/{train,dev_matched,dev_mismatched,test_matched,test_mismatched}.tsv
  rotten_tomatoes/{train,validation,test}.jsonl  (rows {"text", "label"})
"""
import csv
import dataclasses
import os
import sys
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

from prompt_tuning.data import jsonl
from prompt_tuning.errors import UserError

Row = Dict[str, Any]
# (line number in the file, row): every reader says where each row comes from, so a bad row
# is an error naming the file and the line.
NumberedRow = Tuple[int, Row]

SUPER_GLUE_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
GLUE_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
PLAIN_SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl",
                     "test": "test.jsonl"}


@dataclasses.dataclass(frozen=True)
class LocalFiles:
  """Where a task's official files live under the data directory and how to
  turn one file into TFDS-shaped rows.

  Attributes:
    folder: path relative to the data directory, e.g. `super_glue/CB`.
    files: canonical split -> file name inside `folder`.
    read: `(path, split) -> iterator of (line number, row)`; a row it cannot make is a
      UserError naming the file, the line and the field.
  """
  folder: str
  files: Mapping[str, str]
  read: Callable[[str, str], Iterator[NumberedRow]]

  def path(self, data_dir: str, split: str) -> str:
    return os.path.join(data_dir, self.folder, self.files[split])


# --- SuperGLUE ----------------------------------------------------------------

def _super_glue_label(config: str, label: Any) -> Any:
  if label is None:
    return -1
  if config == "copa":
    return "choice2" if label else "choice1"
  if isinstance(label, bool):
    return "True" if label else "False"
  return label


def _fix_wsc_spans(example: Row) -> Row:
  """TFDS's `wsc.fixed` repairs a few spans that are not substrings of the
  text; reuse its repair so both paths agree (identity if it moved)."""
  try:
    # pylint: disable-next=g-import-not-at-top
    from tensorflow_datasets.text import super_glue as tfds_super_glue
    return tfds_super_glue._fix_wst(example)  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return example


_SUPER_GLUE_FIELDS = {
    "boolq": ("question", "passage"),
    "cb": ("premise", "hypothesis"),
    "copa": ("premise", "choice1", "choice2", "question"),
    "rte": ("premise", "hypothesis"),
    "wic": ("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2"),
    "wsc": ("text", "span1_index", "span2_index", "span1_text", "span2_text"),
    "axb": ("sentence1", "sentence2"),
    "axg": ("premise", "hypothesis"),
}


def json_rows(path: str, convert: Callable[[Row], Iterable[Row]],
              expected: str) -> Iterator[NumberedRow]:
  """(line, row) of each row `convert` makes of each line's JSON object.

  A line that is not a JSON object of UTF-8 text, or that lacks a field
  `convert` reads, is a UserError naming the file, the line and the field.
  """
  for number, value in jsonl.objects(path, f"with fields {expected}"):
    try:
      for row in convert(value):
        yield number, row
    except KeyError as e:
      raise UserError(f"{path} line {number} has no field {e.args[0]!r}; each line needs "
                      f"{expected}") from None
    except (TypeError, AttributeError, IndexError) as e:
      raise UserError(f"{path} line {number} is not shaped as the official file is "
                      f"({type(e).__name__}: {e}); each line needs {expected}") from None


def _super_glue_row(config: str, row: Row) -> Iterator[Row]:
  if config == "multirc":
    yield from _multirc_rows(row)
  elif config == "record":
    yield from _record_rows(row)
  else:
    if config == "wsc":
      row = {**row, **row["target"]}
    example = {k: row[k] for k in _SUPER_GLUE_FIELDS[config]}
    if config == "wsc":
      example = _fix_wsc_spans(example)
    example["idx"] = row["idx"]
    example["label"] = _super_glue_label(config, row.get("label"))
    yield example


def _super_glue_expected(config: str) -> str:
  if config == "multirc":
    return "the official MultiRC fields (idx, passage with text and questions with answers)"
  if config == "record":
    return "the official ReCoRD fields (idx, passage with text and entities, qas)"
  fields = [*_SUPER_GLUE_FIELDS[config], "idx"]
  if config == "wsc":
    fields = ["text", "target (span1_index, span2_index, span1_text, span2_text)", "idx"]
  return f"{', '.join(fields)} (and label, except in test files)"


def super_glue_reader(config: str) -> Callable[[str, str], Iterator[NumberedRow]]:
  """(line, row) of one SuperGLUE JSONL file for TFDS config `config` (`wsc` means
  `wsc.fixed`)."""

  def read(path: str, split: str) -> Iterator[NumberedRow]:
    del split
    return json_rows(path, lambda row: _super_glue_row(config, row),
                     _super_glue_expected(config))

  return read


def _multirc_rows(row: Row) -> Iterator[Row]:
  passage = row["passage"]
  for question in passage["questions"]:
    for answer in question["answers"]:
      label = answer.get("label")
      yield {"paragraph": passage["text"], "question": question["question"],
             "answer": answer["text"],
             "label": -1 if label is None else ("True" if label else "False"),
             "idx": {"paragraph": row["idx"], "question": question["idx"],
                     "answer": answer["idx"]}}


def _record_rows(row: Row) -> Iterator[Row]:
  passage = row["passage"]
  text = passage["text"]
  # Entity offsets are inclusive at both ends.
  entities = sorted({text[e["start"]:e["end"] + 1] for e in passage["entities"]})
  for qa in row["qas"]:
    yield {"passage": text, "query": qa["query"], "entities": entities,
           "answers": sorted({a["text"] for a in qa.get("answers", [])}),
           "idx": {"passage": row["idx"], "query": qa["idx"]}}


def super_glue_files(config: str, folder: str) -> LocalFiles:
  if config in ("axb", "axg"):
    files = {"test": folder + ".jsonl"}
  else:
    files = SUPER_GLUE_FILES
  return LocalFiles(f"super_glue/{folder}", files, super_glue_reader(config))


# --- GLUE ---------------------------------------------------------------------

# TFDS config -> (text feature -> TSV column, label column, label classes or None).
_GLUE_COLUMNS = {
    "cola": ({"sentence": "sentence"}, "is_acceptable", ("unacceptable", "acceptable")),
    "sst2": ({"sentence": "sentence"}, "label", ("negative", "positive")),
    "mrpc": ({"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality",
             ("not_equivalent", "equivalent")),
    "qqp": ({"question1": "question1", "question2": "question2"}, "is_duplicate",
            ("not_duplicate", "duplicate")),
    "stsb": ({"sentence1": "sentence1", "sentence2": "sentence2"}, "score", None),
    "mnli": ({"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label",
             ("entailment", "neutral", "contradiction")),
    "qnli": ({"question": "question", "sentence": "sentence"}, "label",
             ("entailment", "not_entailment")),
    "rte": ({"sentence1": "sentence1", "sentence2": "sentence2"}, "label",
            ("entailment", "not_entailment")),
}


def _glue_label(config: str, raw: str, classes, where: str, column: str) -> Any:
  try:
    if config == "stsb":
      return float(raw)
    if classes and raw not in classes:
      return int(raw) if raw else None  # 0/1 columns; empty means a corrupt row
  except ValueError:
    expected = "a similarity score" if config == "stsb" else f"one of {', '.join(classes)} or an id"
    raise UserError(f"{where}: column {column!r} holds {raw[:40]!r}, not {expected}; fix the "
                    "row or restore the official file") from None
  return raw


def _tsv_rows(f, path: str, headerless: bool) -> Iterator[Tuple[int, Dict[str, Any]]]:
  """(line, {column: value}) of a TSV file (CoLA's headerless files: columns by position)."""
  reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
  header = None if headerless else next(reader, None)
  for fields in reader:
    if headerless:
      if len(fields) < 4:
        raise UserError(f"{path} line {reader.line_num} has {len(fields)} columns, not CoLA's 4 "
                        "(source, label, original label, sentence); restore the official file")
      yield reader.line_num, {"sentence": fields[3], "is_acceptable": fields[1]}
    else:
      yield reader.line_num, dict(zip(header, fields))


def _utf8_checked(rows: Iterator[Any], path: str) -> Iterator[Any]:
  """`rows`, with a decoding error (the file is decoded in blocks) named by its line."""
  try:
    yield from rows
  except UnicodeDecodeError:
    raise jsonl.not_utf8_error(path) from None


def glue_reader(config: str) -> Callable[[str, str], Iterator[NumberedRow]]:
  """(line, row) of one GLUE TSV file for TFDS config `config` (`mnli` for all MNLI
  files). Like TFDS: quoting off, CoLA's train/dev files have no header, rows
  with a missing field are skipped, `idx` is the row number."""
  text_columns, label_column, classes = _GLUE_COLUMNS[config]

  def read(path: str, split: str) -> Iterator[NumberedRow]:
    csv.field_size_limit(sys.maxsize)
    # utf-8-sig drops the byte-order mark some MRPC files start with.
    with open(path, encoding="utf-8-sig") as f:
      rows = _tsv_rows(f, path, headerless=config == "cola" and split != "test")
      for n, (line, row) in enumerate(_utf8_checked(rows, path)):
        example: Row = {k: row.get(col) for k, col in text_columns.items()}
        example["idx"] = n
        if label_column in row:
          raw = row[label_column]
          example["label"] = (None if raw is None else
                              _glue_label(config, raw, classes, f"{path} line {line}",
                                          label_column))
        else:
          example["label"] = -1.0 if config == "stsb" else -1
        if any(v is None for v in example.values()):
          continue
        yield line, example

  return read


def glue_files(config: str, folder: str, files: Optional[Mapping[str, str]] = None) -> LocalFiles:
  return LocalFiles(f"glue/{folder}", files or GLUE_FILES, glue_reader(config))


# --- Plain JSONL (datasets TFDS lacks) ----------------------------------------

def jsonl_reader(keys) -> Callable[[str, str], Iterator[NumberedRow]]:
  """(line, `{key: row[key]}`) of a JSONL file (e.g. a Hugging Face export)."""

  def read(path: str, split: str) -> Iterator[NumberedRow]:
    del split
    return json_rows(path, lambda row: [{k: row[k] for k in keys}], ", ".join(keys))

  return read
