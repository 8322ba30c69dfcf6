"""Benchmark metrics as pure functions of Python/numpy values.

Every function takes `(targets, predictions)` (or `(targets, scores)`) lists,
as seqio's metric functions do, and returns `{name: value}` with values in
percent (0-100), the way GLUE/SuperGLUE leaderboards and T5 report them.

Classification predictions are label strings; a prediction outside the label
set ("invalid", e.g. a decoded "maybe") is simply wrong: it never matches the
target and, for F1/MCC, counts as the opposite of the target class.
"""
import collections
import re
import string
from typing import Any, Callable, Dict, Hashable, List, Mapping, Sequence

import numpy as np

Metrics = Dict[str, float]


def _percent(x: float) -> float:
  return float(100.0 * x)


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> Metrics:
  """Fraction of predictions equal to their target."""
  _check_lengths(targets, predictions)
  hits = [t == p for t, p in zip(targets, predictions)]
  return {"accuracy": _percent(np.mean(hits)) if hits else 0.0}


def _binary(targets, predictions, labels):
  """Boolean arrays (target is positive, prediction is positive) for
  `labels = (negative, positive)`; a prediction that is neither label is
  flipped relative to its target so that it counts as an error."""
  negative, positive = labels
  t = np.array([x == positive for x in targets], bool)
  p = np.array([x == positive for x in predictions], bool)
  valid = np.array([x in (negative, positive) for x in predictions], bool)
  return t, np.where(valid, p, ~t)


def f1(targets: Sequence[str], predictions: Sequence[str], labels: Sequence[str]) -> Metrics:
  """Binary F1 of the positive class, `labels = (negative, positive)`."""
  _check_lengths(targets, predictions)
  t, p = _binary(targets, predictions, labels)
  return {"f1": _percent(_f1_from_counts(np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)))}


def _f1_from_counts(tp: float, fp: float, fn: float) -> float:
  denominator = 2 * tp + fp + fn
  return float(2 * tp / denominator) if denominator else 0.0


def macro_f1(targets: Sequence[str], predictions: Sequence[str],
             labels: Sequence[str]) -> Metrics:
  """Unweighted mean of each class's one-vs-rest F1, over the `labels` that
  occur among the targets or predictions (as scikit-learn's macro average)."""
  _check_lengths(targets, predictions)
  scores = []
  for label in labels:
    t = np.array([x == label for x in targets], bool)
    p = np.array([x == label for x in predictions], bool)
    if t.any() or p.any():
      scores.append(_f1_from_counts(np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)))
  return {"macro_f1": _percent(np.mean(scores)) if scores else 0.0}


def matthews_corr(targets: Sequence[str], predictions: Sequence[str],
                  labels: Sequence[str]) -> Metrics:
  """Matthews correlation of a binary task, `labels = (negative, positive)`
  (0 when undefined)."""
  _check_lengths(targets, predictions)
  t, p = _binary(targets, predictions, labels)
  tp, tn = float(np.sum(t & p)), float(np.sum(~t & ~p))
  fp, fn = float(np.sum(~t & p)), float(np.sum(t & ~p))
  denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return {"matthews_corr": _percent((tp * tn - fp * fn) / denominator) if denominator else 0.0}


def pearson_spearman(targets: Sequence[float], predictions: Sequence[float]) -> Metrics:
  """Pearson and Spearman correlation (STS-B); 0 when a side is constant."""
  _check_lengths(targets, predictions)
  import scipy.stats  # pylint: disable=g-import-not-at-top  # slow import (~2 s): only when used
  t = np.asarray(targets, np.float64)
  p = np.asarray(predictions, np.float64)
  if len(t) < 2 or np.std(t) == 0 or np.std(p) == 0:
    return {"pearson_corr": 0.0, "spearman_corr": 0.0}
  return {"pearson_corr": _percent(scipy.stats.pearsonr(t, p)[0]),
          "spearman_corr": _percent(scipy.stats.spearmanr(t, p)[0])}


# --- SQuAD-style answer matching (ReCoRD, NQ-Open) ---------------------------

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
  """Lowercase, drop punctuation and the articles a/an/the, squeeze spaces."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  t, p = normalize_answer(target).split(), normalize_answer(prediction).split()
  common = sum((collections.Counter(t) & collections.Counter(p)).values())
  if not t or not p:
    return float(t == p)
  if common == 0:
    return 0.0
  precision, recall = common / len(p), common / len(t)
  return 2 * precision * recall / (precision + recall)


def _exact(target: str, prediction: str) -> float:
  return float(normalize_answer(target) == normalize_answer(prediction))


def max_over_answers_em_f1(targets: Sequence[Sequence[str]],
                           predictions: Sequence[str]) -> Metrics:
  """ReCoRD/SQuAD EM and token F1, each the max over an example's answers.

  Examples without any gold answer (unlabeled test data) are skipped.
  """
  _check_lengths(targets, predictions)
  em, f1s = [], []
  for answers, prediction in zip(targets, predictions):
    if len(answers) == 0:
      continue
    em.append(max(_exact(a, prediction) for a in answers))
    f1s.append(max(_token_f1(a, prediction) for a in answers))
  if not em:
    return {"em": 0.0, "f1": 0.0}
  return {"em": _percent(np.mean(em)), "f1": _percent(np.mean(f1s))}


def max_over_answers_em(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> Metrics:
  """NQ-Open exact match: normalized prediction equals any normalized answer."""
  return {"em": max_over_answers_em_f1(targets, predictions)["em"]}


# --- MultiRC --------------------------------------------------------------------

def multirc(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str],
            labels: Sequence[str] = ("False", "True")) -> Metrics:
  """MultiRC: F1 over all answer options (F1a) and per-question exact match.

  Args:
    targets: one dict per answer option with `value` (the gold label string)
      and `group` (a hashable question id, e.g. `(paragraph_idx, question_idx)`).
    predictions: the predicted label string of each answer option.
    labels: `(negative, positive)`; positive marks a correct answer option.

  Returns:
    `f1a`: binary F1 of the positive label over all options; `em`: the fraction of
    questions whose options are all predicted correctly.
  """
  _check_lengths(targets, predictions)
  values = [t["value"] for t in targets]
  groups: Dict[Hashable, List[bool]] = collections.defaultdict(list)
  for target, prediction in zip(targets, predictions):
    groups[target["group"]].append(target["value"] == prediction)
  em = np.mean([all(hits) for hits in groups.values()]) if groups else 0.0
  return {"f1a": f1(values, predictions, labels)["f1"], "em": _percent(em)}


# --- WSC (generative referent) ------------------------------------------------

_DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "his", "her",
                "its", "their", "our", "my", "your"}


def _content_words(text: str) -> set:
  words = normalize_answer(text).split()
  return {w for w in words if w not in _DETERMINERS}


def referent_matches(prediction: str, referent: str) -> bool:
  """True when the predicted noun phrase names the candidate referent: after
  dropping punctuation and determiners, one word set contains the other."""
  p, r = _content_words(prediction), _content_words(referent)
  return bool(p) and bool(r) and (p <= r or r <= p)


def wsc_accuracy(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> Metrics:
  """WSC accuracy: does the predicted referent match the candidate exactly
  when the candidate is the pronoun's true referent (`label` 1)?

  Args:
    targets: dicts with `referent` (the candidate span) and `label` (0/1).
    predictions: predicted noun phrases.
  """
  _check_lengths(targets, predictions)
  hits = [referent_matches(p, t["referent"]) == bool(t["label"])
          for t, p in zip(targets, predictions)]
  return {"accuracy": _percent(np.mean(hits)) if hits else 0.0}


# --- Rank classification ------------------------------------------------------

def rank_choices(targets: Sequence[Mapping[str, Any]], scores: Sequence[float]):
  """Groups per-candidate scores by example and picks the best candidate.

  Args:
    targets: one dict per (example, candidate) with `idx` (the example id),
      `is_correct` (bool) and `target` (the candidate's postprocessed target).
    scores: the model's log-likelihood of each candidate.

  Returns:
    `(gold, chosen)`: per example (in order of first appearance) the target of
    its correct candidate and of its highest-scoring candidate. Examples with no
    correct candidate (unlabeled data) are dropped.
  """
  _check_lengths(targets, scores)
  by_example: Dict[Any, list] = {}
  for target, score in zip(targets, scores):
    by_example.setdefault(target["idx"], []).append((float(score), target))
  gold, chosen = [], []
  for candidates in by_example.values():
    correct = [t for _, t in candidates if t["is_correct"]]
    if not correct:
      continue
    best = max(range(len(candidates)), key=lambda i: candidates[i][0])
    gold.append(correct[0]["target"])
    chosen.append(candidates[best][1]["label"])
  return gold, chosen


def rank_classification(metric_fns: Sequence[Callable[..., Metrics]],
                        prediction_postprocess: Callable[[str], Any] = lambda x: x):
  """A `(targets, scores)` metric: the argmax candidate label of each example
  is the prediction, scored by the task's ordinary `(targets, predictions)`
  metrics."""

  def metric(targets, scores):
    gold, chosen = rank_choices(targets, scores)
    predictions = [prediction_postprocess(c) for c in chosen]
    result: Metrics = {}
    for fn in metric_fns:
      result.update(fn(gold, predictions))
    return result

  return metric


def _check_lengths(targets, predictions):
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


# --- Summarization --------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> Metrics:
  """Mean ROUGE-1/2/L/Lsum F-measure (Porter stemming); `rougeLsum` treats
  newlines as sentence boundaries."""
  _check_lengths(targets, predictions)
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  totals = {name: [] for name in ROUGE_TYPES}
  for target, prediction in zip(targets, predictions):
    scores = scorer.score(target, prediction)
    for name in ROUGE_TYPES:
      totals[name].append(scores[name].fmeasure)
  return {name: _percent(np.mean(v)) if v else 0.0 for name, v in totals.items()}


# --- Benchmark score ------------------------------------------------------------

def benchmark_average(task_metrics: Mapping[str, Mapping[str, float]]) -> float:
  """The GLUE/SuperGLUE-style overall score of a mixture's evaluation.

  Args:
    task_metrics: `{task name: {metric name: value}}`, e.g. what
      `seqio.Evaluator.evaluate` returns for a mixture.

  Returns:
    The mean over tasks of each task's mean metric (tasks reporting two
    metrics, like CB's accuracy and macro-F1, count once).
  """
  per_task = [float(np.mean([float(v) for v in m.values()])) for m in task_metrics.values() if m]
  if not per_task:
    raise ValueError("no task metrics to average")
  return float(np.mean(per_task))
