"""`prompt-tuning` command line: one subcommand per module in `commands/`.

Subcommand modules are imported only when they run (`command_module`), so
`prompt-tuning --help` stays fast.
Each module defines `add_arguments(parser)` and `run(args) -> int | None`.
Gin-driven commands also accept T5X-style `--gin_file=F` (repeatable),
`--gin.KEY=VALUE`, `--gin_search_paths=a,b` and `--tfds_data_dir=D`.
"""
import argparse
import errno
import os
import sys
from typing import List, Optional, Sequence

from prompt_tuning.errors import UserError

# name -> one-line help
COMMANDS = {
    "convert": "convert a T5X or Hugging Face checkpoint into a backbone folder",
    "score": "log-likelihood of targets given inputs (rank classification)",
    "generate": "greedy / beam / sampled decoding of inputs",
    "train": "prompt-tune a frozen backbone (gin-driven)",
    "eval": "evaluate saved prompts on a task or mixture (gin-driven)",
    "infer": "write predictions of a saved prompt (gin-driven)",
    "xprompt": "XPrompt: tune, prune, rewind (gin-driven)",
    "tasks": "list registered SeqIO tasks or show examples",
    "demo": "the self-contained CPU demo",
    "bench": "time a prompt-tuning train step",
    "plan": "per-device memory of a run, without allocating",
    "export": "write a tuned prompt or LoRA run as a Hugging Face PEFT adapter",
    "sweep": "PET methods at parameter budgets: table, figure, thresholds (gin-driven)",
}


def command_module(name: str):
  """The module of subcommand `name`: `add_arguments(parser)` and `run(args) -> int | None`."""
  # pylint: disable=g-import-not-at-top
  match name:
    case "convert":
      from prompt_tuning.commands import convert as module
    case "score":
      from prompt_tuning.commands import score as module
    case "generate":
      from prompt_tuning.commands import generate as module
    case "train":
      from prompt_tuning.commands import train as module
    case "eval":
      from prompt_tuning.commands import evaluate as module
    case "infer":
      from prompt_tuning.commands import infer as module
    case "xprompt":
      from prompt_tuning.commands import xprompt as module
    case "tasks":
      from prompt_tuning.commands import tasks as module
    case "demo":
      from prompt_tuning.commands import demo as module
    case "bench":
      from prompt_tuning.commands import bench as module
    case "plan":
      from prompt_tuning.commands import plan as module
    case "export":
      from prompt_tuning.commands import export as module
    case "sweep":
      from prompt_tuning.commands import sweep as module
    case _:
      raise KeyError(name)
  return module


def split_gin_flags(argv: Sequence[str]) -> tuple[List[str], List[str]]:
  """Separates `--gin.KEY=VALUE` flags (returned as 'KEY=VALUE') from the rest."""
  rest, bindings = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--gin.") and not arg.startswith("--gin_"):
      body = arg[len("--gin."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise UserError(f"flag {arg} has no value; write --gin.{body}=VALUE")
        body = f"{body}={argv[i + 1]}"
        i += 1
      bindings.append(body)
    else:
      rest.append(arg)
    i += 1
  return rest, bindings


_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM,
                       errno.EROFS)


class _Parser(argparse.ArgumentParser):
  """An argument parser whose errors are one `error:` line, like every other failure."""

  def error(self, message: str):
    raise UserError(f"{self.prog}: {message}; see '{self.prog} --help'")


def _quiet_native_logging():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _import_tensorflow_quietly():
  """Imports TensorFlow (used for data only) with its native start-up chatter hidden.

  TF's C++ logging writes INFO lines to fd 2 before it reads TF_CPP_MIN_LOG_LEVEL,
  so fd 2 is pointed at /dev/null for the import. TF must not claim GPUs that
  JAX uses, as in T5X.
  """
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.config.set_visible_devices([], "GPU")
  except ImportError:
    pass
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def main(argv: Optional[Sequence[str]] = None) -> None:
  _quiet_native_logging()
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="prompt-tuning", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, help_text in COMMANDS.items():
    sub.add_parser(name, help=help_text, add_help=False)
  if not argv or argv[0] in ("-h", "--help"):
    parser.print_help()
    sys.exit(0 if argv else 2)
  name = argv[0]
  if name not in COMMANDS:
    from prompt_tuning.errors import closest
    print(f"error: unknown command {name!r}.{closest(name, COMMANDS)} "
          f"Run 'prompt-tuning --help' for the list.", file=sys.stderr)
    sys.exit(2)
  # Most command modules import TensorFlow (data), `--help` included: quietly, first.
  # `bench` reads no data and measures the step's memory: no TensorFlow there.
  if name != "bench":
    _import_tensorflow_quietly()
  module = command_module(name)
  cmd_parser = _Parser(prog=f"prompt-tuning {name}", description=COMMANDS[name])
  module.add_arguments(cmd_parser)
  try:
    rest, bindings = split_gin_flags(argv[1:])
    args = cmd_parser.parse_args(rest)
    args.gin_bindings = bindings
    code = module.run(args)
  except UserError as e:
    # gin appends "In call to configurable ..." lines to errors raised inside
    # configured functions; the first line is the message.
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:
    # A full disk, a file-size limit or a missing permission is the machine's state, never a
    # bug: one line naming the path. Other OSErrors keep their traceback.
    if type(e).__dict__.get("__getattr__"):  # gin's re-raised proxy: the original's fields
      e = OSError(e.__getattr__("errno"), e.__getattr__("strerror"), e.__getattr__("filename"))
    if e.errno not in _ENVIRONMENT_ERRNOS:
      raise
    from prompt_tuning import fs  # pylint: disable=g-import-not-at-top
    print(f"error: {fs.io_error(e.filename or 'a file', e, 'access')}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)
  sys.exit(code or 0)
