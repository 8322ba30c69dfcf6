"""Task names, validation at registration, mixtures and the lazy vocabulary."""
from pathlib import Path

import pytest
import seqio

from prompt_tuning import tasks
from prompt_tuning.data import vocab
from prompt_tuning.errors import UserError
from prompt_tuning.tasks import registry, testing

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
T5_VOCAB = SHARED / "data" / "t5_vocab" / "sentencepiece.model"

SUPER_GLUE = ["boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"]
GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]


def test_benchmark_tasks_and_variants_are_registered():
  names = set(seqio.TaskRegistry.names())
  for task in SUPER_GLUE + ["axb", "axg"]:
    assert {f"super_glue_{task}", f"super_glue_{task}_prefixed"} <= names
  for task in GLUE + ["mnli_matched", "mnli_mismatched"]:
    assert {f"glue_{task}", f"glue_{task}_prefixed"} <= names
  assert {"imdb", "rotten_tomatoes", "samsum", "multi_news", "nq_open"} <= names
  # Rank variants exist exactly for the classification tasks.
  ranked = {n[:-len("_rank")] for n, i in tasks.TASKS.items() if i.variant == "rank"}
  classification = {n for n, i in tasks.TASKS.items() if i.variant == "" and i.label_names}
  assert ranked == classification
  assert "super_glue_record_rank" not in names and "glue_stsb_rank" not in names


def test_task_metadata():
  info = tasks.TASKS["super_glue_rte_rank"]
  assert info.label_names == ("entailment", "not_entailment")
  assert tasks.TASKS["super_glue_axb"].splits == ("test",)
  assert set(tasks.TASKS["glue_mnli_mismatched"].splits) == {"validation", "test"}
  assert tasks.TASKS["super_glue_wsc"].label_names is None  # generative referent


def test_rank_tasks_use_score_metrics_and_others_predict_metrics():
  rank = seqio.get_mixture_or_task("super_glue_cb_rank")
  plain = seqio.get_mixture_or_task("super_glue_cb")
  assert rank.score_metric_fns and not rank.predict_metric_fns
  assert plain.predict_metric_fns and not plain.score_metric_fns


def test_mixtures():
  sg = seqio.get_mixture_or_task("super_glue")
  assert sorted(t.name for t in sg.tasks) == sorted(f"super_glue_{t}" for t in SUPER_GLUE)
  glue = {t.name for t in seqio.get_mixture_or_task("glue").tasks}
  assert glue == {f"glue_{t}" for t in GLUE} | {"glue_mnli_mismatched"}
  # Mismatched MNLI has no train split: it is evaluated, never trained twice.
  assert "train" not in seqio.get_mixture_or_task("glue_mnli_mismatched").splits


def test_mixture_rates_are_proportional_and_capped():
  class Sized:
    def __init__(self, n):
      self.n = n
    cache_dir = None
    name = "sized"

    def num_input_examples(self, split):
      return self.n

  rate = seqio.get_mixture_or_task("glue")._task_to_rate["glue_cola"]
  assert rate(Sized(8551)) == 8551
  assert rate(Sized(10 ** 7)) == registry.MIXTURE_RATE_CAP


def test_registering_twice_is_a_user_error():
  source = seqio.get_mixture_or_task("glue_rte").source
  with pytest.raises(UserError, match="already registered"):
    registry.add_task("glue_rte", "glue", "", source, lambda x, **kw: x, [])
  with pytest.raises(UserError, match="already registered"):
    registry.add_mixture("glue", ["glue_rte"])


@pytest.mark.parametrize("name,family,message", [
    ("Glue_RTE", "glue", "invalid"), ("glue__rte", "glue", "invalid"),
    ("rte_glue", "glue", "must start with 'glue_'"), ("my_task", "mine", "family"),
])
def test_invalid_names_are_rejected(name, family, message):
  source = seqio.get_mixture_or_task("glue_rte").source
  with pytest.raises(UserError, match=message):
    registry.add_task(name, family, "", source, lambda x, **kw: x, [])
  assert name not in seqio.TaskRegistry.names()


def test_mixture_of_unknown_tasks_is_rejected():
  with pytest.raises(UserError, match="unregistered tasks: glue_nope"):
    registry.add_mixture("my_mixture", ["glue_rte", "glue_nope"])


def test_registration_does_not_open_the_vocabulary(monkeypatch, tmp_path):
  missing = tmp_path / "absent.model"
  monkeypatch.setenv(vocab.VOCAB_ENV, str(missing))
  task = seqio.get_mixture_or_task("super_glue_rte")
  feature = task.output_features["targets"]
  assert feature.add_eos and task.output_features["inputs"].add_eos
  assert isinstance(feature.vocabulary, vocab.DeferredVocabulary)
  with pytest.raises(Exception):  # only using it reads the (missing) file
    feature.vocabulary.encode("hello")


def test_byte_vocabulary_override_reaches_tasks():
  with testing.byte_vocabulary() as byte_vocab:
    feature = seqio.get_mixture_or_task("glue_rte").output_features["targets"]
    assert feature.vocabulary.encode("ab") == byte_vocab.encode("ab")


def test_real_t5_vocabulary_tokenizes_a_task(monkeypatch):
  if not T5_VOCAB.exists():
    pytest.skip(f"T5 vocabulary not found at {T5_VOCAB} (../shared/data is absent)")
  monkeypatch.setenv(vocab.VOCAB_ENV, str(T5_VOCAB))
  assert vocab.get_vocabulary() is vocab.get_vocabulary(str(T5_VOCAB))  # cached
  assert vocab.get_vocabulary().vocab_size == 32100
  with testing.mock_tfds_rows({"super_glue/rte": [
      {"premise": "A dog barks.", "hypothesis": "An animal makes noise.",
       "label": "entailment", "idx": 0}]}):
    ex = next(seqio.get_mixture_or_task("super_glue_rte").get_dataset(
        {"inputs": 64, "targets": 8}, split="validation", shuffle=False).as_numpy_iterator())
  t5 = vocab.get_vocabulary()
  assert ex["targets"][-1] == t5.eos_id == 1
  assert t5.decode(ex["targets"].tolist()) == "entailment"
  assert t5.decode(ex["inputs"].tolist()) == ex["inputs_pretokenized"].decode()


def test_gin_binds_the_vocabulary_path(tmp_path):
  import gin  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "my.model")
  gin.parse_config([f"get_vocabulary.path = '{path}'"])
  try:
    # Resolved lazily: the file does not exist and nothing has read it yet.
    assert vocab.get_vocabulary() is vocab.get_vocabulary(path)
    assert vocab.DEFERRED_VOCABULARY.resolved is vocab.get_vocabulary(path)
  finally:
    gin.clear_config()
