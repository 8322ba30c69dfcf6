"""Official SuperGLUE/GLUE files under DATA_DIR give the same text as TFDS.

The reference is TFDS itself: its builder's own generator reads the same
fixture file, and its rows are served as TFDS data (mocked, no network).
"""
import json

import pytest
import seqio
import tensorflow_datasets as tfds

from prompt_tuning.errors import UserError
from prompt_tuning.tasks import local_data_dir
from prompt_tuning.tasks.testing import mock_tfds_rows

MULTIRC = {"idx": 4, "version": 1.1, "passage": {
    "text": "<b>Sent 1: </b>Tom ran fast.<br><b>Sent 2: </b>He won the race.<br>",
    "questions": [{"idx": 0, "question": "Who won?", "answers": [
        {"idx": 0, "text": "Tom", "label": 1}, {"idx": 1, "text": "Ann", "label": 0}]},
        {"idx": 1, "question": "Did Tom run?", "answers": [
            {"idx": 2, "text": "Yes", "label": 1}]}]}}
RECORD_TEXT = "Paris is lovely.\n@highlight\nThe Eiffel Tower is tall"
RECORD = {"idx": 2, "passage": {"text": RECORD_TEXT,
                                "entities": [{"start": 0, "end": 4}, {"start": 21, "end": 32}]},
          "qas": [{"idx": 7, "query": "@placeholder is in France.",
                   "answers": [{"start": 0, "end": 4, "text": "Paris"}]}]}
WSC = {"idx": 1, "label": True, "text": "Mark told Pete many lies about himself. He lied.",
       "target": {"span1_text": "Mark", "span1_index": 0, "span2_text": "He", "span2_index": 7}}

# TFDS config -> (folder, {file name: JSONL rows})
SUPER_GLUE = {
    "boolq": ("BoolQ", {"val.jsonl": [{"question": "is it so", "passage": "It is.",
                                       "idx": 0, "label": True}]}),
    "cb": ("CB", {"val.jsonl": [{"premise": "It rained.", "hypothesis": "Wet.",
                                 "label": "contradiction", "idx": 0}]}),
    "copa": ("COPA", {"val.jsonl": [{"premise": "He fell.", "choice1": "Ice.",
                                     "choice2": "Sun.", "question": "cause", "label": 0,
                                     "idx": 0}]}),
    "multirc": ("MultiRC", {"val.jsonl": [MULTIRC]}),
    "record": ("ReCoRD", {"val.jsonl": [RECORD], "train.jsonl": [RECORD]}),
    "rte": ("RTE", {"val.jsonl": [{"premise": "A dog barks.", "hypothesis": "Noise.",
                                   "label": "not_entailment", "idx": 3}],
                    "test.jsonl": [{"premise": "A.", "hypothesis": "B.", "idx": 0}]}),
    "wic": ("WiC", {"val.jsonl": [{"word": "bank", "sentence1": "On the bank.",
                                   "sentence2": "To the bank.", "start1": 7, "end1": 11,
                                   "start2": 7, "end2": 11, "label": False, "idx": 0}]}),
    "wsc.fixed": ("WSC", {"val.jsonl": [WSC], "train.jsonl": [WSC, dict(WSC, label=False)]}),
    "axb": ("AX-b", {"AX-b.jsonl": [{"sentence1": "The cat sat.", "sentence2": "A cat sat.",
                                     "label": "entailment", "idx": 0}]}),
    "axg": ("AX-g", {"AX-g.jsonl": [{"premise": "The nurse ate.", "hypothesis": "She ate.",
                                     "label": "not_entailment", "idx": 0}]}),
}

MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
# TFDS config -> (folder, {file name: TSV text})
GLUE = {
    "cola": ("CoLA", {"dev.tsv": "gj04\t1\t\tThe book was read.\ngj04\t0\t*\tBook read the.\n",
                      "test.tsv": "index\tsentence\n0\tBill whistled.\n"}),
    "sst2": ("SST-2", {"dev.tsv": "sentence\tlabel\nit 's a charming journey . \t1\n"}),
    "qqp": ("QQP", {"dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                               "0\t1\t2\tHow to cook?\tHow do I cook?\t1\n"}),
    "stsb": ("STS-B", {"dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\t"
                                 "sentence1\tsentence2\tscore\n0\tmain-captions\tMSRvid\t2012test"
                                 "\t0001\tnone\tnone\tA man plays.\tA man is playing.\t3.86\n"}),
    "mnli": ("MNLI", {"dev_mismatched.tsv": MNLI_HEADER + "0\t1\t1n\tfiction\t(x)\t(y)\t(x)\t(y)"
                                                          "\tHe ran home.\tHe moved.\tentailment"
                                                          "\tentailment\n"}),
    "qnli": ("QNLI", {"dev.tsv": "index\tquestion\tsentence\tlabel\n"
                                 "0\tWhere is Paris?\tParis is in France.\tentailment\n"}),
    "rte": ("RTE", {"dev.tsv": "index\tsentence1\tsentence2\tlabel\n"
                               "0\tA dog barks.\tAn animal barks.\tentailment\n"}),
}

# (task, split, TFDS config, file the TFDS generator reads, TFDS generator's split argument)
CASES = [
    ("super_glue_boolq", "validation", "super_glue/boolq", "val.jsonl", "validation"),
    ("super_glue_cb_rank", "validation", "super_glue/cb", "val.jsonl", "validation"),
    ("super_glue_copa", "validation", "super_glue/copa", "val.jsonl", "validation"),
    ("super_glue_multirc", "validation", "super_glue/multirc", "val.jsonl", "validation"),
    ("super_glue_record", "validation", "super_glue/record", "val.jsonl", "validation"),
    ("super_glue_record", "train", "super_glue/record", "train.jsonl", "train"),
    ("super_glue_rte", "validation", "super_glue/rte", "val.jsonl", "validation"),
    ("super_glue_rte_prefixed", "test", "super_glue/rte", "test.jsonl", "test"),
    ("super_glue_wic", "validation", "super_glue/wic", "val.jsonl", "validation"),
    ("super_glue_wsc", "validation", "super_glue/wsc.fixed", "val.jsonl", "validation"),
    ("super_glue_wsc", "train", "super_glue/wsc.fixed", "train.jsonl", "train"),
    ("super_glue_axb", "test", "super_glue/axb", "AX-b.jsonl", "test"),
    ("super_glue_axg", "test", "super_glue/axg", "AX-g.jsonl", "test"),
    ("glue_cola", "validation", "glue/cola", "dev.tsv", "dev"),
    ("glue_cola", "test", "glue/cola", "test.tsv", "test"),
    ("glue_sst2", "validation", "glue/sst2", "dev.tsv", "dev"),
    ("glue_qqp", "validation", "glue/qqp", "dev.tsv", "dev"),
    ("glue_stsb", "validation", "glue/stsb", "dev.tsv", "dev"),
    ("glue_mnli_mismatched", "validation", "glue/mnli", "dev_mismatched.tsv", "dev"),
    ("glue_qnli_rank", "validation", "glue/qnli", "dev.tsv", "dev"),
    ("glue_rte", "validation", "glue/rte", "dev.tsv", "dev"),
]

FOLDERS = {f"super_glue/{k}": f"super_glue/{v[0]}" for k, v in SUPER_GLUE.items()}
FOLDERS.update({f"glue/{k}": f"glue/{v[0]}" for k, v in GLUE.items()})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("official")
  for config, (folder, files) in SUPER_GLUE.items():
    (root / "super_glue" / folder).mkdir(parents=True)
    for name, rows in files.items():
      (root / "super_glue" / folder / name).write_text(
          "".join(json.dumps(r) + "\n" for r in rows))
  for config, (folder, files) in GLUE.items():
    (root / "glue" / folder).mkdir(parents=True)
    for name, text in files.items():
      (root / "glue" / folder / name).write_text(text)
  return root


def _rows(name: str, split: str) -> list:
  ds = seqio.get_mixture_or_task(name).source.get_dataset(split, shuffle=False)
  return [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


def _tfds_generator_rows(config: str, path, split_arg: str) -> list:
  builder = tfds.builder(config)
  generate = builder._generate_examples  # pylint: disable=protected-access
  rows = [row for _, row in generate(str(path), split_arg)]
  assert rows, f"TFDS read nothing from {path}"
  return rows


@pytest.mark.parametrize("name,split,config,filename,split_arg", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_local_files_match_tfds(data_dir, monkeypatch, name, split, config, filename, split_arg):
  tfds_rows = _tfds_generator_rows(config, data_dir / FOLDERS[config] / filename, split_arg)
  monkeypatch.delenv("PROMPT_TUNING_DATA_DIR", raising=False)
  with mock_tfds_rows({config: tfds_rows}):
    via_tfds = _rows(name, split)
  monkeypatch.setenv("PROMPT_TUNING_DATA_DIR", str(data_dir))
  with mock_tfds_rows({}):  # any TFDS read would now give random text
    via_files = _rows(name, split)
  assert via_files == via_tfds
  assert via_files and all(r["inputs"] for r in via_files)


def test_local_files_text_is_the_official_example(data_dir, monkeypatch):
  monkeypatch.setenv("PROMPT_TUNING_DATA_DIR", str(data_dir))
  rows = _rows("super_glue_multirc", "validation")
  assert [(r["inputs"].decode(), r["targets"].decode()) for r in rows[:2]] == [
      ("question: Who won? answer: Tom paragraph: Sent 1: Tom ran fast. Sent 2: He won the "
       "race. ", "True"),
      ("question: Who won? answer: Ann paragraph: Sent 1: Tom ran fast. Sent 2: He won the "
       "race. ", "False")]
  assert [(r["group_paragraph"], r["group_question"]) for r in rows] == [(4, 0), (4, 0), (4, 1)]
  (cola,) = _rows("glue_cola", "test")
  assert (cola["inputs"], cola["targets"]) == (b"sentence: Bill whistled.", b"<unk>")


def test_mrpc_glue_tsv(tmp_path, monkeypatch):
  # TFDS builds MRPC from Microsoft's original files, so compare with a literal.
  (tmp_path / "glue" / "MRPC").mkdir(parents=True)
  (tmp_path / "glue" / "MRPC" / "dev.tsv").write_text(
      "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t11\t12\tHe said hi.\tHe greeted.\n",
      encoding="utf-8")
  monkeypatch.setenv("PROMPT_TUNING_DATA_DIR", str(tmp_path))
  (row,) = _rows("glue_mrpc", "validation")
  assert (row["inputs"], row["targets"]) == (b"sentence1: He said hi. sentence2: He greeted.",
                                             b"equivalent")


def test_gin_binding_selects_the_data_dir(data_dir, monkeypatch):
  import gin  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("PROMPT_TUNING_DATA_DIR", raising=False)
  gin.parse_config([f"DATA_DIR = '{data_dir}'", "local_data_dir.path = %DATA_DIR"])
  try:
    assert local_data_dir() == str(data_dir)
    (row,) = _rows("super_glue_boolq", "validation")
    assert row["inputs"] == b"passage: It is. question: is it so"
  finally:
    gin.clear_config()


def test_missing_local_file_is_a_clear_error(data_dir, monkeypatch):
  monkeypatch.setenv("PROMPT_TUNING_DATA_DIR", str(data_dir))
  with pytest.raises(UserError, match=r"missing .*BoolQ/train.jsonl"):
    _rows("super_glue_boolq", "train")


def test_rotten_tomatoes_needs_its_files(tmp_path, monkeypatch):
  monkeypatch.setenv("PROMPT_TUNING_DATA_DIR", str(tmp_path))
  with pytest.raises(UserError, match="not in TFDS.*rotten_tomatoes"):
    _rows("rotten_tomatoes", "validation")
  (tmp_path / "rotten_tomatoes").mkdir()
  (tmp_path / "rotten_tomatoes" / "validation.jsonl").write_text(
      json.dumps({"text": "a gorgeous , witty film", "label": 1}) + "\n")
  (row,) = _rows("rotten_tomatoes", "validation")
  assert (row["inputs"], row["targets"]) == (b"sentence: a gorgeous , witty film", b"positive")
