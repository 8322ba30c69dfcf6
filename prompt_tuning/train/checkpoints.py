"""Run checkpoints (Orbax) and prompt exports.

A run checkpoint holds only what training changes: the trainable parameters,
their optimizer state and the step (item `state`), plus JSON metadata (item
`meta`): how many batches the data iterator consumed and which backbone the
prompt was tuned against. The frozen backbone is never re-saved.

Orbax writes each step to a temporary folder and renames it when complete,
so an interrupted save never leaves a checkpoint that restore would pick up.
"""
from typing import Any, Dict, Optional, Tuple

import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning import fs

PROMPTS_DIR = "prompts"


class RunCheckpoints:
  """Periodic, keep-N checkpoints of a run folder, with automatic resume."""

  def __init__(self, model_dir: str, keep: Optional[int] = 3):
    self.directory = fs.join(fs.absolute(model_dir), "checkpoints")
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
    if not fs.exists(self.directory):
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


def export_prompt(model_dir: str, name: str, prompt: np.ndarray) -> str:
  """Writes `MODEL_DIR/prompts/<name>.npy` (float32, `[P, E]`) on the first host."""
  path = fs.join(model_dir, PROMPTS_DIR, f"{name}.npy")
  fs.write_on_first_host(
      path, lambda f: np.save(f, np.asarray(prompt, np.float32), allow_pickle=False))
  return path
