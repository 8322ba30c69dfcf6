"""Issue 28, class 2: an error in a local data file names the file, the line and the field, and
says what is expected; an empty split is an error, not a header and exit 0.

Every bad row is tried in each reader that can hold it: the SuperGLUE JSONL files
(`super_glue_rte`, `super_glue_wic`), the plain JSONL files of datasets TFDS lacks
(`rotten_tomatoes`), the GLUE TSV files (`glue_sst2`, `glue_stsb`) and the inputs file of
`score`/`generate`. The bad row is line 3, after two good ones, so the line is the reader's count
and not a default; the commands are the CLI's (`tasks show`, `train`, `eval`, `score`), so what is
checked is what a user sees: one `error:` line, a non-zero exit, no TensorFlow internals, and the
data folder (and `MODEL_DIR`) as they were.
"""
import json

import numpy as np
import pytest

from prompt_tuning.tasks.testing import byte_vocabulary
from tests.reliability_helpers import (EVAL_FILES, HF_FIXTURE, TASK_BINDINGS, exit_code,
                                       gin_flags, one_error_line, run_cli, snapshot, train)

# What an error about a data file must never show instead of the file and line.
INTERNALS = ("IteratorGetNext", "KeyError", "Traceback", "tfds build", "InternalError",
             "UnicodeDecodeError")

# task -> (file under the data directory, a good row, its text field, its label field)
JSON_TASKS = {
    "super_glue_rte": ("super_glue/RTE/val.jsonl",
                       {"premise": "It rained.", "hypothesis": "It is wet.", "label": "entailment",
                        "idx": 0}, "hypothesis", "label"),
    "super_glue_wic": ("super_glue/WiC/val.jsonl",
                       {"word": "bank", "sentence1": "A river bank.", "sentence2": "A bank loan.",
                        "start1": 2, "start2": 2, "end1": 6, "end2": 6, "label": False,
                        "idx": 0}, "sentence2", "start1"),
    "rotten_tomatoes": ("rotten_tomatoes/validation.jsonl", {"text": "a dull film", "label": 0},
                        "text", "label"),
}


_DROP = object()


def _row(good, **changes) -> bytes:
  """`good` as a JSON line, with `changes` (a field set to `_DROP` is left out)."""
  row = {**good, **changes}
  return json.dumps({k: v for k, v in row.items() if v is not _DROP}).encode()


def _field_variants(good, text, number):
  """variant -> (bad line, the field it breaks, what the line says of it): rows that are JSON
  objects whose field the reader cannot use (`text` holds text, `number` a label or a number)."""
  return {
      "missing_field": (_row(good, **{text: _DROP}), text, f"no field {text!r}; each line needs"),
      "text_is_a_number": (_row(good, **{text: 3}), text, f"field {text!r} holds 3, not text"),
      "text_is_null": (_row(good, **{text: None}), text, f"field {text!r} holds None, not text"),
      "text_is_a_list": (_row(good, **{text: ["a", "b"]}), text,
                         f"{text!r} holds ['a', 'b'], not"),
      "number_is_a_word": (_row(good, **{number: "maybe"}), number,
                           f"{number!r} holds 'maybe', not"),
      "number_out_of_range": (_row(good, **{number: 2 ** 40}), number,
                              f"{number!r} holds 1099511627776, not"),
      "lone_surrogate": (_row(good, **{text: "x"}).replace(b'"x"', b'"a\\udc80"'), text,
                         f"field {text!r} holds a lone UTF-16 surrogate"),
  }


def _line_variants(good):
  """variant -> (bad line, what the line says of it): lines that are not a JSON object of text."""
  return {
      "not_json": (_row(good)[:-5], "is not valid JSON"),
      "json_array": (json.dumps(list(good)).encode(), "is a JSON array, not an object"),
      "json_null": (b"null", "is a JSON null, not an object"),
      "not_utf8": (_row(good, x="caf\u00e9").replace(b"\\u00e9", b"\xe9"),
                   "is not UTF-8 text (byte 0xe9"),
  }


FIELD_VARIANTS = list(_field_variants({}, "t", "n"))
LINE_VARIANTS = list(_line_variants({}))


def _write_lines(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"".join(line + b"\n" for line in lines))
  return path


def _without_internals(output: str) -> str:
  for text in INTERNALS:
    assert text not in output, output[-3000:]
  return output


def _tasks_show(task: str, data_dir, capsys):
  """`tasks show TASK --split validation` over the official files in `data_dir` (the byte
  vocabulary: no SentencePiece file needed): (exit code, its output). Nothing is printed of
  examples that never come, and the data folder is left as it was."""
  before = snapshot(data_dir)
  with byte_vocabulary():
    code, output = run_cli(["tasks", "show", task, "--split", "validation",
                            f"--gin.local_data_dir.path='{data_dir}'"], capsys, stdout=True)
  assert not [line for line in output.splitlines() if line.startswith("==")], output
  assert snapshot(data_dir) == before
  return code, _without_internals(output)


@pytest.mark.parametrize("variant", FIELD_VARIANTS + LINE_VARIANTS)
@pytest.mark.parametrize("task", JSON_TASKS)
def test_a_bad_row_of_an_official_jsonl_file_names_file_line_and_field(task, variant, tmp_path,
                                                                      capsys):
  relative, good, text, number = JSON_TASKS[task]
  bad, *_, says = {**_field_variants(good, text, number), **_line_variants(good)}[variant]
  path = _write_lines(tmp_path / relative, [_row(good), _row(good), bad])
  one_error_line(*_tasks_show(task, tmp_path, capsys), (f"{path} line 3", says))


# GLUE TSV: (task, file, header, a good row, bad row 3, needles). TFDS skips rows with a missing
# column, so these are the rows it cannot read.
SST2 = ("glue_sst2", "glue/SST-2/dev.tsv", b"sentence\tlabel", b"a fine film\t1")
TSV_VARIANTS = {
    "label_not_a_class": (*SST2, b"a dull film\tgreat",
                          ("column 'label'", "'great'", "negative, positive")),
    "label_out_of_range": (*SST2, b"a dull film\t7", ("field 'label'", "holds 7")),
    "not_utf8": (*SST2, b"caf\xe9 food\t0", ("not UTF-8", "byte 0xe9")),
    "score_not_a_number": (
        "glue_stsb", "glue/STS-B/dev.tsv",
        b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
        b"0\tx\tx\tx\tx\tx\tx\tA man runs.\tA man is running.\t4.5",
        b"1\tx\tx\tx\tx\tx\tx\tA cat.\tA dog.\thigh", ("column 'score'", "'high'", "score")),
}


@pytest.mark.parametrize("variant", TSV_VARIANTS)
def test_a_bad_row_of_an_official_glue_tsv_file_names_file_line_and_column(variant, tmp_path,
                                                                          capsys):
  task, relative, header, good, bad, needles = TSV_VARIANTS[variant]
  path = _write_lines(tmp_path / relative, [header, good, bad])
  one_error_line(*_tasks_show(task, tmp_path, capsys), (f"{path} line 3", *needles))


# task -> (file, its header line or None): each file is tried empty, of blank lines, header only.
EMPTY_FILES = {
    "super_glue_rte": ("super_glue/RTE/val.jsonl", None),
    "rotten_tomatoes": ("rotten_tomatoes/validation.jsonl", None),
    "glue_sst2": ("glue/SST-2/dev.tsv", b"sentence\tlabel"),
}
EMPTY = [(task, content) for task, (_, header) in EMPTY_FILES.items()
         for content in ("empty", "blank_lines") + (("header_only",) if header else ())]


@pytest.mark.parametrize("task, content", EMPTY, ids=[f"{t}-{c}" for t, c in EMPTY])
def test_an_empty_local_split_is_an_error_not_a_header_and_exit_0(task, content, tmp_path, capsys):
  relative, header = EMPTY_FILES[task]
  lines = {"empty": [], "blank_lines": [b"", b"  "], "header_only": [header]}[content]
  path = _write_lines(tmp_path / relative, lines)
  one_error_line(*_tasks_show(task, tmp_path, capsys), (str(path), "holds no examples"))


# ---- the same rows through the commands that train and evaluate on them --------------------

RTE = JSON_TASKS["super_glue_rte"][1]
ON_RTE = ("--gin.MIXTURE_OR_TASK_NAME='super_glue_rte'", "--gin.MIXTURE_OR_TASK_MODULE=None")


def _run_on_rte(argv, data, train_lines, val_lines, capsys):
  """`argv` over RTE files with these lines under `data`: (exit code, output)."""
  _write_lines(data / "super_glue/RTE/train.jsonl", train_lines)
  _write_lines(data / "super_glue/RTE/val.jsonl", val_lines)
  with byte_vocabulary():
    code, output = run_cli([*argv, *ON_RTE, f"--gin.DATA_DIR='{data}'"], capsys, stdout=True)
  return code, _without_internals(output)


GOOD_RTE = [_row(RTE)] * 16


@pytest.mark.parametrize("train_lines, val_lines, needles", [
    (GOOD_RTE[:2] + [_row(RTE, idx=None)], GOOD_RTE, ("train.jsonl line 3", "field 'idx'")),
    (GOOD_RTE, GOOD_RTE[:2] + [_row(RTE, label="maybe")],
     ("val.jsonl line 3", "field 'label'", "entailment")),
    (GOOD_RTE, [], ("val.jsonl holds no examples",)),
], ids=["train_split_bad_idx", "eval_split_bad_label", "eval_split_empty"])
def test_train_refuses_bad_local_data_before_it_writes(train_lines, val_lines, needles, tmp_path,
                                                       capsys):
  argv = train("--gin.EVAL_PERIOD=2", model_dir=str(tmp_path / "run"), steps=2)(None)
  code, output = _run_on_rte(argv, tmp_path / "data", train_lines, val_lines, capsys)
  one_error_line(code, output, (str(tmp_path / "data"), *needles))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("val_lines, needles", [
    ([], ("val.jsonl holds no examples",)),
    (GOOD_RTE[:1] + [_row(RTE, premise=7)], ("val.jsonl line 2", "field 'premise' holds 7")),
], ids=["empty", "premise_a_number"])
def test_eval_refuses_an_empty_or_bad_eval_split(val_lines, needles, tmp_path, capsys):
  prompt = tmp_path / "prompt.npy"
  np.save(prompt, np.ones((4, 32), np.float32))  # the toy model's PROMPT_LENGTH and width
  argv = ["eval", *gin_flags(EVAL_FILES, TASK_BINDINGS), f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
          f"--gin.PROMPT_FILE='{prompt}'"]
  code, output = _run_on_rte(argv, tmp_path / "data", GOOD_RTE, val_lines, capsys)
  one_error_line(code, output, (str(tmp_path / "data"), *needles))
  assert not (tmp_path / "run").exists()


# ---- the inputs file of score and generate ---------------------------------------------------


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
  folder = tmp_path_factory.mktemp("data_errors") / "backbone"
  assert exit_code(["convert", "--from", "hf", "--input", HF_FIXTURE, "--output", folder]) == 0
  return folder


# generate reads no targets; score reads any text as a target.
INPUTS_CASES = [(command, variant) for command in ("score", "generate")
                for variant in FIELD_VARIANTS + LINE_VARIANTS
                if not variant.startswith("number_") or (command, variant) == (
                    "score", "number_out_of_range")]


@pytest.mark.parametrize("command, variant", INPUTS_CASES,
                         ids=[f"{c}-{v}" for c, v in INPUTS_CASES])
def test_a_bad_line_of_an_inputs_file_names_file_line_and_field(command, variant, backbone,
                                                                tmp_path, capsys):
  good = {"inputs": "Is it so?", "targets": "yes"}
  variants = {**_field_variants(good, "inputs", "targets"), **_line_variants(good)}
  bad, *field, says = variants[variant]
  # The inputs reader's own words for a field ("lacks key(s) ['inputs']", "'inputs' must be a
  # string, got int"); the line's words are the shared JSONL reader's.
  needles = (repr(field[0]),) if field else (says,)
  path = _write_lines(tmp_path / "in.jsonl", [_row(good), _row(good), bad])
  before = snapshot(tmp_path)
  code, err = run_cli([command, "--checkpoint", backbone, "--vocab", tmp_path / "unused.model",
                       "--inputs_file", path], capsys)
  one_error_line(code, _without_internals(err), (f"{path} line 3", *needles))
  assert snapshot(tmp_path) == before
