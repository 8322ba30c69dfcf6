"""The modules that define gin configurables, and the gin setup that imports them all.

A gin file of `configs/` or a `--gin.X=Y` flag may name any configurable of the
package, so every module defining one is imported before anything is parsed
(`register`; an import error is an error, never a configurable silently
missing). This module sits above all of them, so none can import it back: the
commands parse through `setup_from_args` (or `gin_command`), and scripts and
tests through `parse`. Drivers that parse once per run inside a command (the
demo, the sweep) use `gin_utils.parse`: their command registered everything.
The demo's and the sweep's own configurables are imported by their gin files
(`runs/demo.gin`, `runs/sweep.gin`).
"""
import sys
from typing import Callable, Iterable, Sequence

from prompt_tuning import gin_utils, multihost
from prompt_tuning.errors import UserError


def register() -> None:
  """Imports every module that defines gin configurables."""
  # pylint: disable=unused-import,g-import-not-at-top
  from prompt_tuning.models import config  # noqa: F401
  from prompt_tuning.data import task_tokens  # noqa: F401
  from prompt_tuning.prompts import ensemble, initializers, multitask, prompt  # noqa: F401
  from prompt_tuning.train import (eval_run, evaluation, initialize, optim, partitioning,  # noqa: F401
                                   step, trainable, trainer)
  from prompt_tuning.methods import residual  # noqa: F401
  from prompt_tuning.methods.infoprompt import generated_prompt, term  # noqa: F401
  from prompt_tuning.methods.xprompt import driver, masks  # noqa: F401
  from prompt_tuning.tasks import sources  # noqa: F401  (local_data_dir for DATA_DIR)
  from prompt_tuning.methods.apet import baselines, selection  # noqa: F401
  from prompt_tuning import t5x_settings  # noqa: F401  (T5X's names: DatasetConfig, ...)


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Iterable[str] = ()) -> None:
  """`gin_utils.parse` after `register`."""
  register()
  gin_utils.parse(gin_files, bindings, search_paths)


def setup_from_args(args) -> None:
  """Parses gin flags from an argparse namespace (after `gin_utils.add_gin_arguments`)."""
  multihost.initialize(args)
  gin_utils.set_tfds_data_dir(getattr(args, "tfds_data_dir", None))
  paths = [p for p in args.gin_search_paths.split(",") if p]
  parse(args.gin_file, getattr(args, "gin_bindings", []), paths)


def gin_command(function: Callable, required_macros: Sequence[str] = (),
                example: str = ""):
  """`(add_arguments, run)` of a subcommand that calls a gin-configured function.

  Used by `commands/{train,evaluate,infer}.py`, which differ only in the target.

  Args:
    function: the gin-configured entry point.
    required_macros: the macros the command's run gin file leaves to the user
      (named by `--help` and when no gin file is given).
    example: a complete example command line, for `--help` and the usage line.
  """
  def add_arguments(parser) -> None:
    import argparse
    gin_utils.add_gin_arguments(parser)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (gin_utils.GIN_HELP + (f"\nrequired macros: {', '.join(required_macros)}\n"
                                           if required_macros else "")
                     + (f"\nexample:\n  {example}\n" if example else ""))

  def run(args) -> int:
    if not args.gin_file:
      usage = example or f"prompt-tuning {function.__name__} --gin_file=FILE --gin.KEY=VALUE"
      print(f"usage: {' '.join(usage.split())}", file=sys.stderr)
      raise UserError(f"no --gin_file given: pass the model's and the run's gin files and set the "
                      f"required macros {', '.join(required_macros) or '(see --help)'} with "
                      "--gin.NAME=VALUE; see --help")
    setup_from_args(args)
    gin_utils.call(function)
    return 0

  return add_arguments, run
