"""The tasks under seqio.Evaluator, with stand-in model functions.

This pins the contract the trainer relies on: `_rank` tasks need only a
`score_fn` returning one log-likelihood per (example, label) row; the other
tasks need only a `predict_fn` returning token ids.
"""
import pytest
import seqio

from prompt_tuning.tasks.testing import byte_vocabulary, mock_tfds_rows

LENGTHS = {"inputs": 96, "targets": 24}
CB = [{"premise": f"Premise {i}.", "hypothesis": f"Hypothesis {i}.", "label": label, "idx": i}
      for i, label in enumerate(["entailment", "contradiction", "neutral"])]


def _evaluator(name: str, split: str = "validation") -> seqio.Evaluator:
  return seqio.Evaluator(name, feature_converter=seqio.EncDecFeatureConverter(pack=False),
                         eval_split=split, sequence_length=LENGTHS, async_compute_metrics=False)


def _targets_text(vocab, features) -> str:
  return vocab.decode(features["decoder_target_tokens"].tolist())


def test_rank_task_scores_every_label_and_predicts_the_argmax():
  with byte_vocabulary() as vocab, mock_tfds_rows({"super_glue/cb": CB}):
    evaluator = _evaluator("super_glue_cb_rank")
    seen = []

    def score_fn(ds):
      # Elements are (index, model features) of single (example, label) rows.
      out = []
      for index, features in ds.as_numpy_iterator():
        label = _targets_text(vocab, features)
        seen.append(label)
        out.append((index, 0.0 if label == "neutral" else -5.0))  # always prefers neutral
      return out

    metrics, _ = evaluator.evaluate(compute_metrics=True, score_fn=score_fn)
  assert sorted(seen) == sorted(["entailment", "contradiction", "neutral"] * 3)
  result = metrics.result()["super_glue_cb_rank"]
  # Predictions neutral x3 vs gold (entailment, contradiction, neutral):
  # accuracy 1/3; F1 entailment 0, contradiction 0, neutral 2*1/(2*1+2+0) = 0.5.
  assert result["accuracy"] == pytest.approx(100 / 3)
  assert result["macro_f1"] == pytest.approx(100 * 0.5 / 3)


def test_predict_task_groups_multirc_answers_by_question():
  rows = [{"paragraph": "P.", "question": f"Q{q}?", "answer": f"A{a}", "label": label,
           "idx": {"paragraph": 0, "question": q, "answer": a}}
          for q, a, label in [(0, 0, "True"), (0, 1, "False"), (1, 2, "True")]]
  with byte_vocabulary() as vocab, mock_tfds_rows({"super_glue/multirc": rows}):
    evaluator = _evaluator("super_glue_multirc")

    def predict_fn(ds):
      return [(index, vocab.encode("True")) for index, _ in ds.as_numpy_iterator()]

    metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)
  result = metrics.result()["super_glue_multirc"]
  # Question 0 has a wrong answer, question 1 is right -> EM 50; tp=2 fp=1 -> F1a 0.8.
  assert result == {"f1a": pytest.approx(80.0), "em": pytest.approx(50.0)}


def test_predict_task_record_takes_max_over_gold_answers():
  rows = [{"passage": "P.", "query": "Q.", "entities": ["Obama", "Paris"],
           "answers": ["Barack Obama", "Obama"], "idx": {"passage": 0, "query": 0}}]
  with byte_vocabulary() as vocab, mock_tfds_rows({"super_glue/record": rows}):
    evaluator = _evaluator("super_glue_record")
    metrics, _ = evaluator.evaluate(
        compute_metrics=True,
        predict_fn=lambda ds: [(i, vocab.encode("obama")) for i, _ in ds.as_numpy_iterator()])
  assert metrics.result()["super_glue_record"] == {"em": 100.0, "f1": 100.0}
