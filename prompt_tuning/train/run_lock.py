"""One writer per run folder: `MODEL_DIR/.lock`.

Two runs writing the same MODEL_DIR would interleave checkpoints, prompts
and summaries into a folder that looks like one plausible run. The first
process (`jax.process_index() == 0`) of a run therefore creates
`MODEL_DIR/.lock`, a JSON record `{"pid", "hostname", "start_time", "token"}`,
atomically:

* local folders: `open(O_CREAT | O_EXCL)`, which exactly one process wins
  (on NFS only with NFSv3+ servers that implement exclusive create);
* `gs://` folders: object stores have no O_EXCL, so the lock is a
  conditional write (tensorstore's `if_equal` "no object yet", which GCS
  performs as `ifGenerationMatch=0`). That is atomic too, but whether a
  holder on another host is still alive cannot be checked: a lock left by a
  run killed on another machine must be deleted by hand (the refusal says so).

A second live writer is refused with one line naming the holder. A lock left
by a dead process on this host (e.g. after SIGKILL) is taken over with a
one-line notice, so a plain rerun resumes. The lock is released when the run
ends, also when it raises (see `releases_run_lock`).
"""
import functools
import inspect
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Dict, Optional

import jax

from prompt_tuning import fs
from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import RunDir

_TAKEOVER_SUFFIX = ".takeover"
_scopes = threading.local()


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


class _LocalFile:
  """The lock as a local file: O_EXCL create, compare-and-replace under a takeover guard."""

  def __init__(self, path: str):
    self.path = path

  def create(self, data: bytes) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    return True

  def read(self) -> Optional[bytes]:
    try:
      with open(self.path, "rb") as f:
        return f.read()
    except FileNotFoundError:
      return None

  def replace(self, expected: bytes, data: bytes) -> bool:
    """Replaces the lock only if it still holds `expected` (one taker wins)."""
    guard = self.path + _TAKEOVER_SUFFIX
    try:
      fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    os.close(fd)
    try:
      if self.read() != expected:
        return False
      tmp = f"{self.path}.{os.getpid()}.tmp"
      with open(tmp, "wb") as f:
        f.write(data)
      os.replace(tmp, self.path)
      return True
    finally:
      os.remove(guard)

  def delete(self, expected: bytes) -> None:
    if self.read() == expected:
      os.remove(self.path)


class _KvStoreFile:
  """The lock as one object of a tensorstore kvstore (gs://), with conditional writes."""

  def __init__(self, path: str, kvstore: Optional[Dict[str, Any]] = None):
    import tensorstore as ts
    self.path = path
    if kvstore is None:
      bucket, _, key = path[len("gs://"):].partition("/")
      kvstore = {"driver": "gcs", "bucket": bucket}
      self._key = key
    else:
      self._key = os.path.basename(path)
    self._store = ts.KvStore.open(kvstore).result()

  def _read(self):
    return self._store.read(self._key).result()

  def create(self, data: bytes) -> bool:
    current = self._read()
    if current.state == "value":
      return False
    # Succeeds only while the object is still absent (GCS: ifGenerationMatch=0).
    stamp = self._store.write(self._key, data, if_equal=current.stamp.generation).result()
    return bool(stamp.generation)

  def read(self) -> Optional[bytes]:
    current = self._read()
    return bytes(current.value) if current.state == "value" else None

  def replace(self, expected: bytes, data: bytes) -> bool:
    current = self._read()
    if current.state != "value" or bytes(current.value) != expected:
      return False
    stamp = self._store.write(self._key, data, if_equal=current.stamp.generation).result()
    return bool(stamp.generation)

  def delete(self, expected: bytes) -> None:
    current = self._read()
    if current.state == "value" and bytes(current.value) == expected:
      self._store.write(self._key, None, if_equal=current.stamp.generation).result()


class RunLock:
  """`MODEL_DIR/.lock`, held by process 0 of one run at a time.

  Use `with RunLock(model_dir):` or `acquire()`/`release()`; other processes
  of a multi-host run hold nothing but learn whether process 0 succeeded.
  """

  def __init__(self, model_dir: str, _kvstore: Optional[Dict[str, Any]] = None):
    self.model_dir = str(model_dir)
    self.path = RunDir(fs.absolute(self.model_dir)).lock
    self._kvstore = _kvstore  # tests: a local kvstore standing in for gs://
    self._held: Optional[bytes] = None
    self._created: Optional[str] = None  # the outermost folder `acquire` created (local only)

  def _file(self):
    if self._kvstore is not None or fs.is_remote(self.path):
      return _KvStoreFile(self.path, self._kvstore)
    return _LocalFile(self.path)

  def acquire(self) -> "RunLock":
    """Takes the lock, or raises a one-line UserError naming the run that holds it."""
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire()
      except UserError as e:
        error = e
    if jax.process_count() > 1:
      import numpy as np
      from jax.experimental import multihost_utils
      from prompt_tuning import multihost
      multihost.sync("run lock taken")  # process 0 may have waited on a remote lock file
      failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
      if failed and error is None:
        error = UserError(f"{self.model_dir} is in use by another run (see process 0's error)")
    if error is not None:
      raise error
    return self

  def _acquire(self) -> None:
    self._created = None if fs.is_remote(self.model_dir) else _outermost_missing(self.model_dir)
    try:
      fs.makedirs(self.model_dir)
    except OSError as e:
      raise UserError(f"cannot create MODEL_DIR {self.model_dir} ({e.strerror or e}); choose "
                      "another MODEL_DIR") from None
    lock = self._file()
    record = {"pid": os.getpid(), "hostname": socket.gethostname(), "start_time": time.time(),
              "token": uuid.uuid4().hex}
    data = json.dumps(record, sort_keys=True).encode()
    unparsable_since = None
    for _ in range(50):
      if lock.create(data):
        self._held = data
        return
      current = lock.read()
      if current is None:  # released in between: try again
        continue
      holder = _parse(current)
      if holder is None:
        # Unparsable: a creator between O_EXCL and its write, or a damaged file.
        unparsable_since = unparsable_since or time.time()
        if time.time() - unparsable_since < 2:
          time.sleep(0.1)
          continue
        raise UserError(f"{lock.path} is not a lock record; if no run uses {self.model_dir}, "
                        "delete it and rerun")
      if not self._stale(holder):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("start_time", 0)))
        raise UserError(f"{self.model_dir} is in use by another run (pid {holder.get('pid')} on "
                        f"{holder.get('hostname')}, started {started}); wait for it to finish, use "
                        f"another MODEL_DIR, or delete {lock.path} if that run is dead")
      if lock.replace(current, data):
        self._held = data
        print(f"note: took over the lock {lock.path} of a run that is no longer running "
              f"(pid {holder.get('pid')} on {holder.get('hostname')})", flush=True)
        return
    raise UserError(f"could not take {lock.path}: other processes keep changing it; make sure "
                    f"only one run uses {self.model_dir}")

  @staticmethod
  def _stale(holder: Dict[str, Any]) -> bool:
    """A lock of a process on this host that no longer exists."""
    if holder.get("hostname") != socket.gethostname():
      return False  # cannot tell whether a process on another host is alive
    pid = holder.get("pid")
    return isinstance(pid, int) and not _alive(pid)

  def release(self) -> None:
    """Removes the lock if this object still holds it."""
    if self._held is None:
      return
    data, self._held = self._held, None
    self._file().delete(data)
    if self._created:  # a run that failed before writing anything leaves no empty folders
      _remove_empty_folders(os.path.abspath(self.model_dir), self._created)
      self._created = None

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _outermost_missing(path: str) -> Optional[str]:
  """The outermost folder of `path` that does not exist yet (None if `path` exists)."""
  path = os.path.abspath(path)
  missing = None
  while not os.path.exists(path):
    missing, path = path, os.path.dirname(path)
  return missing


def _remove_empty_folders(path: str, outermost: str) -> None:
  """Removes `path` and its parents up to `outermost` while they are empty."""
  while True:
    try:
      os.rmdir(path)
    except OSError:  # not empty (the run wrote something), or gone
      return
    if path == outermost or len(path) <= len(outermost):
      return
    path = os.path.dirname(path)


def _parse(data: bytes) -> Optional[Dict[str, Any]]:
  try:
    record = json.loads(data)
  except ValueError:
    return None
  return record if isinstance(record, dict) and "pid" in record else None


def releases_run_lock(fn: Callable) -> Callable:
  """Decorator: locks taken by `acquire` inside `fn` are released when `fn` returns or raises.

  The wrapper keeps `fn`'s signature (`__signature__`), so it may sit under
  `@gin.configurable`, which reads parameters and defaults from it.
  """
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    stack = _scope_stack()
    stack.append([])
    try:
      return fn(*args, **kwargs)
    finally:
      for lock in reversed(stack.pop()):
        lock.release()

  wrapper.__signature__ = inspect.signature(fn)
  return wrapper


def acquire(model_dir: str) -> RunLock:
  """Locks MODEL_DIR until the enclosing `@releases_run_lock` function ends."""
  stack = _scope_stack()
  if not stack:
    raise RuntimeError("run_lock.acquire() outside a @releases_run_lock function; "
                       "use `with RunLock(model_dir):` instead")
  lock = RunLock(model_dir).acquire()
  stack[-1].append(lock)
  return lock


def _scope_stack() -> list:
  if not hasattr(_scopes, "stack"):
    _scopes.stack = []
  return _scopes.stack
