"""Reading `.npy` arrays from users, never unpickling, with one-line errors.

A prompt file is user input: it may be missing, a folder, another format, a
truncated copy, or a `.npy` of pickled Python objects (loading those runs
arbitrary code, so they are refused, never loaded). Each case is told apart
so the message says what the file actually is.
"""
import numpy as np

from prompt_tuning import fs
from prompt_tuning.errors import UserError

NPY_MAGIC = b"\x93NUMPY"


def load_array(path: str, what: str, way_out: str) -> np.ndarray:
  """The numeric array saved at `path` by `np.save`.

  Args:
    path: a `.npy` file (local or `gs://`).
    what: how messages name it, e.g. `prompt file`.
    way_out: the end of every message: what to pass instead.

  Raises:
    UserError: the file is missing, not a `.npy` file, pickled, unreadable or
      not numeric.
  """
  try:
    with fs.open_file(path, "rb") as f:
      head = f.read(len(NPY_MAGIC))
      if head[:1] == b"\x80":  # the pickle protocol's first byte
        raise UserError(f"{what} {path} is a pickle (never loaded here: unpickling could run "
                        f"arbitrary code); {way_out}")
      if head != NPY_MAGIC:
        raise UserError(f"{what} {path} is not a .npy file (it does not start with the .npy "
                        f"header); {way_out}")
      f.seek(0)
      value = np.load(f, allow_pickle=False)
  except UserError:
    raise
  except FileNotFoundError:
    raise UserError(f"{what} {path} does not exist; {way_out}") from None
  except IsADirectoryError:
    raise UserError(f"{what} {path} is a folder, not a .npy file; {way_out}") from None
  except ValueError as e:
    if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
      raise UserError(f"{what} {path} holds pickled Python objects, which are never loaded (that "
                      f"could run arbitrary code); {way_out}") from None
    raise UserError(f"{what} {path} is a damaged .npy file ({_first_line(e)}); {way_out}") from None
  except (EOFError, OSError) as e:
    raise UserError(f"{what} {path} cannot be read ({_first_line(e)}); {way_out}") from None
  if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
    raise UserError(f"{what} {path} holds {value.dtype} values, not numbers; {way_out}")
  return value


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__
