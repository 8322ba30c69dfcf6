"""Run checkpoints (Orbax) and prompt exports.

A run checkpoint holds only what training changes: the trainable parameters,
their optimizer state and the step (item `state`), plus JSON metadata (item
`meta`): how many batches the data iterator consumed and which backbone the
prompt was tuned against. The frozen backbone is never re-saved.

Orbax writes each step to a temporary folder and renames it when complete,
so an interrupted save never leaves a checkpoint that restore would pick up.
"""
import json
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

PROMPTS_DIR = "prompts"


class RunCheckpoints:
  """Periodic, keep-N checkpoints of a run folder, with automatic resume."""

  def __init__(self, model_dir: str, keep: Optional[int] = 3):
    self.directory = os.path.join(local_or_remote(model_dir), "checkpoints")
    self._keep = keep
    self._lazy_manager = None

  @property
  def _manager(self) -> ocp.CheckpointManager:
    # Created on first use, so a run that fails validation leaves no folder behind.
    if self._lazy_manager is None:
      options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True,
                                             enable_async_checkpointing=False)
      self._lazy_manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_names=("state", "meta"))
    return self._lazy_manager

  def latest_step(self) -> Optional[int]:
    if not exists(self.directory):
      return None
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: Dict[str, Any]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def close(self) -> None:
    if self._lazy_manager is not None:
      self._lazy_manager.close()


def to_host(x: jax.Array) -> np.ndarray:
  """A replicated (or fully addressable) array as numpy on this host."""
  if getattr(x, "is_fully_replicated", False):
    return np.asarray(x.addressable_data(0))
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_or_remote(path: str) -> str:
  """Absolute local path, or a `gs://`-style URL unchanged."""
  return path if "://" in str(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  if "://" in str(path):
    import tensorflow as tf
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def makedirs(path: str) -> None:
  if "://" in str(path):
    import tensorflow as tf
    tf.io.gfile.makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def atomic_write(path: str, write) -> None:
  """Local files: write then rename. Object stores (gs://) write whole objects anyway."""
  makedirs(os.path.dirname(path))
  if "://" in str(path):
    import tensorflow as tf
    with tf.io.gfile.GFile(path, "wb") as f:
      write(f)
    return
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    write(f)
  os.replace(tmp, path)


def export_prompt(model_dir: str, name: str, prompt: np.ndarray) -> str:
  """Writes `MODEL_DIR/prompts/<name>.npy` (float32, `[P, E]`) on the first host."""
  path = os.path.join(model_dir, PROMPTS_DIR, f"{name}.npy")
  if jax.process_index() == 0:
    atomic_write(path, lambda f: np.save(f, np.asarray(prompt, np.float32), allow_pickle=False))
  return path


def write_json(path: str, value: Any) -> None:
  if jax.process_index() == 0:
    atomic_write(path, lambda f: f.write(json.dumps(value, indent=2, sort_keys=True).encode()))
