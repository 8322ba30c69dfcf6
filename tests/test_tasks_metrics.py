"""Benchmark metrics against values computed by hand on tiny fixed inputs."""
import math

import pytest

from prompt_tuning.tasks import metrics

BIN = ("neg", "pos")


def test_accuracy():
  assert metrics.accuracy(["a", "b", "a", "c"], ["a", "b", "b", "x"]) == {"accuracy": 50.0}


def test_binary_f1_counts_invalid_predictions_as_errors():
  # targets:     pos pos neg neg pos
  # predictions: pos neg pos neg ???  (??? is invalid -> counted as neg, the opposite of pos)
  # tp=1, fp=1, fn=2 -> F1 = 2*1 / (2*1 + 1 + 2) = 0.4
  out = metrics.f1(["pos", "pos", "neg", "neg", "pos"], ["pos", "neg", "pos", "neg", "???"], BIN)
  assert out["f1"] == pytest.approx(40.0)
  # An invalid prediction on a negative target becomes a false positive: tp=0, fp=1 -> 0.
  assert metrics.f1(["neg"], ["maybe"], BIN)["f1"] == 0.0


def test_macro_f1_averages_present_classes():
  labels = ("entailment", "contradiction", "neutral")
  targets = ["entailment", "entailment", "contradiction", "neutral"]
  predictions = ["entailment", "contradiction", "contradiction", "entailment"]
  # entailment: tp1 fp1 fn1 -> 0.5; contradiction: tp1 fp1 fn0 -> 2/3; neutral: tp0 fn1 -> 0.
  expected = 100 * (0.5 + 2 / 3 + 0.0) / 3
  assert metrics.macro_f1(targets, predictions, labels)["macro_f1"] == pytest.approx(expected)


def test_matthews_corr():
  targets = ["pos", "pos", "pos", "neg", "neg"]
  predictions = ["pos", "pos", "neg", "neg", "pos"]
  tp, tn, fp, fn = 2, 1, 1, 1
  expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  assert metrics.matthews_corr(targets, predictions, BIN)["matthews_corr"] == pytest.approx(
      100 * expected)
  assert metrics.matthews_corr(["pos", "pos"], ["pos", "pos"], BIN)["matthews_corr"] == 0.0


def test_pearson_spearman():
  out = metrics.pearson_spearman([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
  # Pearson of centered (-1.5,-.5,.5,1.5)·(-1.5,.5,-.5,1.5) = 4 over 5 -> 0.8;
  # Spearman on ranks is the same here because values are ranks.
  assert out["pearson_corr"] == pytest.approx(80.0)
  assert out["spearman_corr"] == pytest.approx(80.0)
  assert metrics.pearson_spearman([1.0, 2.0], [3.0, 3.0]) == {"pearson_corr": 0.0,
                                                              "spearman_corr": 0.0}


def test_normalize_answer_is_squad_style():
  assert metrics.normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
  assert metrics.normalize_answer("an Apple a day") == "apple day"


def test_record_em_f1_take_max_over_answers():
  targets = [["Barack Obama", "Obama"], ["Paris"], ["New York City"], []]
  predictions = ["obama", "London", "New York", "ignored: no gold answers"]
  # ex1: EM 1 (matches "Obama"), F1 1. ex2: EM 0, F1 0.
  # ex3: EM 0; F1 with "new york city": common 2, P=2/2, R=2/3 -> 0.8. ex4 skipped.
  out = metrics.max_over_answers_em_f1(targets, predictions)
  assert out["em"] == pytest.approx(100 / 3)
  assert out["f1"] == pytest.approx(100 * (1 + 0 + 0.8) / 3)


def test_nq_open_em():
  out = metrics.max_over_answers_em([["William Shakespeare", "Shakespeare"], ["1492"]],
                                    ["shakespeare", "1493"])
  assert out == {"em": 50.0}


def test_multirc_f1a_over_answers_and_em_per_question():
  g1, g2 = (0, 0), (0, 1)
  targets = [{"group": g1, "value": "True"}, {"group": g1, "value": "False"},
             {"group": g2, "value": "True"}, {"group": g2, "value": "True"},
             {"group": (1, 0), "value": "False"}]
  predictions = ["True", "False", "True", "False", "False"]
  # Question g1 all right, g2 one wrong, (1, 0) right -> EM 2/3.
  # Over answers with positive "True": tp=2, fp=0, fn=1 -> F1a = 4/5.
  out = metrics.multirc(targets, predictions)
  assert out["em"] == pytest.approx(200 / 3)
  assert out["f1a"] == pytest.approx(80.0)


def test_wsc_accuracy_matches_referents():
  assert metrics.referent_matches("the city councilmen", "The city councilmen")
  assert metrics.referent_matches("councilmen", "The city councilmen")
  assert not metrics.referent_matches("the demonstrators", "The city councilmen")
  targets = [{"referent": "The city councilmen", "label": 1},  # true referent, predicted: hit
             {"referent": "the demonstrators", "label": 0},   # wrong candidate, not predicted: hit
             {"referent": "Pete", "label": 1}]                # true referent, missed: miss
  predictions = ["city councilmen", "the councilmen", "Mark"]
  assert metrics.wsc_accuracy(targets, predictions)["accuracy"] == pytest.approx(200 / 3)


def test_rank_classification_groups_candidates_and_reuses_metrics():
  def cand(idx, label, gold):
    return {"idx": idx, "label": label, "is_correct": label == gold, "target": label}

  targets = [cand(0, "neg", "pos"), cand(0, "pos", "pos"),
             cand(1, "neg", "neg"), cand(1, "pos", "neg"),
             cand(2, "neg", "pos"), cand(2, "pos", "pos")]
  scores = [-3.0, -1.0,   # picks pos, gold pos
            -0.5, -2.0,   # picks neg, gold neg
            -0.1, -0.2]   # picks neg, gold pos
  gold, chosen = metrics.rank_choices(targets, scores)
  assert gold == ["pos", "neg", "pos"] and chosen == ["pos", "neg", "neg"]
  metric = metrics.rank_classification([metrics.accuracy])
  assert metric(targets, scores) == {"accuracy": pytest.approx(200 / 3)}


def test_rank_classification_skips_unlabeled_examples():
  targets = [{"idx": 0, "label": "a", "is_correct": False, "target": "a"},
             {"idx": 0, "label": "b", "is_correct": False, "target": "b"}]
  assert metrics.rank_choices(targets, [0.0, 1.0]) == ([], [])


def test_rouge_perfect_and_partial():
  out = metrics.rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
  assert all(v == pytest.approx(100.0) for v in out.values())
  # unigrams: prediction "the cat" vs target "the cat sat": P=1, R=2/3 -> F=0.8.
  assert metrics.rouge(["the cat sat"], ["the cat"])["rouge1"] == pytest.approx(80.0)


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.accuracy(["a", "b"], ["a"])


def test_benchmark_average_counts_each_task_once():
  scores = {"super_glue_cb": {"accuracy": 90.0, "macro_f1": 70.0},
            "super_glue_rte": {"accuracy": 60.0}}
  assert metrics.benchmark_average(scores) == pytest.approx((80.0 + 60.0) / 2)
  with pytest.raises(ValueError):
    metrics.benchmark_average({})
