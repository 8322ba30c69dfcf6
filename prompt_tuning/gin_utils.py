"""Gin plumbing shared by the gin-driven commands (T5X-style flags).

`--gin_file` (repeatable), `--gin.KEY=VALUE`, `--gin_search_paths` and
`--tfds_data_dir`, as in T5X; the package's `configs/` folder is always on the
search path, so `--gin_file=runs/prompt_finetune.gin` works from anywhere.
This module knows no configurable: which modules define them, and the
commands' gin setup that imports them all, is `prompt_tuning.configurables`.

The reference code's spelling of the same files also resolves:
`--gin_file=prompt_tuning/configs/models/t5_1_1_base_prompt.gin` (with or
without `--gin_search_paths` pointing at the folder above the package, as the
reference scripts build it with `python -m prompt_tuning.scripts.find_module`)
names `configs/models/t5_1_1_base_prompt.gin` of this package, from a checkout
or an installed wheel, on the command line or in a gin `include`.
"""
import logging
import os
from typing import Callable, Iterable, Optional, Sequence

import gin

from prompt_tuning import gin_checks, multihost, t5x_settings
from prompt_tuning.errors import UserError

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# How the reference code (and T5X users) name this package's gin files.
PACKAGE_CONFIGS_PREFIX = "prompt_tuning/configs/"
# T5X's names for macros that have another name here; binding the T5X name sets ours.
T5X_MACRO_ALIASES = {"CHECKPOINT_PATH": "INITIAL_CHECKPOINT_PATH"}


def package_configs_dir() -> str:
  """The installed `prompt_tuning/configs` (the repo's top-level `configs/` in a checkout)."""
  try:
    import prompt_tuning.configs as configs
    return os.path.dirname(os.path.abspath(configs.__file__))
  except ImportError:
    return CONFIGS_DIR


def package_config_path(name: str) -> Optional[str]:
  """The file of this package that a reference-style name means, or None.

  `prompt_tuning/configs/REST`, alone or after any folder (a `--gin_search_paths`
  entry joined to it), means `configs/REST` of this package when that exists.
  """
  normalized = name.replace(os.sep, "/")
  at = normalized.rfind(PACKAGE_CONFIGS_PREFIX)
  if at < 0 or (at > 0 and normalized[at - 1] != "/"):
    return None
  path = os.path.join(package_configs_dir(), normalized[at + len(PACKAGE_CONFIGS_PREFIX):])
  return path if os.path.isfile(path) else None


def _open_package_config(name: str):
  return open(package_config_path(name))


def _is_package_config(name: str) -> bool:
  return not os.path.exists(name) and package_config_path(name) is not None


# Gin tries its readers in order, the plain `open` first: a file that exists at
# the given path is read from there; otherwise a reference-style name is mapped.
gin.config.register_file_reader(_open_package_config, _is_package_config)


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Iterable[str] = ()) -> None:
  """Parses gin files and bindings, turning gin's errors into one-line UserErrors.

  The configurables the files and bindings name must be imported already
  (`configurables.parse` imports every module defining one first).

  Args:
    gin_files: gin files, looked up in ., the package's configs/ and `search_paths`.
    bindings: `KEY = VALUE` strings (the user's `--gin.KEY=VALUE` flags). A
      macro they bind that nothing in the parsed configuration reads is an
      error naming the closest macro that is read (a misspelled macro would
      otherwise be ignored).
    search_paths: extra folders for gin files and includes.
  """
  gin.clear_config()
  bindings = t5x_settings.rewrite_flags(bindings)
  for path in [package_configs_dir(), *[p for p in search_paths if p]]:
    gin.add_config_file_search_path(path)
  for f in gin_files:
    if not _gin_file_exists(f, search_paths):
      raise UserError(f"gin file {f} not found (searched ., {package_configs_dir()}"
                      f"{', ' + ', '.join(search_paths) if search_paths else ''}); check --gin_file")
  gin_checks.check_binding_syntax(bindings)
  # gin logs an ERROR for every search path that lacks an included file; only
  # a file found nowhere is an error, which gin then raises.
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
  except gin_checks.PARSE_ERRORS as e:
    raise UserError(t5x_settings.user_names(gin_checks.explain(e, bindings))) from None
  finally:
    root.setLevel(level)
  _apply_t5x_macro_aliases()
  # T5X's setting names (utils.DatasetConfig, PjitPartitioner, ...) become ours or are refused.
  set_by_t5x = t5x_settings.apply(bindings)
  _check_required_macros()
  gin_checks.check_flag_macros(bindings, package_configs_dir(), T5X_MACRO_ALIASES, set_by_t5x)


_UNBOUND = object()


def _macro_value(name: str):
  """The value bound to macro `name`: `gin.REQUIRED` when required, `_UNBOUND` when unbound."""
  params = gin.config._CONFIG.get((name, "gin.macro"))  # pylint: disable=protected-access
  if params is None or "value" not in params:
    return _UNBOUND
  value = params["value"]
  if getattr(value, "config_key", None) == ("gin.REQUIRED", "gin.constant"):
    return gin.REQUIRED
  return value


def _apply_t5x_macro_aliases() -> None:
  """Binds our macro from its T5X name (e.g. eval's CHECKPOINT_PATH -> INITIAL_CHECKPOINT_PATH).

  Both set to different values is an error; a T5X name is never ignored.
  """
  for t5x_name, ours in T5X_MACRO_ALIASES.items():
    t5x_value = _macro_value(t5x_name)
    if t5x_value is _UNBOUND or t5x_value is gin.REQUIRED:
      continue
    our_value = _macro_value(ours)
    if our_value is _UNBOUND or our_value is gin.REQUIRED:
      with gin.unlock_config():
        gin.bind_parameter(f"{ours}/gin.macro.value", t5x_value)
    elif our_value != t5x_value:
      raise UserError(f"{t5x_name} ({t5x_value!r}) and {ours} ({our_value!r}) name different "
                      f"checkpoints; {t5x_name} is T5X's name for {ours}: set only one")


def _check_required_macros() -> None:
  """Names every macro still bound to `%gin.REQUIRED` that something reads (gin would pass a
  sentinel on). One that nothing reads any more is no error, as in gin: e.g. eval's
  MIXTURE_OR_TASK_NAME when T5X's `utils.DatasetConfig.mixture_or_task_name` names the task."""
  missing = []
  read = gin_checks.referenced_macros()
  for (name, selector), params in list(gin.config._CONFIG.items()):  # pylint: disable=protected-access
    if selector == "gin.macro" and name in read:
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
  return any(os.path.exists(c) for c in candidates) or package_config_path(name) is not None


def call(fn: Callable, *args, **kwargs):
  """Calls a gin-configured function, reporting missing/unknown bindings as UserErrors."""
  try:
    return fn(*args, **kwargs)
  except RuntimeError as e:  # gin: "Required bindings for `train` not provided in config: [...]"
    message = str(e)
    if "Required bindings" not in message:
      raise
    name = getattr(fn, "__name__", "the command")
    missing = message[message.find("["):].split("\n")[0] if "[" in message else ""
    raise UserError(f"gin configuration incomplete: {name} has no binding for {missing}; add the "
                    f"run's gin file (e.g. --gin_file=runs/prompt_finetune.gin), which binds them "
                    "to macros such as MODEL_DIR") from None
  except TypeError as e:
    message = str(e)
    if "Required bindings" in message or "gin" in message.lower() and "binding" in message.lower():
      raise UserError(f"gin configuration incomplete: {gin_checks.one_line(e)}; add the missing macro "
                      "(e.g. --gin.MODEL_DIR=\"'/tmp/run'\")") from None
    raise


def add_gin_arguments(parser) -> None:
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable), e.g. models/t5_1_1_base_prompt.gin; relative "
                      "names are looked up in the package's configs/ and --gin_search_paths "
                      "(the reference's prompt_tuning/configs/... names work too)")
  parser.add_argument("--gin_search_paths", default="",
                      help="comma-separated extra folders for gin files")
  parser.add_argument("--tfds_data_dir", default=None,
                      help="TFDS data directory (local or gs://), as T5X's flag; default: "
                      "$TFDS_DATA_DIR, else ~/tensorflow_datasets")
  multihost.add_arguments(parser)  # --distributed, --coordinator_address, ...


def set_tfds_data_dir(path: Optional[str]) -> None:
  """Where every TFDS dataset is read (and prepared), as T5X's `--tfds_data_dir` does."""
  if not path:
    return
  from prompt_tuning import fs  # pylint: disable=g-import-not-at-top
  fs.check_reachable(path, "pass a local --tfds_data_dir (TFDS data prepared or copied there), "
                     "or the tasks' official files with --gin.DATA_DIR")
  import seqio
  seqio.set_tfds_data_dir_override(path)
  # Our own TFDS look-ups (`tfds.builder(...)` without data_dir) follow the same folder.
  os.environ["TFDS_DATA_DIR"] = path


GIN_HELP = """\
gin flags (as in T5X):
  --gin_file=FILE        a gin file (repeatable; later files override earlier ones)
  --gin.KEY=VALUE        one binding, e.g. --gin.TRAIN_STEPS=1_150_000 or
                         --gin.MODEL_DIR="'/tmp/run'" (strings in quotes)
  --gin_search_paths=A,B more folders to look for gin files in
"""
