"""Checks of user-supplied values, each failing as a one-line `UserError`.

Entry points call these before they build a model or write a file, so a bad
value fails in seconds and leaves nothing behind. `name` is what the user
typed (a gin macro, a binding or a flag) and `example` a corrected flag.
"""
import numbers
import os
from typing import Any, Optional

from prompt_tuning import fs
from prompt_tuning.errors import UserError


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value: Any, name: str, example: str) -> int:
  """`value` as an int when it is an integer >= 1."""
  if not _is_int(value) or value < 1:
    raise UserError(f"{name} must be a positive integer, got {value!r}; set e.g. {example}")
  return int(value)


def optional_positive_int(value: Any, name: str, example: str) -> Optional[int]:
  """`value` when it is None or an integer >= 1."""
  if value is None:
    return None
  return positive_int(value, name, f"{example} (or None)")


def positive_number(value: Any, name: str, example: str) -> float:
  """`value` as a float when it is a finite number > 0."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not value > 0 or value == float("inf")):
    raise UserError(f"{name} must be a positive number, got {value!r}; set e.g. {example}")
  return float(value)


def one_of(value: Any, choices, name: str) -> Any:
  if value not in choices:
    raise UserError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
  return value


def output_dir(path: Any, name: str) -> str:
  """`path` when it is, or can be created as, a writable folder (nothing is created).

  Args:
    path: the folder (local or `gs://`; object stores are not checked).
    name: how the user set it, e.g. `MODEL_DIR` or `--output`.
  """
  if not isinstance(path, (str, os.PathLike)) or not str(path):
    raise UserError(f"{name} must be a folder path (a quoted string), got {path!r}")
  path = str(path)
  if fs.is_remote(path):
    return path
  absolute = os.path.abspath(path)
  if os.path.exists(absolute) and not os.path.isdir(absolute):
    raise UserError(f"{name} {path} is a file, not a folder; choose another {name}")
  existing = absolute
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(f"{name} {path} cannot be created: {existing} is a file; choose another {name}")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"{name} {path} is not writable ({existing} does not allow this user to "
                    f"write); choose another {name} or change its permissions")
  return path


def output_file(path: Any, name: str) -> str:
  """`path` when a file can be written there: its folder exists and is writable."""
  path = str(path)
  if fs.is_remote(path):
    return path
  absolute = os.path.abspath(path)
  if os.path.isdir(absolute):
    raise UserError(f"{name} {path} is a folder; give a file name, e.g. {name} "
                    f"{os.path.join(path, 'out.jsonl')}")
  parent = os.path.dirname(absolute)
  if not os.path.isdir(parent):
    raise UserError(f"{name} {path}: folder {parent} does not exist; create it or choose "
                    f"another {name}")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"{name} {path} is not writable ({parent} does not allow this user to "
                    f"write); choose another {name}")
  return path
