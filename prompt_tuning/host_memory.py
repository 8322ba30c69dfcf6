"""Giving the C heap's free memory back to the operating system.

Building the backbone (random init or a checkpoint's host copies) and compiling
a step free hundreds of MB that glibc's malloc keeps mapped for reuse, so the
process stays that large for the whole run. `malloc_trim(0)` unmaps the free
pages (docs/performance.md, "Memory").
"""
import ctypes
import ctypes.util
import functools
from typing import Optional


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[ctypes._CFuncPtr]:
  name = ctypes.util.find_library("c")
  try:
    return ctypes.CDLL(name).malloc_trim if name else None
  except (OSError, AttributeError):  # not glibc (musl, macOS): they return free memory themselves
    return None


def release_free_memory() -> bool:
  """Unmaps the heap's free pages (glibc); False where there is no `malloc_trim`."""
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True
