"""File-system helpers for local paths and object stores (`gs://...`), in one place.

Remote paths go through `tf.io.gfile` (TensorFlow is already a dependency of
SeqIO); local paths use the standard library. Writes of run outputs (JSON,
`.npy`, `.npz`) are atomic locally (write, then rename) and whole-object on
object stores, and happen on the first JAX process only.
"""
import json
import os
from typing import Any, Callable, Dict, List, Optional

import jax


def is_remote(path: str) -> bool:
  """Whether `path` is a URL such as `gs://bucket/dir` rather than a local path."""
  return "://" in str(path)


def _gfile():
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
  return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
  if is_remote(path):
    _gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> List[str]:
  if is_remote(path):
    return [name.rstrip("/") for name in _gfile().listdir(path)]
  return os.listdir(path)


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def move(source: str, target: str) -> None:
  """Renames a folder; object stores (no folder rename) copy it, then remove the source."""
  if not is_remote(source):
    os.rename(source, target)
    return
  gfile = _gfile()
  for folder, _, files in gfile.walk(source):
    relative = folder[len(source):].lstrip("/")
    gfile.makedirs(join(target, relative))
    for name in files:
      gfile.copy(join(folder, name), join(target, relative, name))
  gfile.rmtree(source)


def open_file(path: str, mode: str = "rb"):
  return _gfile().GFile(path, mode) if is_remote(path) else open(path, mode)


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
  """Calls `write(binary file)`; readers never see a half-written file.

  Local files are written beside the target and renamed over it; object
  stores (gs://) only ever publish whole objects.
  """
  makedirs(os.path.dirname(str(path)) or ".")
  if is_remote(path):
    with _gfile().GFile(path, "wb") as f:
      write(f)
    return
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    write(f)
  os.replace(tmp, path)


def write_on_first_host(path: str, write: Callable[[Any], None]) -> None:
  """`atomic_write` on JAX process 0 only (every host computes the same value)."""
  if jax.process_index() == 0:
    atomic_write(path, write)


def write_json(path: str, value: Any) -> None:
  """Pretty, key-sorted JSON, written atomically by the first host."""
  write_on_first_host(path, lambda f: f.write(json.dumps(value, indent=2, sort_keys=True).encode()))


def read_json(path: str) -> Optional[Dict[str, Any]]:
  """The parsed JSON at `path`, or None when the file does not exist."""
  if not exists(path):
    return None
  with open_file(path, "r") as f:
    return json.load(f)
