"""seqio postprocessors: decoded text -> what the task's metrics compare.

seqio calls `fn(text, example=ex, is_target=...)` for both the gold target
(with its preprocessed example as numpy values) and each prediction; targets
may carry extra fields from the example (question ids, answers, labels).
"""
from typing import Any, Callable, Mapping, Optional

import numpy as np

Postprocessor = Callable[..., Any]


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def label(output: str, example: Optional[Mapping] = None, is_target: bool = False) -> str:
  """Classification: the label string, surrounding whitespace removed."""
  del example, is_target
  return _text(output).strip()


def to_float(output: str, example: Optional[Mapping] = None, is_target: bool = False,
             default: float = -1.0) -> float:
  """Regression (STS-B): the number, or `default` when it does not parse."""
  del example, is_target
  try:
    return float(_text(output))
  except ValueError:
    return default


def multirc(output: str, example: Optional[Mapping] = None, is_target: bool = False):
  """MultiRC targets carry their question id for per-question exact match."""
  value = label(output)
  if not is_target:
    return value
  group = (int(example["group_paragraph"]), int(example["group_question"]))
  return {"group": group, "value": value}


def wsc(output: str, example: Optional[Mapping] = None, is_target: bool = False):
  """WSC targets carry the candidate referent and whether it is correct."""
  value = _text(output).strip()
  if not is_target:
    return value
  return {"referent": value, "label": int(example["label"])}


def answers(output: str, example: Optional[Mapping] = None, is_target: bool = False):
  """QA (ReCoRD, NQ-Open): targets are all gold answers of the example."""
  if not is_target:
    return _text(output).strip()
  return [_text(a) for a in np.atleast_1d(example["answers"])]


def text(output: str, example: Optional[Mapping] = None, is_target: bool = False) -> str:
  """Free text (summaries): unchanged apart from surrounding whitespace."""
  del example, is_target
  return _text(output).strip()


def rank(base: Postprocessor) -> Postprocessor:
  """Rank-classification targets: the candidate label plus the example id
  (`idx`), whether it is the gold label (`is_correct`) and the base task's
  postprocessed target, for `metrics.rank_classification`."""

  def fn(output: str, example: Optional[Mapping] = None, is_target: bool = False):
    if not is_target:
      return base(output, example=example, is_target=False)
    return {"idx": int(example["idx"]), "is_correct": bool(example["is_correct"]),
            "label": label(output), "target": base(output, example=example, is_target=True)}

  return fn
