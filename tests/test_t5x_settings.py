"""T5X's setting names: every one in docs/reference.md's "T5X settings" table, tried through the
command line, does what the table says (honoured as our setting, or refused in one line naming
the replacement). The names and outcomes are read from the table, so the two cannot drift."""
import ast
import itertools
import os
import re

import gin
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import gin_utils
from prompt_tuning.errors import UserError
from prompt_tuning.train import data as data_lib
from prompt_tuning.train import optim
from tests.train_helpers import REPO, run_cli

TABLE_HEADING = "## T5X settings"
FILES = {"train": ["models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin"],
         "eval": ["models/t5_1_1_toy_prompt.gin", "runs/prompt_eval.gin"]}
BASE_FLAGS = {"train": ["MODEL_DIR='/tmp/t5x_settings'", "MIXTURE_OR_TASK_NAME='toy_parity'",
                        "INITIAL_CHECKPOINT_PATH=None"],
              "eval": ["MODEL_DIR='/tmp/t5x_settings'", "MIXTURE_OR_TASK_NAME='toy_parity'",
                       "CHECKPOINT_PATH=None", "PROMPT_FILE='/tmp/p.npy'"]}
# The value each field is tried with; every one differs from the run files' own.
VALUES = {"mixture_or_task_name": "'toy_other'", "task_feature_lengths": "{'inputs': 12, 'targets': 4}",
          "split": "'test'", "batch_size": "4", "shuffle": "True", "seed": "3",
          "use_cached": "True", "module": "'prompt_tuning.data.toy_tasks'", "pack": "True",
          "period": "7", "keep": "1", "num_partitions": "2", "model_parallel_submesh": "(1, 1, 2, 1)",
          "scale": "0.25", "population_size": "77", "factors": "'constant * rsqrt_decay'",
          "base_learning_rate": "0.1", "warmup_steps": "100", "step_offset": "10",
          "min_learning_rate": "0.5", "decay_factor": "0.5", "steps_per_decay": "10",
          "steps_per_cycle": "10"}
LR = "utils.create_learning_rate_scheduler"


def _rate(value, step):
  return float(value(jnp.asarray(step))) if callable(value) else value


# Honoured names whose effect is not "the target equals the value": (extra gin files, extra
# flags, check of the target's value). The check must fail without the name's flag.
SPECIAL = {
    f"{LR}.factors": ([], [], lambda v: np.isclose(_rate(v, 0), 0.3 / np.sqrt(1000))
                      and np.isclose(_rate(v, 4000), 0.3 / np.sqrt(4000))),
    f"{LR}.warmup_steps": ([], [f"{LR}.factors='constant * linear_warmup'"],
                           lambda v: np.isclose(_rate(v, 50), 0.15) and np.isclose(_rate(v, 200), 0.3)),
    f"{LR}.step_offset": ([], [f"{LR}.factors='constant * linear_warmup'", f"{LR}.warmup_steps=100"],
                          lambda v: np.isclose(_rate(v, 60), 0.15) and np.isclose(_rate(v, 5), 1e-8)),
    f"{LR}.min_learning_rate": ([], [], lambda v: np.isclose(_rate(v, 0), 0.5)),
    "partitioning.PjitPartitioner.model_parallel_submesh": ([], [], lambda v: v == 2),
    "prompt_init/prompts.from_sample_of_embeddings.population_size": (
        ["prompts/from_sampled_vocab.gin"], [], lambda v: v == 77),
}


def _expand(name):
  """`a/{b,c}.d` -> ['a/b.d', 'a/c.d']."""
  parts = re.split(r"\{([^}]*)\}", name)
  choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
  return ["".join(c) for c in itertools.product(*choices)]


def table_rows():
  """`(name, command, outcome cell)` of every name in docs/reference.md's T5X settings table."""
  with open(os.path.join(REPO, "docs", "reference.md"), encoding="utf-8") as f:
    text = f.read()
  section = text[text.index(TABLE_HEADING):]
  rows = []
  for line in section.splitlines()[1:]:
    if line.startswith("## "):
      break
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 3 or cells[0] in ("T5X setting", "---"):
      continue
    for written in re.findall(r"`([^`]+)`", cells[0]):
      for name in _expand(written):
        for command in (c.strip() for c in cells[1].split(",")):
          rows.append((name, command, cells[2]))
  return rows


ROWS = table_rows()


def _field(name):
  return name.rsplit(".", 1)[-1]


def _run(command, flags, files=(), monkeypatch=None):
  """The CLI on gin flags, stopped before the run itself: (exit code, output)."""
  cli_command = {"train": "train", "eval": "eval"}[command]
  argv = [cli_command, *[f"--gin_file={f}" for f in [*FILES[command], *files]],
          *[f"--gin.{flag}" for flag in flags]]
  monkeypatch.setattr(gin_utils, "call", lambda fn: None)  # the parse is all this test needs
  return run_cli(argv)


def _base_flags(command, name):
  flags = BASE_FLAGS[command]
  if command == "eval" and name == "utils.DatasetConfig.mixture_or_task_name":
    flags = [f for f in flags if not f.startswith("MIXTURE_OR_TASK_NAME")]  # T5X's name alone
  return flags


def _target_value(target):
  selector, param = target.rsplit(".", 1)
  return gin.get_bindings(selector).get(param)


def _backticked_after(cell, word):
  return re.findall(r"`([^`]+)`", cell[cell.index(word) + len(word):])


def test_the_table_lists_every_name_the_issue_names():
  names = {name for name, _, _ in ROWS}
  for field in ("batch_size", "use_cached", "split", "seed", "shuffle", "pack",
                "mixture_or_task_name", "task_feature_lengths"):
    for scope in ("", "train/", "train_eval/"):
      assert f"{scope}utils.DatasetConfig.{field}" in names, (scope, field)
  assert "validation/utils.DatasetConfig.batch_size" in names
  for name in ("utils.SaveCheckpointConfig.period", "utils.SaveCheckpointConfig.keep",
               f"{LR}.factors", f"{LR}.base_learning_rate", f"{LR}.warmup_steps", f"{LR}.decay_factor",
               "partitioning.PjitPartitioner.num_partitions",
               "partitioning.PjitPartitioner.model_parallel_submesh",
               "prompt_init/linen.initializers.uniform.scale",
               "prompt_init/prompts.from_sample_of_embeddings.population_size"):
    assert name in names, name
  assert {c for _, c, _ in ROWS} == {"train", "eval"}
  assert all(cell.startswith(("honoured as", "refused", "only")) for _, _, cell in ROWS)


@pytest.mark.parametrize("name,command,cell", ROWS, ids=[f"{c}:{n}" for n, c, _ in ROWS])
def test_every_t5x_setting_is_honoured_or_refused_as_the_table_says(name, command, cell,
                                                                    monkeypatch):
  field = _field(name)
  files, extra, check = SPECIAL.get(name, ([], [], None))
  flag = f"{name}={VALUES[field]}"
  base = _base_flags(command, name)
  if cell.startswith("honoured as"):
    target = _backticked_after(cell, "honoured as")[0]
    if check is None:
      expected = ast.literal_eval(VALUES[field])
      check = lambda value: value == expected  # pylint: disable=unnecessary-lambda-assignment
    code, out = _run(command, [*base, *extra, flag], files, monkeypatch)
    assert code == 0, out
    assert check(_target_value(target)), (target, _target_value(target))
    # ... and the setting is what changed it.
    code, out = _run(command, [*BASE_FLAGS[command], *extra], files, monkeypatch)
    assert code == 0, out
    assert not check(_target_value(target)), (target, _target_value(target))
  elif cell.startswith("only"):
    accepted = _backticked_after(cell, "only")[0]
    code, out = _run(command, [*base, f"{name}={accepted}"], files, monkeypatch)
    assert code == 0, out
    other = repr(not ast.literal_eval(accepted)) if accepted in ("True", "False") else "7"
    code, out = _run(command, [*base, f"{name}={other}"], files, monkeypatch)
    errors = [l for l in out.splitlines() if l.startswith("error:")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in out, out
    assert f"{name}={other} is refused" in errors[0], errors
  else:
    code, out = _run(command, [*base, *extra, flag], files, monkeypatch)
    errors = [l for l in out.splitlines() if l.startswith("error:")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in out, out
    assert name in errors[0], errors
    replacements = _backticked_after(cell, "use ")
    assert replacements, cell
    for replacement in replacements:
      assert replacement.replace("*", field) in errors[0], (replacement, errors[0])


def test_a_learning_rate_factor_not_available_here_is_refused_by_name(monkeypatch):
  for factor in ("linear_decay", "decay_every", "cosine_decay"):
    code, out = _run("train", [*BASE_FLAGS["train"], f"{LR}.factors='constant * {factor}'"],
                     monkeypatch=monkeypatch)
    assert code != 0 and f"factor '{factor}' is not available here" in out, out


def test_schedule_matches_t5x_formulas_on_the_global_step():
  # T5X: rate(t) = prod(factors at s = max(0, t - offset)), at least min_learning_rate.
  schedule = optim.create_learning_rate_scheduler(
      "constant * linear_warmup * rsqrt_decay", base_learning_rate=2.0, warmup_steps=100,
      step_offset=1_100_000)
  for step, expected in ((1_100_000, 1e-8), (1_100_050, 2.0 * 0.5 / 10), (1_100_400, 2.0 / 20)):
    assert np.isclose(float(schedule(jnp.asarray(step))), expected, rtol=1e-5), step
  normalized = optim.create_learning_rate_scheduler("constant * rsqrt_normalized_decay", 0.3, 100)
  assert np.isclose(float(normalized(jnp.asarray(400))), 0.3 * 0.5, rtol=1e-5)
  with pytest.raises(UserError, match="steps_per_cycle is read only by"):
    optim.create_learning_rate_scheduler("constant", steps_per_cycle=5)


def test_a_schedule_needs_an_optimizer_counting_global_steps(monkeypatch):
  code, out = _run("train", [*BASE_FLAGS["train"], "train.optimizer=@adamw()",
                             f"{LR}.factors='constant * rsqrt_decay'"], monkeypatch=monkeypatch)
  assert code != 0 and "adamw.global_steps=True" in out, out
  code, out = _run("train", [*BASE_FLAGS["train"], "train.optimizer=@adamw()",
                             "adamw.global_steps=True", f"{LR}.factors='constant * rsqrt_decay'"],
                   monkeypatch=monkeypatch)
  assert code == 0 and callable(_target_value("adamw.learning_rate")), out


def test_both_partitioner_sizes_or_ours_and_t5x_name_together_are_refused(monkeypatch):
  code, out = _run("train", [*BASE_FLAGS["train"], "partitioning.PjitPartitioner.num_partitions=2",
                             "partitioning.PjitPartitioner.model_parallel_submesh=(1, 1, 1, 2)"],
                   monkeypatch=monkeypatch)
  assert code != 0 and "at most one" in out, out
  code, out = _run("train", [*BASE_FLAGS["train"], "train.batch_size=8",
                             "train/utils.DatasetConfig.batch_size=4"], monkeypatch=monkeypatch)
  assert code != 0 and "set only one" in out, out
  # Agreeing values are no conflict.
  code, out = _run("train", [*BASE_FLAGS["train"], "train.batch_size=4",
                             "train/utils.DatasetConfig.batch_size=4"], monkeypatch=monkeypatch)
  assert code == 0, out


@pytest.mark.parametrize("macro,t5x_name,reader", [
    ("USE_CACHED_TASKS=True", "utils.DatasetConfig.use_cached=False", "evaluate.use_cached_tasks"),
    ("BATCH_SIZE=16", "utils.DatasetConfig.batch_size=8", "evaluate.batch_size")])
def test_a_macro_and_t5x_name_for_its_reader_name_each_other(macro, t5x_name, reader, monkeypatch):
  # The hint used to say "add --gin_file=runs/prompt_eval.gin", which was given.
  code, out = _run("eval", [*BASE_FLAGS["eval"], macro, t5x_name], monkeypatch=monkeypatch)
  errors = [l for l in out.splitlines() if l.startswith("error:")]
  assert code != 0 and len(errors) == 1, out
  assert (f"{reader}, which reads it, is set by {t5x_name.split('=')[0]}" in errors[0]
          and "set only one" in errors[0] and "--gin_file" not in errors[0]), errors


def test_the_trainer_uses_the_batch_t5x_name_sets(tmp_path, monkeypatch):
  """One step of the toy run: `train/utils.DatasetConfig.batch_size` is the batch trained on."""
  seen = []
  batches = data_lib.batches

  def spy(*args, **kwargs):
    seen.append(args[3] if len(args) > 3 else kwargs["local_batch_size"])
    return batches(*args, **kwargs)
  monkeypatch.setattr(data_lib, "batches", spy)
  code, out = run_cli(["train", *[f"--gin_file={f}" for f in FILES["train"]],
                       f"--gin.MODEL_DIR='{tmp_path}'", "--gin.MIXTURE_OR_TASK_NAME='toy_parity'",
                       "--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.data.toy_tasks'",
                       "--gin.INITIAL_CHECKPOINT_PATH=None",
                       "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}",
                       "--gin.TRAIN_STEPS=1", "--gin.EVAL_PERIOD=None", "--gin.CHECKPOINT_PERIOD=1",
                       "--gin.train/utils.DatasetConfig.batch_size=4",
                       "--gin.utils.SaveCheckpointConfig.keep=1"])
  assert code == 0, out
  assert seen == [4], seen
