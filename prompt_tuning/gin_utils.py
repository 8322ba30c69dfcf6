"""Gin plumbing shared by the gin-driven commands (T5X-style flags).

`--gin_file` (repeatable), `--gin.KEY=VALUE` and `--gin_search_paths`; the
package's `configs/` folder is always on the search path, so
`--gin_file=runs/prompt_finetune.gin` works from anywhere.
"""
import logging
import os
from typing import Callable, Iterable, Sequence

import gin

from prompt_tuning.errors import UserError

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def package_configs_dir() -> str:
  """The installed `prompt_tuning/configs` (the repo's top-level `configs/` in a checkout)."""
  try:
    import prompt_tuning.configs as configs
    return os.path.dirname(os.path.abspath(configs.__file__))
  except ImportError:
    return CONFIGS_DIR


def register_configurables() -> None:
  """Imports every module that defines gin configurables (an import error is an error)."""
  # pylint: disable=unused-import,g-import-not-at-top
  from prompt_tuning.models import config  # noqa: F401
  from prompt_tuning.prompts import ensemble, initializers, prompt  # noqa: F401
  from prompt_tuning.train import (eval_run, evaluation, initialize, optim, partitioning,  # noqa: F401
                                   step, trainable, trainer)
  from prompt_tuning.methods import residual  # noqa: F401
  from prompt_tuning.methods.infoprompt import term  # noqa: F401
  from prompt_tuning.methods.xprompt import driver, masks  # noqa: F401
  from prompt_tuning.demo import experiment  # noqa: F401
  from prompt_tuning.tasks import sources  # noqa: F401  (local_data_dir for DATA_DIR)
  from prompt_tuning.methods.apet import baselines, selection  # noqa: F401


def _one_line(error: Exception) -> str:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  where = next((l for l in lines if l.startswith("In file") or l.startswith("In bindings")), "")
  return f"{lines[0] if lines else type(error).__name__} {where}".strip()


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Iterable[str] = ()) -> None:
  """Parses gin files and bindings, turning gin's errors into one-line UserErrors."""
  register_configurables()
  gin.clear_config()
  for path in [package_configs_dir(), *[p for p in search_paths if p]]:
    gin.add_config_file_search_path(path)
  for f in gin_files:
    if not _gin_file_exists(f, search_paths):
      raise UserError(f"gin file {f} not found (searched ., {package_configs_dir()}"
                      f"{', ' + ', '.join(search_paths) if search_paths else ''}); check --gin_file")
  # gin logs an ERROR for every search path that lacks an included file; only
  # a file found nowhere is an error, which gin then raises.
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
  except (ValueError, KeyError, SyntaxError, ImportError, IOError, TypeError) as e:
    raise UserError(f"bad gin configuration: {_one_line(e)}; fix the gin file or --gin.* binding") from None
  finally:
    root.setLevel(level)
  _check_required_macros()


def _check_required_macros() -> None:
  """Names every macro still bound to `%gin.REQUIRED` (gin would pass a sentinel on)."""
  missing = []
  for (name, selector), params in list(gin.config._CONFIG.items()):  # pylint: disable=protected-access
    if selector == "gin.macro":
      value = params.get("value")
      if getattr(value, "config_key", None) == ("gin.REQUIRED", "gin.constant"):
        missing.append(name)
  if missing:
    missing.sort()
    example = missing[0]
    raise UserError(f"required gin macro(s) not set: {', '.join(missing)}; pass e.g. "
                    f"--gin.{example}=VALUE (strings in quotes: --gin.MODEL_DIR=\"'/tmp/run'\")")


def _gin_file_exists(name: str, search_paths: Iterable[str]) -> bool:
  candidates = [name, os.path.join(package_configs_dir(), name)]
  candidates += [os.path.join(p, name) for p in search_paths if p]
  return any(os.path.exists(c) for c in candidates)


def call(fn: Callable, *args, **kwargs):
  """Calls a gin-configured function, reporting missing/unknown bindings as UserErrors."""
  try:
    return fn(*args, **kwargs)
  except TypeError as e:
    message = str(e)
    if "Required bindings" in message or "gin" in message.lower() and "binding" in message.lower():
      raise UserError(f"gin configuration incomplete: {_one_line(e)}; add the missing macro "
                      "(e.g. --gin.MODEL_DIR=\"'/tmp/run'\")") from None
    raise


def add_gin_arguments(parser) -> None:
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable); relative names are looked up in the package's "
                      "configs/ and --gin_search_paths")
  parser.add_argument("--gin_search_paths", default="",
                      help="comma-separated extra folders for gin files")
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() first (multi-host TPU/GPU)")


def setup_from_args(args) -> None:
  """Parses gin flags from an argparse namespace (after `add_gin_arguments`)."""
  if getattr(args, "distributed", False):
    import jax
    jax.distributed.initialize()
  paths = [p for p in args.gin_search_paths.split(",") if p]
  parse(args.gin_file, getattr(args, "gin_bindings", []), paths)


def gin_command(function: Callable):
  """`(add_arguments, run)` of a subcommand that calls a gin-configured function.

  Used by `commands/{train,evaluate,infer}.py`, which differ only in the target.
  """
  def add_arguments(parser) -> None:
    add_gin_arguments(parser)

  def run(args) -> int:
    setup_from_args(args)
    call(function)
    return 0

  return add_arguments, run
