"""Exact text of one example per task, and the split-dependent behaviours.

Reads only task sources (formatted text): no vocabulary file is needed.
"""
import pytest
import seqio

from prompt_tuning import tasks
from prompt_tuning.tasks.testing import mock_tfds_rows

WSC_TEXT = ("Mark told Pete many lies about himself, which Pete included in his book. "
            "He should have been more truthful.")

# One raw row per TFDS dataset, as its generator yields it.
ROWS = {
    "super_glue/boolq": [{"question": "is the sky blue", "passage": "The sky is blue.",
                          "label": "True", "idx": 0}],
    "super_glue/cb": [{"premise": "It rained.", "hypothesis": "The ground is wet.",
                       "label": "neutral", "idx": 0}],
    "super_glue/copa": [{"premise": "The man broke his toe.", "question": "cause",
                         "choice1": "He dropped a hammer on his foot.",
                         "choice2": "He got a hole in his sock.", "label": "choice1", "idx": 0}],
    "super_glue/multirc": [{"paragraph": "<b>Sent 1: </b>Tom ran.<br><b>Sent 2: </b>He won.",
                            "question": "Who won?", "answer": "Tom", "label": "True",
                            "idx": {"paragraph": 3, "question": 1, "answer": 0}}],
    "super_glue/record": [{"passage": "Paris is lovely.\n@highlight\nThe Eiffel Tower is tall",
                           "query": "@placeholder is in France.",
                           "entities": ["Eiffel Tower", "Paris"], "answers": ["Paris"],
                           "idx": {"passage": 0, "query": 0}}],
    "super_glue/rte": [{"premise": "A dog barks.", "hypothesis": "An animal makes noise.",
                        "label": "entailment", "idx": 0}],
    "super_glue/wic": [{"word": "bank", "sentence1": "He sat on the bank.",
                        "sentence2": "She went to the bank.", "start1": 14, "end1": 18,
                        "start2": 17, "end2": 21, "label": "False", "idx": 0}],
    "super_glue/wsc.fixed": [{"text": WSC_TEXT, "span1_index": 0, "span1_text": "Mark",
                              "span2_index": 13, "span2_text": "He", "label": "True", "idx": 0}],
    "super_glue/axb": [{"sentence1": "The cat sat.", "sentence2": "A cat sat.",
                        "label": "entailment", "idx": 0}],
    "super_glue/axg": [{"premise": "The nurse ate.", "hypothesis": "She ate.",
                        "label": "not_entailment", "idx": 0}],
    "glue/cola": [{"sentence": "The book was read.", "label": "acceptable", "idx": 0}],
    "glue/sst2": [{"sentence": "a charming journey", "label": "positive", "idx": 0}],
    "glue/mrpc": [{"sentence1": "He said hi.", "sentence2": "He greeted us.",
                   "label": "equivalent", "idx": 0}],
    "glue/qqp": [{"question1": "How to cook?", "question2": "How do I cook?",
                  "label": "duplicate", "idx": 0}],
    "glue/stsb": [{"sentence1": "A man plays a flute.", "sentence2": "A man is playing a flute.",
                   "label": 3.86, "idx": 0}],
    "glue/mnli": [{"premise": "He ran home.", "hypothesis": "He moved.",
                   "label": "contradiction", "idx": 0}],
    "glue/qnli": [{"question": "Where is Paris?", "sentence": "Paris is in France.",
                   "label": "entailment", "idx": 0}],
    "glue/rte": [{"sentence1": "A dog barks.", "sentence2": "An animal makes noise.",
                  "label": "not_entailment", "idx": 0}],
    "imdb_reviews/plain_text": [{"text": "Great movie!<br /><br />Loved it.", "label": "pos"}],
    "samsum": [{"id": "1", "dialogue": "Amanda: hi\nTom: hello", "summary": "They greet."}],
    "multi_news": [{"document": "Story one. ||||| Story two.", "summary": "Two stories."}],
    "natural_questions_open": [{"question": "who wrote hamlet",
                                "answer": ["William Shakespeare", "Shakespeare"]}],
}

EXPECTED = {
    "super_glue_boolq": ("passage: The sky is blue. question: is the sky blue", "True"),
    "super_glue_cb": ("hypothesis: The ground is wet. premise: It rained.", "neutral"),
    "super_glue_copa": ("choice1: He dropped a hammer on his foot. choice2: He got a hole in "
                        "his sock. premise: The man broke his toe. question: cause", "choice1"),
    "super_glue_multirc": ("question: Who won? answer: Tom paragraph: Sent 1: Tom ran. "
                           "Sent 2: He won.", "True"),
    "super_glue_record": ("query: @placeholder is in France. entities: Eiffel Tower, Paris "
                          "passage: Paris is lovely. The Eiffel Tower is tall", "Paris"),
    "super_glue_rte": ("hypothesis: An animal makes noise. premise: A dog barks.", "entailment"),
    "super_glue_wic": ("sentence1: He sat on the bank. sentence2: She went to the bank. "
                       "word: bank", "False"),
    "super_glue_wsc": ("text: Mark told Pete many lies about himself, which Pete included in "
                       "his book. *He* should have been more truthful.", "Mark"),
    "super_glue_axb": ("hypothesis: A cat sat. premise: The cat sat.", "entailment"),
    "super_glue_axg": ("hypothesis: She ate. premise: The nurse ate.", "not_entailment"),
    "glue_cola": ("sentence: The book was read.", "acceptable"),
    "glue_sst2": ("sentence: a charming journey", "positive"),
    "glue_mrpc": ("sentence1: He said hi. sentence2: He greeted us.", "equivalent"),
    "glue_qqp": ("question1: How to cook? question2: How do I cook?", "duplicate"),
    "glue_stsb": ("sentence1: A man plays a flute. sentence2: A man is playing a flute.", "3.8"),
    "glue_mnli": ("hypothesis: He moved. premise: He ran home.", "contradiction"),
    "glue_mnli_matched": ("hypothesis: He moved. premise: He ran home.", "contradiction"),
    "glue_mnli_mismatched": ("hypothesis: He moved. premise: He ran home.", "contradiction"),
    "glue_qnli": ("question: Where is Paris? sentence: Paris is in France.", "entailment"),
    "glue_rte": ("sentence1: A dog barks. sentence2: An animal makes noise.", "not_entailment"),
    "imdb": ("sentence: Great movie! Loved it.", "positive"),
    "samsum": ("summarize: Amanda: hi\nTom: hello", "They greet."),
    "multi_news": ("summarize: Story one. ||||| Story two.", "Two stories."),
    "nq_open": ("question: who wrote hamlet", "William Shakespeare"),
}

PREFIXES = {"super_glue_axb": "rte", "super_glue_axg": "rte", "glue_mnli_matched": "mnli",
            "glue_mnli_mismatched": "mnli"}


def _first(name: str, split: str = None) -> dict:
  source = seqio.get_mixture_or_task(name).source
  split = split or ("validation" if "validation" in source.splits else "test")
  ex = next(iter(source.get_dataset(split, shuffle=False)))
  return {k: v.numpy() for k, v in ex.items()}


def _all(name: str, split: str) -> list:
  ds = seqio.get_mixture_or_task(name).source.get_dataset(split, shuffle=False)
  return list(ds.as_numpy_iterator())


@pytest.fixture(scope="module")
def fixed_rows():
  with mock_tfds_rows(ROWS):
    yield


def test_every_plain_task_has_a_literal():
  plain = {n for n, info in tasks.TASKS.items() if info.variant == ""}
  assert plain - {"rotten_tomatoes"} == set(EXPECTED)  # rotten_tomatoes: test_tasks_local_files


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_format(fixed_rows, name):
  ex = _first(name)
  assert (ex["inputs"].decode(), ex["targets"].decode()) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if n + "_prefixed" in tasks.TASKS))
def test_prefixed_variant_adds_benchmark_name(fixed_rows, name):
  prefix = PREFIXES.get(name, name.split("_", 2)[-1] if name.startswith("super_glue") else
                        name.split("_", 1)[1])
  plain, prefixed = _first(name), _first(name + "_prefixed")
  assert prefixed["inputs"].decode() == f"{prefix} {plain['inputs'].decode()}"
  assert prefixed["targets"] == plain["targets"]


def test_rank_variant_expands_eval_examples_per_label(fixed_rows):
  rows = _all("super_glue_cb_rank", "validation")
  assert [r["targets"].decode() for r in rows] == ["entailment", "contradiction", "neutral"]
  assert [bool(r["is_correct"]) for r in rows] == [False, False, True]
  assert {int(r["idx"]) for r in rows} == {0}
  assert {r["inputs"].decode() for r in rows} == {EXPECTED["super_glue_cb"][0]}


def test_rank_variant_trains_like_the_plain_task(fixed_rows):
  rank, plain = _all("super_glue_cb_rank", "train"), _all("super_glue_cb", "train")
  assert [(r["inputs"], r["targets"]) for r in rank] == [(r["inputs"], r["targets"]) for r in plain]
  assert "is_correct" not in rank[0]


def test_multirc_keeps_question_id(fixed_rows):
  ex = _first("super_glue_multirc")
  assert (ex["group_paragraph"], ex["group_question"]) == (3, 1)
  rank = _all("super_glue_multirc_rank", "validation")
  assert [(r["group_paragraph"], r["group_question"]) for r in rank] == [(3, 1), (3, 1)]


def test_wsc_trains_on_true_referents_only():
  negative = dict(ROWS["super_glue/wsc.fixed"][0], span1_text="Pete", span1_index=2,
                  label="False", idx=1)
  with mock_tfds_rows({"super_glue/wsc.fixed": ROWS["super_glue/wsc.fixed"] + [negative]}):
    assert [r["targets"] for r in _all("super_glue_wsc", "train")] == [b"Mark"]
    validation = _all("super_glue_wsc", "validation")
  assert [(r["targets"], r["label"]) for r in validation] == [(b"Mark", 1), (b"Pete", 0)]


def test_wsc_leaves_text_unmarked_when_the_span_is_not_there():
  row = dict(ROWS["super_glue/wsc.fixed"][0], span2_index=40, span2_text="xyz")
  with mock_tfds_rows({"super_glue/wsc.fixed": [row]}):
    assert _first("super_glue_wsc")["inputs"].decode() == "text: " + WSC_TEXT


def test_record_trains_once_per_answer_and_evaluates_once():
  row = dict(ROWS["super_glue/record"][0], answers=["Paris", "the City of Light"])
  with mock_tfds_rows({"super_glue/record": [row]}):
    train = _all("super_glue_record", "train")
    validation = _all("super_glue_record", "validation")
  assert [r["targets"] for r in train] == [b"Paris", b"the City of Light"]
  assert len(validation) == 1 and list(validation[0]["answers"]) == [b"Paris",
                                                                      b"the City of Light"]


def test_unlabeled_examples_get_unk_target():
  row = dict(ROWS["super_glue/rte"][0], label=-1)
  with mock_tfds_rows({"super_glue/rte": [row]}):
    assert _first("super_glue_rte", "test")["targets"] == b"<unk>"
