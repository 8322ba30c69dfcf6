"""Checks of user-supplied values, each failing as a one-line `UserError`.

Entry points call these before they build a model or write a file, so a bad
value fails in seconds and leaves nothing behind. `name` is what the user
typed (a gin macro, a binding or a flag) and `example` a corrected flag.
Numeric command-line flags are parsed by `int_flag` / `float_flag`, so every
flag of every command has a range and refuses NaN and infinities where it is read.
"""
import argparse
import math
import numbers
import os
from typing import Any, Callable, Optional

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
  return number(value, name, example, above=0, what="a positive number")


def _range_text(at_least=None, above=None, at_most=None, below=None) -> str:
  parts = [f">= {at_least:g}" if at_least is not None else "",
           f"> {above:g}" if above is not None else "",
           f"<= {at_most:g}" if at_most is not None else "",
           f"< {below:g}" if below is not None else ""]
  return " and ".join(p for p in parts if p)


def _out_of_range(value: float, at_least=None, above=None, at_most=None, below=None) -> bool:
  return ((at_least is not None and value < at_least) or (above is not None and value <= above)
          or (at_most is not None and value > at_most) or (below is not None and value >= below))


def number(value: Any, name: str, example: str, *, at_least: Optional[float] = None,
           above: Optional[float] = None, at_most: Optional[float] = None,
           below: Optional[float] = None, what: Optional[str] = None) -> float:
  """`value` as a float when it is a finite real number in the given range.

  NaN and infinities are refused whatever the range (`1e400` in a gin file is
  inf): a learning rate, a rate or a temperature of either means nothing.
  `what` names the range in the message (default: the bounds).
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise UserError(f"{name} must be a number, got {value!r}; set e.g. {example}")
  bounds = _range_text(at_least, above, at_most, below)
  if not math.isfinite(value) or _out_of_range(value, at_least, above, at_most, below):
    shown = what or ("a finite number" + (f" {bounds}" if bounds else ""))
    raise UserError(f"{name} must be {shown}, got {value!r}; set e.g. {example}")
  return float(value)


# JAX without 64-bit mode keeps the low 32 bits of a seed (PRNGKey(2**32) == PRNGKey(0)), so a
# larger or negative seed would silently repeat another run's randomness; numpy's limit too.
SEED_LIMIT = 2 ** 32


def seed(value: Any, name: str, example: str) -> int:
  """`value` when it is an integer seed in [0, 2**32) (see `SEED_LIMIT`)."""
  if not _is_int(value) or not 0 <= value < SEED_LIMIT:
    raise UserError(f"{name} must be an integer in [0, 2**32 - 1] (JAX keeps 32 bits of a seed, "
                    f"so others would repeat one of those), got {value!r}; set e.g. {example}")
  return int(value)


# ---- command-line flags: argparse `type=` functions, so the range is checked as it is parsed --


def int_flag(at_least: int, at_most: Optional[int] = None) -> Callable[[str], int]:
  """An argparse `type` for an integer flag in [at_least, at_most]."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if _out_of_range(value, at_least=at_least, at_most=at_most):
      raise argparse.ArgumentTypeError(
          f"must be an integer {_range_text(at_least=at_least, at_most=at_most)}, got {value}")
    return value
  parse.bounds = dict(at_least=at_least, at_most=at_most)
  return parse


def float_flag(*, at_least: Optional[float] = None, above: Optional[float] = None,
               at_most: Optional[float] = None,
               below: Optional[float] = None) -> Callable[[str], float]:
  """An argparse `type` for a finite number flag in the given range (NaN, inf refused)."""
  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or _out_of_range(value, at_least, above, at_most, below):
      bounds = _range_text(at_least, above, at_most, below)
      raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text}")
    return value
  parse.bounds = dict(at_least=at_least, above=above, at_most=at_most, below=below)
  return parse


SEED_FLAG = int_flag(0, SEED_LIMIT - 1)


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
