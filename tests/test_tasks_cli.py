"""`prompt-tuning tasks`: listing, showing examples, and unknown names."""
import json

import pytest

from prompt_tuning import cli
from prompt_tuning.tasks.testing import byte_vocabulary, mock_tfds_rows


def _run(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  out, err = capsys.readouterr()
  return exit_info.value.code, out, err


def test_list_shows_tasks_and_mixtures(capsys):
  code, out, _ = _run(["tasks"], capsys)
  assert code == 0
  lines = out.splitlines()
  assert any(l.startswith("super_glue ") and "mixture of 8" in l for l in lines)
  rte = next(l for l in lines if l.startswith("super_glue_rte "))
  assert "[train,validation,test]" in rte and "entailment | not_entailment" in rte
  assert any(l.startswith("glue_cola_rank ") and l.endswith("rank") for l in lines)


def test_list_filter(capsys):
  code, out, _ = _run(["tasks", "list", "--filter", "mnli_mis"], capsys)
  assert code == 0
  ours = [l.split()[0] for l in out.splitlines() if "(reference name)" not in l]
  assert ours == [
      "glue_mnli_mismatched", "glue_mnli_mismatched_prefixed", "glue_mnli_mismatched_rank"]


def test_show_prints_text_and_token_counts(capsys):
  rows = [{"premise": "It rained.", "hypothesis": "Wet.", "label": "neutral", "idx": 0}]
  with byte_vocabulary(), mock_tfds_rows({"super_glue/cb": rows}):
    code, out, _ = _run(["tasks", "show", "super_glue_cb", "--split", "validation", "-n", "3"],
                        capsys)
  assert code == 0
  inputs = "hypothesis: Wet. premise: It rained."
  # Byte vocabulary: one token per byte, plus EOS.
  assert out.splitlines() == [
      "== super_glue_cb [validation]", "-- example 0",
      f"inputs ({len(inputs) + 1} tokens): {inputs}", "targets (8 tokens): neutral"]


def test_show_reads_local_files_via_gin_binding(capsys, tmp_path):
  (tmp_path / "rotten_tomatoes").mkdir()
  (tmp_path / "rotten_tomatoes" / "test.jsonl").write_text(
      json.dumps({"text": "dull", "label": 0}) + "\n")
  with byte_vocabulary():
    code, out, _ = _run(["tasks", "show", "rotten_tomatoes_rank", "--split", "test",
                         f"--gin.local_data_dir.path='{tmp_path}'"], capsys)
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  assert code == 0
  assert "targets (9 tokens): negative" in out and "targets (9 tokens): positive" in out
  assert "extra: idx=0, is_correct=True" in out


def test_unknown_name_is_one_line_with_suggestions(capsys):
  code, out, err = _run(["tasks", "show", "super_glue_rtee"], capsys)
  assert code == 2 and not out
  assert len(err.strip().splitlines()) == 1
  assert "unknown task or mixture 'super_glue_rtee'" in err
  assert "Did you mean: super_glue_rte" in err


def test_missing_split_is_a_user_error(capsys):
  code, out, err = _run(["tasks", "show", "super_glue_axb", "--split", "validation"], capsys)
  assert code == 2 and not out
  assert err.strip() == ("error: super_glue_axb has no 'validation' split; use --split with "
                         "one of test")
