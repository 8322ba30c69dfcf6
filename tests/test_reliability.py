"""Issue 14: bad input to any command is ONE clear line, a non-zero exit, and no change on disk.

Every case runs `prompt_tuning.cli.main(argv)` in-process (a subprocess costs
~5 s of imports) against prepared files (`tests/reliability_helpers.py`): a
finished 2-step toy run, a backbone folder, a PEFT adapter and input files.
Each case must print exactly one `error:` line naming the thing (and, where
there is one, the way out), no traceback, exit non-zero, and leave every
prepared file byte-identical and no new file or folder behind (`snapshot`). Nothing here needs a network or
`../shared/data`. Issue 28's four classes (sizes, data errors, run files,
numbers) each have a file: tests/test_reliability_{sizes,data,files,numbers}.py.
"""
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.reliability_helpers import (HF_FIXTURE, NOT_WRITABLE, REPO, TOY_MODULE, convert,
                                       evaluate, export, gin_path, generate, infer,
                                       one_error_line, path, plan, run_cli, score, snapshot,
                                       tasks, train, xprompt)
from tests.train_helpers import losses, toy_train


# ---- the cases: (id, argv builder, needles of the error line, texts it must not contain) ----

CASES = [
    # train: the "accepted with exit 0, but wrong" cases
    ("train_misspelled_macro", train("--gin.TRAIN_STEP=4"),
     ("--gin.TRAIN_STEP=4", "would be ignored", "Did you mean: TRAIN_STEPS"), ()),
    ("train_zero_steps", train("--gin.TRAIN_STEPS=0"), ("TRAIN_STEPS", "got 0"), ()),
    ("train_negative_steps", train("--gin.TRAIN_STEPS=-5"), ("TRAIN_STEPS", "got -5"), ()),
    ("train_steps_as_string", train("--gin.TRAIN_STEPS='10'"), ("TRAIN_STEPS", "'10'"), ()),
    ("train_eval_split_misspelled", train("--gin.EVAL_PERIOD=2", "--gin.train.eval_split='validaton'"),
     ("no split 'validaton'", "train, validation", "train.eval_split"), ()),
    ("train_split_misspelled", train("--gin.train.train_split='trian'"),
     ("no split 'trian'", "Did you mean: train"), ()),
    # train: tracebacks and misleading lines
    ("train_prompt_length_zero", train("--gin.PROMPT_LENGTH=0"), ("PROMPT_LENGTH", "got 0"), ()),
    ("train_prompt_length_negative", train("--gin.PROMPT_LENGTH=-3"), ("PROMPT_LENGTH", "got -3"), ()),
    ("train_prompt_length_string", train("--gin.PROMPT_LENGTH='abc'"),
     ("PROMPT_LENGTH", "'abc'"), ()),
    ("train_checkpoint_period_zero", train("--gin.CHECKPOINT_PERIOD=0"),
     ("CHECKPOINT_PERIOD", "got 0"), ()),
    ("train_eval_period_negative", train("--gin.EVAL_PERIOD=-1"), ("EVAL_PERIOD", "got -1"), ()),
    ("train_batch_size_zero", train("--gin.BATCH_SIZE=0"), ("BATCH_SIZE", "got 0"),
     ("DATA_DIR", "TFDS")),
    ("train_feature_length_zero", train("--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}"),
     ("TASK_FEATURE_LENGTHS['inputs']", "got 0"), ()),
    ("train_unbalanced_bracket", train("--gin.TRAIN_STEPS=("),
     ("--gin.TRAIN_STEPS=(", "unbalanced brackets"), ()),
    ("train_unquoted_string", train(lambda p: f"--gin.MODEL_DIR={p.root}/runs/x"),
     ("strings need quotes", "--gin.MODEL_DIR=\"'"), ("line 4",)),
    ("train_unknown_parameter", train("--gin.train.max_stpes=3"),
     ("--gin.train.max_stpes=3", "no parameter 'max_stpes'", "Did you mean"), ()),
    ("train_unknown_configurable", train("--gin.Promt.length=3"),
     ("'Promt'", "Did you mean: Prompt"), ()),
    ("train_undefined_macro", train("--gin.train.seed=%RANDOM_SEEDS"),
     ("%RANDOM_SEEDS", "Did you mean: RANDOM_SEED"), ()),
    ("train_max_norm_zero", train("--gin.train.max_trainable_norm=0"),
     ("train.max_trainable_norm", "positive number"), ()),
    ("train_model_dir_is_a_file", train(model_dir=path("a_file")), ("MODEL_DIR", "is a file"), ()),
    ("train_model_dir_under_a_file", train(model_dir=path("a_file", "run")),
     ("MODEL_DIR", "cannot be created", "is a file"), ()),
    ("train_model_dir_not_writable", train(model_dir=NOT_WRITABLE), ("MODEL_DIR", "not writable"), ()),
    ("train_prompt_file_random_bytes",
     train("--gin_file=prompts/from_file.gin", gin_path("PROMPT_FILE", "random_bytes")),
     ("not a .npy file", "PROMPT_FILE"), ("pickle",)),
    ("train_prompt_file_pickled",
     train("--gin_file=prompts/from_file.gin", gin_path("PROMPT_FILE", "pickled")),
     ("pickled Python objects", "never loaded"), ()),
    ("train_unknown_task", train("--gin.MIXTURE_OR_TASK_NAME='toy_parit'"),
     ("toy_parit", "Did you mean: toy_parity"), ()),
    # eval
    ("eval_split_misspelled", evaluate("--gin.EVAL_SPLIT='validaton'"),
     ("no split 'validaton'", "train, validation", "EVAL_SPLIT"), ()),
    ("eval_prompt_missing", evaluate(gin_path("PROMPT_FILE", "root", "missing.npy")),
     ("missing.npy does not exist", "PROMPT_FILE"), ()),
    ("eval_prompt_pickled", evaluate(gin_path("PROMPT_FILE", "pickled")),
     ("pickled Python objects",), ()),
    ("eval_batch_size_zero", evaluate("--gin.BATCH_SIZE=0"), ("BATCH_SIZE", "got 0"), ()),
    ("eval_train_only_macro", evaluate("--gin.TRAIN_STEPS=4"),
     ("TRAIN_STEPS", "would be ignored", "runs/prompt_finetune.gin"), ()),
    ("eval_model_dir_is_a_file", evaluate(gin_path("MODEL_DIR", "a_file")),
     ("MODEL_DIR", "is a file"), ()),
    # infer
    ("infer_split_misspelled", infer("--gin.EVAL_SPLIT='validaton'"),
     ("no split 'validaton'", "EVAL_SPLIT (infer.split)"), ()),
    ("infer_prompt_random_bytes", infer(gin_path("PROMPT_FILE", "random_bytes")),
     ("not a .npy file",), ("pickle",)),
    ("infer_misspelled_macro", infer("--gin.PROMPT_FIEL='x.npy'"),
     ("PROMPT_FIEL", "Did you mean: PROMPT_FILE"), ()),
    # xprompt: caught before stage 1 trains (no MODEL_DIR is created)
    ("xprompt_ratio_above_one", xprompt("--gin.run_xprompt.token_ratios=[0.5, 1.5]"),
     ("1.5", "fraction in [0, 1]"), ()),
    ("xprompt_decreasing_ratios", xprompt("--gin.run_xprompt.piece_ratios=[0.5, 0.2]"),
     ("must not decrease",), ()),
    ("xprompt_ratio_macro_without_its_file", xprompt("--gin.XPROMPT_TOKEN_RATIOS=[0.5]"),
     ("XPROMPT_TOKEN_RATIOS", "--gin_file=runs/xprompt.gin"), ()),
    ("xprompt_pieces_not_dividing", xprompt("--gin.XPROMPT_PIECES=5"), ("5", "divide"), ()),
    # plan
    ("plan_prompt_length_string", plan("--gin.PROMPT_LENGTH='abc'"), ("PROMPT_LENGTH", "'abc'"), ()),
    ("plan_batch_size_zero", plan("--gin.BATCH_SIZE=0"), ("BATCH_SIZE", "got 0"), ()),
    ("plan_num_devices_zero", plan("--num_devices=0"), ("--num_devices",), ()),
    ("plan_num_devices_not_an_int", plan("--num_devices=many"), ("--num_devices", "'many'"), ()),
    ("plan_mesh_not_dividing", plan("--num_devices=3", "--gin.make_mesh.model_parallel_size=2"),
     ("does not divide 3",), ()),
    ("plan_misspelled_macro", plan("--gin.PROMPT_LENGHT=3"), ("Did you mean: PROMPT_LENGTH",), ()),
    # convert
    ("convert_unknown_format", convert("--from", "pt", "--input", HF_FIXTURE, "--output",
                                       path("root", "c")), ("'pt'", "t5x, hf"), ()),
    ("convert_missing_input", convert("--from", "hf", "--input", path("root", "nope"), "--output",
                                      path("root", "c")), ("nope",), ()),
    ("convert_output_exists", convert("--from", "hf", "--input", HF_FIXTURE, "--output",
                                      path("backbone")), ("already exists",), ()),
    ("convert_unknown_dtype", convert("--from", "hf", "--input", HF_FIXTURE, "--output",
                                      path("root", "c"), "--dtype", "int8"), ("int8",), ()),
    ("convert_missing_arguments", convert("--from", "hf"), ("required", "--input"), ()),
    ("convert_pickled_pytorch_weights", convert("--from", "hf", "--input", path("torch_only"),
                                                "--output", path("root", "c")),
     ("pickled PyTorch files are never loaded",), ()),
    # score
    ("score_non_utf8_inputs", score("--inputs_file", path("latin1")),
     ("latin1.jsonl line 1", "not UTF-8"), ()),
    ("score_missing_inputs", score("--inputs_file", path("root", "none.jsonl")),
     ("does not exist",), ()),
    ("score_batch_size_zero", score("--batch_size", "0"), ("--batch_size", "0"), ()),
    ("score_batch_size_not_an_int", score("--batch_size", "x"), ("--batch_size", "'x'"), ()),
    ("score_output_is_a_folder", score("--output", path("root")), ("--output", "is a folder"), ()),
    ("score_vocab_not_sentencepiece", score(), ("random.npy", "not a SentencePiece model"), ()),
    ("score_checkpoint_missing", score("--checkpoint", path("root", "nope")),
     ("backbone folder", "does not exist"), ()),
    # generate
    ("generate_non_utf8_inputs", generate("--inputs_file", path("latin1")), ("not UTF-8",), ()),
    ("generate_beam_size_zero", generate("--beam_size", "0"), ("--beam_size",), ()),
    ("generate_negative_temperature", generate("--temperature", "-1"), ("--temperature",), ()),
    ("generate_topk_without_sampling", generate("--topk", "5"), ("--topk", "--temperature"), ()),
    # export
    ("export_pickled_npy", export("--prompt", path("pickled")),
     ("pickled Python objects", "never loaded"), ()),
    ("export_random_bytes", export("--prompt", path("random_bytes")), ("not a .npy file",),
     ("pickle",)),
    ("export_missing_prompt", export("--prompt", path("root", "none.npy")), ("does not exist",), ()),
    ("export_prompt_of_wrong_width", export("--prompt", path("narrow")), ("(3, 16)", "32"), ()),
    ("export_prompt_with_nan", export("--prompt", path("nan")), ("NaN",), ()),
    ("export_over_an_adapter", export("--output", path("adapter")), ("already holds a PEFT",), ()),
    ("export_output_is_a_file", export("--output", path("a_file")), ("--output", "is a file"), ()),
    # tasks
    ("tasks_unknown_name", tasks("show", "toy_parit", "--module", TOY_MODULE),
     ("toy_parit", "Did you mean: toy_parity"), ()),
    ("tasks_split_misspelled", tasks("show", "toy_parity", "--module", TOY_MODULE,
                                     "--split", "validaton"), ("'validaton'", "validation"), ()),
    ("tasks_zero_examples", tasks("show", "toy_parity", "--module", TOY_MODULE, "-n", "0"),
     ("-n",), ()),
    ("tasks_list_with_a_name", tasks("list", "toy_parity"), ("tasks show NAME",), ()),
    ("tasks_unread_macro", tasks("list", "--gin.DATA_DIR='/data'"),
     ("DATA_DIR", "would be ignored"), ()),
    ("tasks_unknown_module", tasks("list", "--module", "no_such_module_xyz"),
     ("no_such_module_xyz",), ()),
]


def _params():
  linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
  return [pytest.param(*case[1:], id=case[0],
                       marks=[linux_only] if case[0] == "train_model_dir_not_writable" else [])
          for case in CASES]


@pytest.mark.parametrize("argv, needles, absent", _params())
def test_bad_input_is_one_line_and_changes_nothing(prepared, argv, needles, absent, capsys):
  before = snapshot(prepared.root)
  code, err = run_cli(argv(prepared), capsys)
  one_error_line(code, err, needles, absent)
  assert snapshot(prepared.root) == before


def test_the_suite_covers_every_command_with_forty_cases():
  commands = {name.split("_")[0] for name, *_ in CASES}
  assert commands >= {"train", "eval", "infer", "convert", "score", "generate", "export", "tasks",
                      "xprompt", "plan"}
  assert len(CASES) >= 40


# ---- divergence: stopped like a NaN loss, no checkpoint for the step ----------------------


def test_huge_learning_rate_stops_the_run(tmp_path, capsys):
  run = tmp_path / "run"
  argv = train("--gin.adafactor.learning_rate=1e30", model_dir=str(run), steps=3)(None)
  code, err = run_cli(argv, capsys)
  one_error_line(code, err, ("training diverged", "at step 1", "no checkpoint"))
  assert not (run / "checkpoints").exists() and not (run / "prompts").exists()


def test_norm_bound_stops_a_resumed_run_and_leaves_it_as_it_was(prepared, capsys):
  before = snapshot(prepared.root)
  code, err = run_cli(train("--gin.train.max_trainable_norm=1e-3")(prepared), capsys)
  one_error_line(code, err, ("training diverged", "train.max_trainable_norm=0.001", "at step 3",
                             "no checkpoint"))
  assert snapshot(prepared.root) == before


# ---- data and vocabulary: fail fast, blame the right thing --------------------------------


def test_tasks_show_without_prepared_tfds_data_fails_fast(tmp_path, monkeypatch, capsys):
  import seqio
  import tensorflow_datasets as tfds
  from prompt_tuning.tasks.testing import byte_vocabulary
  tfds_dir = tmp_path / "tensorflow_datasets"
  monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tfds_dir))
  monkeypatch.setattr(seqio.utils.LazyTfdsLoader, "_MEMOIZED_BUILDERS", {})
  monkeypatch.delenv("PROMPT_TUNING_DATA_DIR", raising=False)
  start = time.monotonic()
  with byte_vocabulary():
    code, err = run_cli(["tasks", "show", "super_glue_rte"], capsys)
  one_error_line(code, err, ("super_glue/rte", "not prepared", "tfds build",
                             "PROMPT_TUNING_DATA_DIR/super_glue/RTE"))
  assert time.monotonic() - start < 60  # it retried downloads for 211 s
  assert not tfds_dir.exists()  # no stub folders


def test_unreadable_default_vocabulary_names_PROMPT_TUNING_VOCAB(tmp_path, monkeypatch, capsys):
  from prompt_tuning.data import vocab
  rte = tmp_path / "data" / "super_glue" / "RTE"
  rte.mkdir(parents=True)
  (rte / "val.jsonl").write_text('{"premise": "A.", "hypothesis": "B.", "label": "entailment", '
                                 '"idx": 0}\n')
  monkeypatch.setenv("PROMPT_TUNING_DATA_DIR", str(tmp_path / "data"))
  monkeypatch.delenv("PROMPT_TUNING_VOCAB", raising=False)
  # Stands in for gs://t5-data/... on a machine without network (hermetic either way).
  monkeypatch.setattr(vocab, "T5_VOCAB_PATH", str(tmp_path / "offline" / "sentencepiece.model"))
  code, err = run_cli(["tasks", "show", "super_glue_rte"], capsys)
  one_error_line(code, err, ("SentencePiece vocabulary", "(the default)", "$PROMPT_TUNING_VOCAB"),
                 absent=("PROMPT_TUNING_DATA_DIR", "DATA_DIR"))


def test_a_failed_run_leaves_no_folder_behind(tmp_path, capsys):
  # Fails after the run lock created MODEL_DIR (the data is checked while reading it).
  run = tmp_path / "new" / "run"
  argv = train("--gin.MIXTURE_OR_TASK_NAME='toy_empty'", model_dir=str(run), steps=2)(None)
  code, err = run_cli(argv, capsys)
  one_error_line(code, err, ("toy_empty", "no full batch"))
  assert not (tmp_path / "new").exists()


# ---- SIGKILL at an arbitrary moment: the rerun continues exactly --------------------------

_KILLED_RUN = r"""
import sys
sys.path.insert(0, {repo!r})
from tests.train_helpers import toy_train
toy_train(sys.argv[1], steps=100000, extra=["CHECKPOINT_PERIOD = 2"])
"""


def _saved_steps(run: pathlib.Path):
  folder = run / "checkpoints"
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if folder.is_dir() else []


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_losses_of_an_unbroken_run(tmp_path):
  run = tmp_path / "run"
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN.format(repo=str(REPO)), str(run)],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 300
    while not _saved_steps(run) or _saved_steps(run)[-1] < 6:
      assert proc.poll() is None, "the run ended before it was killed"
      assert time.monotonic() < deadline, "no checkpoint of step 6 within 300 s"
      time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # wherever it is: a step, a save, an export
  finally:
    proc.kill()
    proc.wait()
  assert (run / ".lock").exists()  # left by the killed run
  end = _saved_steps(run)[-1] + 3
  resumed = toy_train(run, steps=end, extra=["CHECKPOINT_PERIOD = 2"])
  straight = toy_train(tmp_path / "straight", steps=end)
  assert [h["step"] for h in resumed["train_history"]] == list(range(1, end + 1))
  np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-5)
  np.testing.assert_allclose(np.load(run / "prompts" / f"step_{end}.npy"),
                             np.load(tmp_path / "straight" / "prompts" / f"step_{end}.npy"),
                             rtol=1e-5, atol=1e-6)
  assert not (run / ".lock").exists()
