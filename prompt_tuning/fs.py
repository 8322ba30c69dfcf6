"""File-system helpers for local paths and object stores (`gs://...`), in one place.

Remote paths go through `tf.io.gfile` (TensorFlow is already a dependency of
SeqIO); local paths use the standard library. Writes of run outputs (JSON,
`.npy`, `.npz`) are atomic locally (write, then rename) and whole-object on
object stores, and happen on the first JAX process only.
"""
import concurrent.futures
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional

import jax

from prompt_tuning.errors import UserError


def is_remote(path: str) -> bool:
  """Whether `path` is a URL such as `gs://bucket/dir` rather than a local path."""
  return "://" in str(path)


# Where `gs://` objects are served. Without network, TensorFlow's and tensorstore's GCS
# clients retry for minutes and then end in a long traceback; one short connection attempt
# first fails in seconds instead. PROMPT_TUNING_GCS_PROBE=host:port probes another endpoint
# (tests: a closed local port, an unreachable "bucket" without relying on the network).
GCS_ENDPOINT = "storage.googleapis.com:443"
GCS_PROBE_ENV = "PROMPT_TUNING_GCS_PROBE"
GCS_PROBE_TIMEOUT_S = 5.0


@functools.lru_cache(maxsize=None)
def _gcs_unreachable(endpoint: str) -> Optional[str]:
  """Why `endpoint` cannot be connected to within GCS_PROBE_TIMEOUT_S, or None when it can."""
  host, _, port = endpoint.rpartition(":")

  def connect():
    socket.create_connection((host, int(port)), timeout=GCS_PROBE_TIMEOUT_S).close()
  # A thread bounds the name lookup too, which the socket's timeout does not cover.
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  try:
    pool.submit(connect).result(timeout=GCS_PROBE_TIMEOUT_S)
  except concurrent.futures.TimeoutError:
    return f"no answer within {GCS_PROBE_TIMEOUT_S:g} s"
  except (OSError, ValueError) as e:
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__).strip()
  finally:
    pool.shutdown(wait=False)
  return None


def local_copy_hint(path: str) -> str:
  return f"copy it to this machine (gsutil -m cp -r {path} /some/local/dir) and pass the local path"


def check_reachable(path: str, way_out: Optional[str] = None) -> None:
  """Raises within seconds, naming `path` and `way_out`, when `path` is on `gs://` and GCS
  cannot be reached (no network, blocked). Local paths pass unchecked."""
  if not str(path).startswith("gs://"):
    return
  endpoint = os.environ.get(GCS_PROBE_ENV) or GCS_ENDPOINT
  reason = _gcs_unreachable(endpoint)
  if reason:
    raise UserError(f"{path} cannot be reached: no connection to {endpoint} ({reason}); "
                    f"{way_out or local_copy_hint(path)}")


def _gfile(path: Optional[str] = None):
  if path is not None:
    check_reachable(path)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def absolute(path: str) -> str:
  """Absolute local path, or a `gs://`-style URL unchanged."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
  if is_remote(base):
    return "/".join([str(base).rstrip("/"), *parts])
  return os.path.join(base, *parts)


def exists(path: str) -> bool:
  return _gfile(path).exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _gfile(path).isdir(path) if is_remote(path) else os.path.isdir(path)


def io_error(path: str, error: OSError, doing: str = "write") -> UserError:
  """The one line of an I/O failure at `path`: what the system said and a way out."""
  reason = error.strerror or str(error) or type(error).__name__
  if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
    way_out = "free space on its disk (or raise the file-size limit, `ulimit -f`) and rerun"
  elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    way_out = "make it writable for this user, or choose another folder"
  else:
    way_out = "check the path and the disk, then rerun"
  return UserError(f"cannot {doing} {path} ({reason}); {way_out}")


def makedirs(path: str) -> None:
  if is_remote(path):
    _gfile(path).makedirs(path)
    return
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise io_error(path, e, "create the folder") from None


def listdir(path: str) -> List[str]:
  if is_remote(path):
    return [name.rstrip("/") for name in _gfile(path).listdir(path)]
  return os.listdir(path)


def size(path: str) -> int:
  """The size of the file at `path` in bytes."""
  return _gfile(path).stat(path).length if is_remote(path) else os.path.getsize(path)


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def move(source: str, target: str) -> None:
  """Renames a file or folder; object stores (no folder rename) copy it, then remove the source."""
  if not is_remote(source):
    os.rename(source, target)
    return
  gfile = _gfile(source)
  if not gfile.isdir(source):
    gfile.rename(source, target)
    return
  for folder, _, files in gfile.walk(source):
    relative = folder[len(source):].lstrip("/")
    gfile.makedirs(join(target, relative))
    for name in files:
      gfile.copy(join(folder, name), join(target, relative, name))
  gfile.rmtree(source)


def remove_tree(path: str) -> None:
  """Removes a folder and everything in it (nothing when it is gone already)."""
  if is_remote(path):
    if _gfile(path).exists(path):
      _gfile(path).rmtree(path)
    return
  shutil.rmtree(path, ignore_errors=True)


def open_file(path: str, mode: str = "rb"):
  return _gfile(path).GFile(path, mode) if is_remote(path) else open(path, mode)


def _check_all_written(f, path: str) -> None:
  """Raises the OSError of a write that stopped short. `np.save` writes arrays through a C
  stream (`ndarray.tofile`) whose failure it does not report: on a full disk or past a file-size
  limit the file would silently end early."""
  written, meant = os.fstat(f.fileno()).st_size, f.tell()
  if written < meant:
    raise OSError(errno.EIO, f"only {written:,} of {meant:,} bytes were written: is the disk "
                  "full?", path)


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
  """Calls `write(binary file)`; readers never see a half-written file.

  Local files are written beside the target (`<path>.tmp`) and renamed over
  it; object stores (gs://) only ever publish whole objects. A failed write
  (a full disk, a file-size limit, no permission) removes the temporary file
  and is one UserError naming `path`.
  """
  makedirs(os.path.dirname(str(path)) or ".")
  if is_remote(path):
    with _gfile(path).GFile(path, "wb") as f:
      write(f)
    return
  tmp = f"{path}.tmp"
  try:
    with open(tmp, "wb") as f:
      write(f)
      f.flush()
      _check_all_written(f, path)
    os.replace(tmp, path)
  except BaseException as e:
    try:
      os.remove(tmp)
    except OSError:
      pass  # never created, or its folder is gone: nothing is left behind either way
    if isinstance(e, OSError):
      raise io_error(path, e) from None
    raise


# How libraries that write through their own code name the OS error under their failure:
# safetensors "I/O error: File too large (os error 27)", tensorstore (Orbax)
# "... File too large [os_error_code='27']".
_WRAPPED_OS_ERROR = re.compile(r"\(os error (\d+)\)|os_error_code='(\d+)'")


def os_error_of(error: BaseException, path: str) -> Optional[OSError]:
  """`error` when it is an OSError, else the OSError that a library's own error type wraps
  (see `_WRAPPED_OS_ERROR`) at `path`; None when it wraps none."""
  if isinstance(error, OSError):
    return error
  code = _WRAPPED_OS_ERROR.search(str(error))
  if code is None:
    return None
  number = int(code.group(1) or code.group(2))
  return OSError(number, os.strerror(number), path)


@contextlib.contextmanager
def writer_threads_quiet() -> Iterator[None]:
  """Within the block, the `absl` logger (Orbax's) shows only critical records: Orbax's writer
  threads log the traceback of a failed write (a full disk) before the save raises it, and the
  caller reports that failure in one line."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.CRITICAL)
  _drop_late_writer_callbacks()
  try:
    yield
  finally:
    absl_logger.setLevel(level)


def _drop_late_writer_callbacks() -> None:
  """From now on, drops the unraisable "Event loop is closed" errors of a failed write's leftover
  tensorstore writes: Orbax's event loop closes at the first failure, the writes still in flight
  complete on tensorstore's threads (some before the save raises, some after), and each one's
  callback into the closed loop would print a traceback around the one-line error. Installed
  before the write, as those callbacks may come before the failure reaches the caller; any other
  unraisable error still prints."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_late_writer_callbacks", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_late_writer_callbacks = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def staged_folder(output: str, doing: str) -> Iterator[str]:
  """Yields where to write the new folder `output`: a hidden sibling `.<name>.<doing>-*/<name>`,
  renamed to `output` when the block ends without error and removed either way, so a failed or
  interrupted write leaves no partial folder (`output` may exist empty beforehand). A write that
  fails for an OS error (also one wrapped by safetensors or Orbax) is one UserError naming
  `output`. Object stores publish whole objects: `output` itself is yielded."""
  if is_remote(output):
    yield output
    return
  output = os.path.abspath(output)
  parent, name = os.path.split(output)
  makedirs(parent)
  try:
    staging = tempfile.mkdtemp(prefix=f".{name}.{doing}-", dir=parent)
  except OSError as e:
    raise io_error(parent, e) from None
  try:
    yield os.path.join(staging, name)
    if os.path.isdir(output):  # an empty folder the user made beforehand
      os.rmdir(output)
    os.replace(os.path.join(staging, name), output)
  except Exception as e:  # pylint: disable=broad-except  (writers' own types wrap OS errors)
    cause = os_error_of(e, output)
    if cause is None:
      raise
    raise io_error(output, cause) from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def write_on_first_host(path: str, write: Callable[[Any], None]) -> None:
  """`atomic_write` on JAX process 0 only (every host computes the same value)."""
  if jax.process_index() == 0:
    atomic_write(path, write)


class Damaged(Exception):
  """A file that fails its check when read back; the message says how."""


_CHECKED_HEADER = ("# Written by prompt_tuning. The last line is a checksum of the lines between, "
                   "checked when a run reads this file back.\n")
_CHECKED_FOOTER = "# sha256: "


def write_checked_text(path: str, text: str) -> None:
  """Writes `text` (a format with `#` comments, e.g. gin) between a header and a checksum line,
  atomically, on the first host; `read_checked_text` reads it back verified."""
  body = text if text.endswith("\n") else text + "\n"
  digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
  write_on_first_host(path, lambda f: f.write(
      (_CHECKED_HEADER + body + _CHECKED_FOOTER + digest + "\n").encode("utf-8")))


def read_checked_text(path: str) -> str:
  """The text `write_checked_text` wrote at `path`, its checksum verified.

  A file without the header or the checksum line (written before checksums) is returned as
  it is.

  Raises:
    Damaged: the file is not UTF-8, is empty or cut within its header, has a changed header,
      lacks its checksum line (truncated) or does not match it.
  """
  try:
    text = read_bytes(path).decode("utf-8")
  except UnicodeDecodeError as e:
    raise Damaged(f"not UTF-8 text at byte {e.start}") from None
  if not text.startswith(_CHECKED_HEADER):
    if _CHECKED_HEADER.startswith(text):
      raise Damaged(f"truncated to {len(text)} bytes, within its first line")
    if "\n" + _CHECKED_FOOTER in text:
      raise Damaged("its first line is not the one it was written with")
    return text  # written before checksums
  body, _, last = text[len(_CHECKED_HEADER):].rstrip("\n").rpartition("\n")
  if not last.startswith(_CHECKED_FOOTER):
    raise Damaged("its checksum line is missing: truncated")
  body += "\n"
  if hashlib.sha256(body.encode("utf-8")).hexdigest() != last[len(_CHECKED_FOOTER):].strip():
    raise Damaged("its text does not match its checksum")
  return body


def write_json(path: str, value: Any) -> None:
  """Pretty, key-sorted JSON, written atomically by the first host."""
  write_on_first_host(path, lambda f: f.write(json.dumps(value, indent=2, sort_keys=True).encode()))


def read_json(path: str) -> Optional[Dict[str, Any]]:
  """The parsed JSON at `path`, or None when the file does not exist.

  A damaged file (truncated, not UTF-8, not JSON) is one UserError naming it:
  files read here are a run's own records, which nothing else can rebuild.
  """
  if not exists(path):
    return None
  try:
    return json.loads(read_bytes(path))
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:100]}); "
                    "restore it from a copy of the run, or move it away so that the run writes "
                    "it anew") from None
