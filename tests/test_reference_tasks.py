"""The reference code's task names and modules, and failing fast without data or vocabulary."""
import importlib
import time

import pytest
import seqio

import prompt_tuning.tasks  # noqa: F401  (registers everything)
from prompt_tuning.errors import UserError
from prompt_tuning.tasks import ALIASES
from prompt_tuning.train import data as data_lib

SST2 = "sentence\tlabel\nit 's a charming journey . \t1\na dull mess . \t0\n"


@pytest.mark.parametrize("module", ["prompt_tuning.data.glue", "prompt_tuning.data.super_glue",
                                    "prompt_tuning.data.tasks"])
def test_reference_task_modules_import(module):
  data_lib.import_task_modules([module])
  importlib.import_module(module)


def test_reference_names_are_aliases_of_ours():
  expected = {
      "taskless_glue_sst2_v200_examples": "glue_sst2",
      "taskless_glue_sst2_v200": "glue_sst2",
      "glue_sst2_v200_examples": "glue_sst2_prefixed",
      "taskless_super_glue_rte_v102_examples": "super_glue_rte",
      "super_glue_rte_v102_examples": "super_glue_rte_prefixed",
      "super_glue_boolq_v102_examples": "super_glue_boolq_prefixed",
      "taskless_super_glue_wsc.fixed_v102_examples": "super_glue_wsc",
      "super_glue_axb_v102_examples": "super_glue_axb_prefixed",
  }
  for alias, ours in expected.items():
    assert ALIASES[alias] == ours
    task, target = seqio.get_mixture_or_task(alias), seqio.get_mixture_or_task(ours)
    assert task.name == alias  # metrics are reported under the name asked for
    assert task.source is target.source and task.splits == target.splits
    assert task.postprocessor is target.postprocessor
  mixture = seqio.get_mixture_or_task("taskless_glue_mnli_and_dev_v200_examples")
  assert sorted(t.name for t in mixture.tasks) == ["taskless_glue_mnli_mismatched_v200_examples",
                                                    "taskless_glue_mnli_v200_examples"]
  assert "super_glue_wsc_v102_examples" not in ALIASES  # the uncorrected WSC is not ours


def test_alias_reads_the_same_text(tmp_path):
  from prompt_tuning.tasks import local_data_dir  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  (tmp_path / "glue" / "SST-2").mkdir(parents=True)
  (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text(SST2)
  gin.bind_parameter("local_data_dir.path", str(tmp_path))
  assert local_data_dir() == str(tmp_path)

  def texts(name):
    ds = seqio.get_mixture_or_task(name).source.get_dataset("validation", shuffle=False)
    return [(e["inputs"], e["targets"]) for e in ds.as_numpy_iterator()]

  assert texts("taskless_glue_sst2_v200_examples") == texts("glue_sst2")
  assert texts("taskless_glue_sst2_v200_examples")[0] == (b"sentence: it 's a charming journey . ",
                                                          b"positive")
  assert texts("glue_sst2_v200_examples")[0][0].startswith(b"sst2 sentence:")


def test_tasks_command_lists_the_aliases(capsys):
  from prompt_tuning.commands import tasks  # pylint: disable=g-import-not-at-top
  lines = tasks.list_names("sst2_v200")
  assert any(l.startswith("taskless_glue_sst2_v200_examples") and "= glue_sst2 (reference name)"
             in l for l in lines), lines


def test_an_unported_reference_module_says_so():
  with pytest.raises(UserError, match="prompt_tuning.data.qa.*no counterpart here.*"
                     "prompt_tuning.data.glue"):
    data_lib.import_task_modules(["prompt_tuning.data.qa"])


def test_mixture_with_data_for_some_tasks_fails_fast(tmp_path):
  import gin  # pylint: disable=g-import-not-at-top
  (tmp_path / "data" / "glue" / "SST-2").mkdir(parents=True)
  (tmp_path / "data" / "glue" / "SST-2" / "train.tsv").write_text(SST2)
  gin.bind_parameter("local_data_dir.path", str(tmp_path / "data"))
  seqio.set_tfds_data_dir_override(str(tmp_path / "tfds"))  # nothing prepared there
  try:
    start = time.time()
    with pytest.raises(UserError) as error:
      data_lib.check_data_available("glue", ["train"])
    assert time.time() - start < 60  # no TFDS download retries
    message = str(error.value)
    assert "no data for 7 of 8 task splits of glue" in message
    assert "glue_cola [train]" in message and "glue_sst2 [train]" not in message
    # SST-2 alone has its data.
    data_lib.check_data_available("glue_sst2", ["train"])
    with pytest.raises(UserError, match=r"glue_sst2 \[validation\]"):
      data_lib.check_data_available("glue_sst2", ["validation"])  # no dev.tsv
  finally:
    seqio.set_tfds_data_dir_override(None)


def test_nothing_prepared_and_no_data_dir_leaves_tfds_to_download(tmp_path, monkeypatch):
  monkeypatch.delenv("PROMPT_TUNING_DATA_DIR", raising=False)
  seqio.set_tfds_data_dir_override(str(tmp_path / "tfds"))
  try:
    data_lib.check_data_available("super_glue_rte", ["train"])  # first use with network
  finally:
    seqio.set_tfds_data_dir_override(None)


def test_unreadable_vocabulary_is_one_line_naming_the_variable(tmp_path):
  from prompt_tuning.data import vocab  # pylint: disable=g-import-not-at-top
  vocabulary = vocab.get_vocabulary(str(tmp_path / "nope.model"))
  with pytest.raises(UserError) as error:
    vocabulary.encode("hello")
  message = str(error.value).splitlines()[0]
  assert "cannot read the SentencePiece vocabulary" in message
  assert "$PROMPT_TUNING_VOCAB" in message and "nope.model" in message
