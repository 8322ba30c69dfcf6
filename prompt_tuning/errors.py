"""The one error type users see.

Every failure a user can cause (a bad path, binding, task name or shape) is
raised as `UserError` with a message that names the thing and a way out. The
CLI prints it as a single line and exits non-zero; library callers can catch it.
"""
import difflib
from typing import Iterable


class UserError(Exception):
  """A failure caused by the user's input, reported as one line."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


def closest(name: str, candidates: Iterable[str], n: int = 5) -> str:
  """A ' Did you mean: a, b?' suffix listing the closest candidates, or ''."""
  matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
  return f" Did you mean: {', '.join(matches)}?" if matches else ""
