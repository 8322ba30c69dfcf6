"""Issue 28, class 4: numbers that mean nothing are refused where they are read.

Every numeric flag of every command is parsed with a range (`checks.int_flag`,
`checks.float_flag`), found here by walking the commands' parsers, so a flag
added later without one fails `test_no_numeric_flag_is_read_without_a_range`.
Gin numbers (learning rates, decay rates, momenta, dropout) are checked where
their factory reads them, and a prompt with no token, no width or non-finite
values is refused by the one prompt reader, wherever a prompt file is named.
"""
import json

import numpy as np
import pytest

from prompt_tuning import checks, cli
from prompt_tuning.errors import UserError
from tests.reliability_helpers import (evaluate, export, generate, is_one_line_refusal, plan,
                                       score, train)

# Text no number flag may take: not numbers, NaN, infinities (1e400 parses as inf), Python syntax.
NOT_NUMBERS = ("nan", "NaN", "inf", "-inf", "1e400", "-1e400", "x", "", "2**70", "0x10")


def _numeric_flags():
  """(command, flag, parser, action) of every option whose value argparse converts."""
  for name in cli.COMMANDS:
    parser = cli._Parser(prog=f"prompt-tuning {name}")  # pylint: disable=protected-access
    cli.command_module(name).add_arguments(parser)
    for action in parser._actions:  # pylint: disable=protected-access
      if action.option_strings and action.type is not None:
        yield name, action.option_strings[-1], parser, action


def test_no_numeric_flag_is_read_without_a_range():
  flags = list(_numeric_flags())
  unranged = [f"{name} {flag}" for name, flag, _, action in flags
              if not hasattr(action.type, "bounds")]
  assert not unranged, f"parse these with checks.int_flag / checks.float_flag: {unranged}"
  commands = {name for name, *_ in flags}
  assert commands >= {"score", "generate", "plan", "tasks", "bench", "convert"}


def _out_of_range(action) -> list:
  """Values just outside the flag's range, and, for integer flags, fractions and huge ints."""
  bounds = action.type.bounds
  out = []
  if bounds.get("at_least") is not None:
    out.append(str(bounds["at_least"] - 1))
  if bounds.get("above") is not None:
    out += [str(bounds["above"]), str(bounds["above"] - 0.5)]
  if bounds.get("at_most") is not None:
    out.append(str(bounds["at_most"] + 1))
  if bounds.get("below") is not None:
    out += [str(bounds["below"]), str(bounds["below"] + 0.5)]
  if "above" not in bounds:  # an integer flag
    out += ["1.5", "1e3"]
  return out


@pytest.mark.parametrize("command, flag", [(c, f) for c, f, _, _ in _numeric_flags()])
def test_every_numeric_flag_refuses_what_it_cannot_mean(command, flag):
  parser, action = next((p, a) for c, f, p, a in _numeric_flags() if (c, f) == (command, flag))
  for text in NOT_NUMBERS + tuple(_out_of_range(action)):
    with pytest.raises(UserError) as refused:
      parser.parse_args([flag, text])
    message = str(refused.value)
    assert flag in message and "\n" not in message, message
  bounds = action.type.bounds
  low = bounds.get("at_least") if bounds.get("at_least") is not None else bounds.get("above")
  good = str(low + 1 if low is not None else 1)
  if bounds.get("below") is not None and float(good) >= bounds["below"]:  # e.g. a rate
    good = str((low + bounds["below"]) / 2)
  assert action.type(good) == float(good)


@pytest.mark.parametrize("argv, needles", [
    (generate("--alpha", "nan"), ("--alpha", "finite")),
    (generate("--temperature", "inf"), ("--temperature", "finite")),
    (generate("--temperature=-1e-9"), ("--temperature", ">= 0")),
    (score("--batch_size", "1e400"), ("--batch_size",)),
    (plan("--device_memory_gib=-4"), ("--device_memory_gib", "> 0")),
    (plan("--device_memory_gib=nan"), ("--device_memory_gib",)),
    (plan("--num_devices=2.5"), ("--num_devices", "'2.5'")),
])
def test_a_bad_number_on_the_command_line_is_one_line(prepared, argv, needles, capsys):
  is_one_line_refusal(argv(prepared), prepared, capsys, needles)


@pytest.mark.parametrize("binding, needles", [
    ("--gin.adafactor.learning_rate=-0.3", ("adafactor.learning_rate", "-0.3")),
    ("--gin.adafactor.learning_rate=1e400", ("adafactor.learning_rate", "inf")),
    ("--gin.adafactor.decay_rate=0", ("adafactor.decay_rate",)),
    ("--gin.adafactor.clipping_threshold=-1.0", ("adafactor.clipping_threshold",)),
    ("--gin.adafactor.weight_decay_rate=-1e-5", ("adafactor.weight_decay_rate",)),
    ("--gin.DROPOUT_RATE=1.5", ("DROPOUT_RATE",)),
    ("--gin.DROPOUT_RATE=1e400", ("DROPOUT_RATE",)),
    ("--gin.train.max_trainable_norm=1e400", ("train.max_trainable_norm",)),
])
def test_gin_numbers_are_checked_where_they_are_read(prepared, binding, needles, capsys):
  is_one_line_refusal(train(binding)(prepared), prepared, capsys, needles)


def test_every_optimizer_and_schedule_refuses_meaningless_numbers():
  from prompt_tuning.train import optim
  bad = [lambda: optim.adamw(learning_rate=float("nan")), lambda: optim.adamw(b1=1.0),
         lambda: optim.adamw(b2=-0.1), lambda: optim.adamw(eps=-1e-8),
         lambda: optim.adamw(max_grad_norm=0.0), lambda: optim.sgd(learning_rate=-1.0),
         lambda: optim.sgd(momentum=1.5), lambda: optim.adafactor(momentum=float("inf")),
         lambda: optim.constant_schedule(-0.3), lambda: optim.warmup_rsqrt_schedule(warmup_steps=0),
         lambda: optim.linear_decay_schedule(peak=float("inf")),
         lambda: optim.linear_decay_schedule(decay_steps=0),
         lambda: optim.linear_warmup_cosine_schedule(end_value=-1.0),
         lambda: optim.adafactor(learning_rate="0.3")]
  for make in bad:
    with pytest.raises(UserError, match="must be"):
      make()
  # Zero learning rates freeze a group of `partitioned` on purpose; schedules are callables.
  optim.adafactor(learning_rate=0.0)
  optim.adafactor(learning_rate=optim.constant_schedule(0.3))


def test_number_check_refuses_booleans_and_non_finite_values():
  for value in (True, float("nan"), float("inf"), -float("inf"), "1", None):
    with pytest.raises(UserError):
      checks.number(value, "x", "--gin.x=1")
  assert checks.number(0, "x", "--gin.x=1", at_least=0) == 0.0


# ---- empty and non-finite prompts: refused by the one prompt reader ------------------------


def _prompt_variants(tmp_path):
  """(file, what the line must say) of prompts no encoder can be given."""
  from safetensors.numpy import save_file
  variants = {"no_token.npy": (np.zeros((0, 32), np.float32), "(0, 32)"),
              "no_width.npy": (np.zeros((3, 0), np.float32), "(3, 0)"),
              "one_dim.npy": (np.ones((32,), np.float32), "(32,)"),
              "three_dims.npy": (np.ones((1, 3, 32), np.float32), "(1, 3, 32)"),
              "inf.npy": (np.full((3, 32), np.inf, np.float32), "infinite")}
  out = []
  for name, (value, needle) in variants.items():
    np.save(tmp_path / name, value)
    out.append((tmp_path / name, needle))
  adapter = tmp_path / "empty_adapter"  # a PEFT prompt-tuning adapter of 0 virtual tokens
  adapter.mkdir()
  save_file({"prompt_embeddings": np.zeros((0, 32), np.float32)},
            str(adapter / "adapter_model.safetensors"))
  (adapter / "adapter_config.json").write_text(json.dumps(
      {"peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 0,
       "token_dim": 32}))
  out.append((adapter, "0"))
  return out


@pytest.mark.parametrize("command", ["export", "eval", "score"])
def test_a_prompt_without_tokens_width_or_finite_values_is_refused(prepared, tmp_path, command,
                                                                  capsys):
  for prompt, needle in _prompt_variants(tmp_path):
    argv = {"export": export("--prompt", str(prompt), "--output", str(tmp_path / "out")),
            "eval": evaluate(f"--gin.PROMPT_FILE='{prompt}'"),
            "score": score("--prompt", str(prompt))}[command]
    line = is_one_line_refusal(argv(prepared), prepared, capsys, (str(prompt),))
    assert needle in line, line
    assert not (tmp_path / "out").exists()
