"""Reading `.npy` and `.npz` arrays, never unpickling, never trusting a header, one-line errors.

A prompt file is user input: it may be missing, a folder, another format, a
truncated copy, or a `.npy` of pickled Python objects (loading those runs
arbitrary code, so they are refused, never loaded). Each case is told apart
so the message says what the file actually is. The header's shape is checked
against the bytes the file holds before anything is allocated: a 192-byte file
whose header claims `(10**9, 32)` would otherwise make numpy reserve 119 GiB.
"""
import zipfile
from typing import BinaryIO, Dict

import numpy as np

from prompt_tuning import fs
from prompt_tuning.errors import UserError

NPY_MAGIC = b"\x93NUMPY"
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _checked_header(f: BinaryIO, data_bytes: int, what: str, way_out: str) -> None:
  """Reads the `.npy` header at `f`'s position; refuses one whose array is not exactly the
  `data_bytes` that follow it (a damaged header, or a truncated or padded file)."""
  version = np.lib.format.read_magic(f)
  if version not in _HEADER_READERS:
    raise UserError(f"{what} is a .npy file of format version {version}, which is not read "
                    f"here; {way_out}")
  shape, _, dtype = _HEADER_READERS[version](f)
  if dtype.hasobject:
    raise ValueError("object arrays cannot be loaded when allow_pickle=False")
  expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
  held = data_bytes - f.tell()
  if expected != held:
    raise UserError(f"{what} is a damaged .npy file: its header says shape {tuple(shape)} of "
                    f"{dtype} ({expected:,} bytes), but {held:,} bytes follow it; {way_out}")


def load_array(path: str, what: str, way_out: str) -> np.ndarray:
  """The numeric array saved at `path` by `np.save`.

  Args:
    path: a `.npy` file (local or `gs://`).
    what: how messages name it, e.g. `prompt file`.
    way_out: the end of every message: what to pass instead.

  Raises:
    UserError: the file is missing, not a `.npy` file, pickled, damaged (its
      header disagrees with its size), unreadable or not numeric.
  """
  named = f"{what} {path}"
  try:
    with fs.open_file(path, "rb") as f:
      head = f.read(len(NPY_MAGIC))
      if head[:1] == b"\x80":  # the pickle protocol's first byte
        raise UserError(f"{named} is a pickle (never loaded here: unpickling could run "
                        f"arbitrary code); {way_out}")
      if head != NPY_MAGIC:
        raise UserError(f"{named} is not a .npy file (it does not start with the .npy "
                        f"header); {way_out}")
      f.seek(0)
      _checked_header(f, fs.size(path), named, way_out)
      f.seek(0)
      value = np.load(f, allow_pickle=False)
  except UserError:
    raise
  except FileNotFoundError:
    raise UserError(f"{named} does not exist; {way_out}") from None
  except IsADirectoryError:
    raise UserError(f"{named} is a folder, not a .npy file; {way_out}") from None
  except ValueError as e:
    raise _unreadable_values(named, "a damaged .npy file", e, way_out) from None
  except (EOFError, OSError) as e:
    raise UserError(f"{named} cannot be read ({_first_line(e)}); {way_out}") from None
  _check_numeric(value, named, way_out)
  return value


def _unreadable_values(named: str, damaged: str, error: ValueError, way_out: str) -> UserError:
  """numpy's ValueError on reading arrays, as one line: pickled objects (refused, never loaded)
  or a damaged file."""
  if "pickle" in str(error).lower() or "object arrays" in str(error).lower():
    return UserError(f"{named} holds pickled Python objects, which are never loaded (that "
                     f"could run arbitrary code); {way_out}")
  return UserError(f"{named} is {damaged} ({_first_line(error)}); {way_out}")


def load_npz(path: str, what: str, way_out: str) -> Dict[str, np.ndarray]:
  """The numeric arrays of an `np.savez` archive, each header checked against its entry's size
  (and the entries' sizes against the archive's) before it is read; the zip's CRCs are checked."""
  named = f"{what} {path}"
  try:
    total = fs.size(path)
    with fs.open_file(path, "rb") as raw, zipfile.ZipFile(raw) as archive:
      arrays = {}
      for info in archive.infolist():
        name = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else info.filename
        if info.compress_size > total or (info.compress_type == zipfile.ZIP_STORED
                                          and info.file_size != info.compress_size):
          raise UserError(f"{named} is damaged: entry {name!r} claims {info.file_size:,} bytes "
                          f"in an archive of {total:,}; {way_out}")
        with archive.open(info) as member:
          _checked_header(member, info.file_size, f"{named} (entry {name!r})", way_out)
        with archive.open(info) as member:
          arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
        _check_numeric(arrays[name], f"{named} (entry {name!r})", way_out)
      return arrays
  except UserError:
    raise
  except FileNotFoundError:
    raise UserError(f"{named} does not exist; {way_out}") from None
  except ValueError as e:
    raise _unreadable_values(named, "damaged", e, way_out) from None
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise UserError(f"{named} is damaged or unreadable ({_first_line(e)}); {way_out}") from None


def _check_numeric(value: np.ndarray, named: str, way_out: str) -> None:
  if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
    raise UserError(f"{named} holds {value.dtype} values, not numbers; {way_out}")


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__
