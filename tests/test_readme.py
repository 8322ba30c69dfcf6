"""The README a newcomer reads first: short, the two commands on top, every command well-formed."""
import os
import re
import shlex

import pytest

from prompt_tuning import cli, configurables
from prompt_tuning.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def _readme() -> str:
  with open(os.path.join(REPO, "README.md")) as f:
    return f.read()


def readme_commands(text: str) -> list:
  """Every command of the README's ```sh blocks, continuation lines joined, as argv lists."""
  commands = []
  for block in re.findall(r"```sh\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split(" #")[0].strip()
      if line:
        commands.append(shlex.split(line))
  return commands


def test_the_readme_is_short_and_starts_with_the_two_commands():
  text = _readme()
  assert len(text.splitlines()) <= 200
  commands = readme_commands(text)
  assert commands[:2] == [["make", "demo"], ["make", "test"]]
  lines = text.splitlines()
  assert next(i for i, line in enumerate(lines) if line.startswith("make test")) < 40


def test_every_readme_link_to_a_file_of_the_repository_exists():
  for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", _readme()):
    assert os.path.exists(os.path.join(REPO, target)) or target.startswith("../"), target


@pytest.mark.parametrize("argv", [c for c in readme_commands(_readme())
                                  if c[0] == "prompt-tuning"], ids=lambda c: c[1])
def test_every_readme_command_names_real_flags_gin_files_and_macros(argv):
  name = argv[1]
  assert name in cli.COMMANDS
  parser = cli._Parser(prog=f"prompt-tuning {name}")  # pylint: disable=protected-access
  cli.command_module(name).add_arguments(parser)
  rest, bindings = cli.split_gin_flags(argv[2:])
  args = parser.parse_args(rest)  # a flag the command does not have is a UserError
  gin_files = getattr(args, "gin_file", None)
  if gin_files:
    for f in gin_files:
      assert os.path.exists(os.path.join(CONFIGS, f)), f
    # A misspelled or unread macro, or a binding gin cannot apply, is a UserError here.
    configurables.parse(gin_files, bindings)


def test_a_readme_command_with_a_misspelled_macro_would_fail():
  with pytest.raises(UserError, match="TRAIN_STEP"):
    configurables.parse(["models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin"],
                        ["TRAIN_STEP = 4", "MODEL_DIR = '/tmp/x'",
                         "MIXTURE_OR_TASK_NAME = 'toy_parity'", "INITIAL_CHECKPOINT_PATH = None"])
