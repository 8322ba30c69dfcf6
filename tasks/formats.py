"""Text-to-text formats: raw TFDS-shaped examples -> `inputs`/`targets` text.

Each `*_format(...)` returns a function `example -> dict` for `tf.data` map:
the T5 text-to-text layout (`name: value` pairs joined by spaces), with the
benchmark-name prefix only when one is given (the `_prefixed` tasks). Extra
keys a metric needs (question ids, gold answers, WSC labels) ride along and
are ignored by the model's feature converter.

Split-dependent steps (`*_train`, `rank_expand`) act on formatted examples.
The same functions run on TFDS data and on local official files, which is
what makes both paths give the same text.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

Example = Dict[str, tf.Tensor]
Formatter = Callable[[Example], Example]
UNKNOWN_LABEL = "<unk>"  # target of unlabeled (test) examples, as in T5


def _join(parts) -> tf.Tensor:
  return tf.strings.join(parts, separator=" ")


def _with_prefix(prefix: Optional[str], parts: list) -> tf.Tensor:
  return _join(([prefix] if prefix else []) + parts)


def label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """`label_names[label]`, or `<unk>` for the -1 label of unlabeled data."""
  label = tf.cast(label, tf.int64)
  name = tf.gather(tf.constant(list(label_names)), tf.maximum(label, 0))
  return tf.where(label < 0, tf.constant(UNKNOWN_LABEL), name)


def fields_format(fields: Sequence[Tuple[str, str]], label_names: Sequence[str],
                  prefix: Optional[str] = None) -> Formatter:
  """`[prefix] name1: value1 name2: value2 ...` -> label name.

  Args:
    fields: `(shown name, raw key)` pairs in display order.
    label_names: verbalizer of each class id.
    prefix: benchmark name to put first (the `_prefixed` tasks), or None.
  """

  def fn(x):
    parts = []
    for shown, key in fields:
      parts += [f"{shown}:", x[key]]
    return {"inputs": _with_prefix(prefix, parts), "targets": label_text(x["label"], label_names)}

  return fn


def multirc_format(label_names: Sequence[str], prefix: Optional[str] = None) -> Formatter:
  """MultiRC: one example per answer option; HTML markup removed from the
  paragraph; the question id (`group_paragraph`, `group_question`) is kept for
  per-question exact match."""
  base = fields_format([("question", "question"), ("answer", "answer"),
                        ("paragraph", "paragraph")], label_names, prefix)

  def fn(x):
    paragraph = tf.strings.regex_replace(x["paragraph"], "<br>", " ")
    paragraph = tf.strings.regex_replace(paragraph, "</?b>", "")
    out = base({**x, "paragraph": paragraph})
    out["group_paragraph"] = tf.cast(x["idx"]["paragraph"], tf.int64)
    out["group_question"] = tf.cast(x["idx"]["question"], tf.int64)
    return out

  return fn


def stsb_format(prefix: Optional[str] = None) -> Formatter:
  """STS-B: the similarity score rounded to the nearest 0.2, e.g. `3.8`."""

  def fn(x):
    score = tf.round(tf.cast(x["label"], tf.float32) * 5.0) / 5.0
    return {"inputs": _with_prefix(prefix, ["sentence1:", x["sentence1"],
                                            "sentence2:", x["sentence2"]]),
            "targets": tf.strings.as_string(score, precision=1)}

  return fn


def _mark_word(text: tf.Tensor, index: tf.Tensor, word: tf.Tensor) -> tf.Tensor:
  """Wraps `word` in asterisks where it starts the `index`-th space-separated
  token of `text`; returns `text` unchanged when it does not."""
  tokens = tf.strings.split(text, sep=" ")
  n = tf.size(tokens, out_type=tf.int32)
  index = tf.cast(index, tf.int32)
  safe = tf.clip_by_value(index, 0, tf.maximum(n - 1, 0))
  token = tf.gather(tokens, safe)
  length = tf.strings.length(word)
  found = tf.logical_and(tf.logical_and(index >= 0, index < n),
                         tf.logical_and(length > 0,
                                        tf.equal(tf.strings.substr(token, 0, length), word)))
  rest = tf.strings.substr(token, tf.minimum(length, tf.strings.length(token)), -1)
  marked = tf.strings.join(["*", word, "*", rest])
  tokens = tf.tensor_scatter_nd_update(tokens, [[safe]], [tf.where(found, marked, token)])
  return tf.strings.reduce_join(tokens, separator=" ")


def wsc_format(prefix: Optional[str] = None) -> Formatter:
  """WSC as referent generation (T5's "simple" WSC, used by Lester et al.):
  the pronoun is marked `*they*` and the target is the candidate noun phrase.
  `label` (1 when the candidate is the pronoun's referent) is kept for eval."""

  def fn(x):
    # Splitting on " " always yields at least one token, so indexing is safe.
    text = _mark_word(x["text"], x["span2_index"], x["span2_text"])
    return {"inputs": _with_prefix(prefix, ["text:", text]),
            "targets": x["span1_text"], "label": tf.cast(x["label"], tf.int64)}

  return fn


def wsc_train(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Train only on candidates that are the true referent (Lester et al.)."""
  return ds.filter(lambda x: tf.equal(x["label"], 1))


def record_format(prefix: Optional[str] = None) -> Formatter:
  """ReCoRD: `query: Q entities: E1, E2 passage: P` -> the first gold answer
  (all gold answers are kept in `answers` for max-over-answers EM/F1)."""

  def fn(x):
    passage = tf.strings.regex_replace(x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
    passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
    entities = tf.strings.reduce_join(x["entities"], separator=", ")
    answers = tf.reshape(x["answers"], [-1])
    target = tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant(UNKNOWN_LABEL))
    return {"inputs": _with_prefix(prefix, ["query:", x["query"], "entities:", entities,
                                            "passage:", passage]),
            "targets": target, "answers": answers}

  return fn


def answers_train(ds: tf.data.Dataset) -> tf.data.Dataset:
  """One training example per gold answer; unanswered examples are dropped."""

  def expand(x):
    answers = tf.data.Dataset.from_tensor_slices(x["answers"])
    return answers.map(lambda a: {**x, "targets": a, "answers": tf.reshape(a, [1])})

  return ds.flat_map(expand)


def question_answers_format(question_key: str = "question", answers_key: str = "answer",
                            prefix: Optional[str] = None) -> Formatter:
  """Closed-book QA (NQ-Open): `question: Q` -> first gold answer."""

  def fn(x):
    answers = tf.reshape(x[answers_key], [-1])
    target = tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant(UNKNOWN_LABEL))
    return {"inputs": _with_prefix(prefix, ["question:", x[question_key]]),
            "targets": target, "answers": answers}

  return fn


def summary_format(document_key: str, summary_key: str = "summary") -> Formatter:
  """Summarization: `summarize: DOCUMENT` -> summary."""

  def fn(x):
    return {"inputs": _join(["summarize:", x[document_key]]), "targets": x[summary_key]}

  return fn


def sentiment_format(label_names: Sequence[str], text_key: str = "text") -> Formatter:
  """Review sentiment as SST-2 is formatted: `sentence: TEXT` -> label; HTML
  line breaks (IMDB's `<br />`) become spaces."""

  def fn(x):
    text = tf.strings.regex_replace(x[text_key], r"(<br\s*/?>\s*)+", " ")
    return {"inputs": _join(["sentence:", text]), "targets": label_text(x["label"], label_names)}

  return fn


def rank_expand(ds: tf.data.Dataset, label_names: Sequence[str]) -> tf.data.Dataset:
  """One example per (example, label): `targets` is the label, `idx` the
  example's position in the split, `is_correct` whether it is the gold label.

  Scalar extra features are copied to every candidate.
  """
  names = tf.constant(list(label_names))
  n = len(label_names)

  def expand(i, x):
    out = {k: tf.fill([n], v) for k, v in x.items() if k != "targets" and v.shape.rank == 0}
    out.update(targets=names, idx=tf.fill([n], i),
               is_correct=tf.equal(names, x["targets"]))
    return tf.data.Dataset.from_tensor_slices(out)

  return ds.enumerate().flat_map(expand)
