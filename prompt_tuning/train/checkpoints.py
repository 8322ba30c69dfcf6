"""Run checkpoints (Orbax) and prompt exports.

A run checkpoint holds only what training changes: the trainable parameters,
their optimizer state and the step (item `state`), plus JSON metadata (item
`meta`): how many batches the data iterator consumed, which backbone the
prompt was tuned against, and a checksum of every array of `state`
(`prompt_tuning.io.checksums`). The frozen backbone is never re-saved.

Orbax writes each step to a temporary folder and renames it when complete,
so an interrupted save never leaves a checkpoint that restore would pick up.
A step damaged later (a truncated, deleted or bit-flipped file, an empty
manifest, lost metadata, a checksum mismatch) is moved aside to
`MODEL_DIR/checkpoints_corrupt/<step>-<unix time>` by `restore_latest`, which
resumes from the newest intact step instead. Where each lives: `RunDir`.
"""
import json
import logging
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning import fs
from prompt_tuning import multihost
from prompt_tuning.errors import UserError
from prompt_tuning.io import checksums
from prompt_tuning.run_dir import RunDir

STATE_CHECKSUMS = "state_checksums"
# Status codes of failures that say nothing about the checkpoint's bytes: such
# a failure stops the run instead of setting the checkpoint aside.
_TRANSIENT = ("UNAVAILABLE", "PERMISSION_DENIED", "UNAUTHENTICATED", "DEADLINE_EXCEEDED",
              "RESOURCE_EXHAUSTED", "CANCELLED", "ABORTED")
# What a save that failed for lack of room or rights says (tensorstore raises ValueErrors).
_NO_ROOM = ("No space left", "File too large", "Disk quota", "Permission denied",
            "Read-only file system", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED")
# Exceptions of a restore that point at the code or the machine, not the bytes.
_NOT_DAMAGE = (TypeError, NotImplementedError, ImportError, MemoryError)


class _Unusable(Exception):
  """A checkpoint step that cannot be resumed from; the message says why."""


class _DoesNotFit(_Unusable):
  """A readable checkpoint whose tree differs from the model's (the config changed)."""


class RunCheckpoints:
  """Periodic, keep-N checkpoints of a run folder, with automatic resume."""

  def __init__(self, model_dir: str, keep: Optional[int] = 3):
    self.run = RunDir(fs.absolute(model_dir))
    self.directory = self.run.checkpoints
    self._keep = keep
    self._lazy_manager = None

  @property
  def _manager(self) -> ocp.CheckpointManager:
    # Created on first use, so a run that fails validation leaves no folder behind.
    if self._lazy_manager is None:
      options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True,
                                             enable_async_checkpointing=False)
      self._lazy_manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()})
    return self._lazy_manager

  def latest_step(self) -> Optional[int]:
    if not fs.exists(self.directory):
      return None
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: Dict[str, Any]) -> None:
    """Saves `state` and `meta` (plus the checksums of `state`'s arrays) as `step`.

    A save that fails for lack of space or permission is one UserError naming the step's
    folder, and Orbax's temporary folder of the step is removed: nothing half-written stays.
    """
    meta = {**meta, STATE_CHECKSUMS: checksums.tree_records(state)}
    try:
      with fs.writer_threads_quiet():
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()
    except Exception as e:  # Orbax and tensorstore raise OSError, ValueError, their own types
      self._remove_unfinished(step)
      first = _first_line(e)
      if isinstance(e, OSError) or any(text in first for text in _NO_ROOM):
        raise UserError(f"cannot save checkpoint {self._step_dir(step)} ({first}); free space "
                        "on its disk or make MODEL_DIR writable, then rerun: the run resumes "
                        "from its last saved step") from None
      raise

  def _remove_unfinished(self, step: int) -> None:
    """Removes Orbax's temporary folders of `step` (`<step>.orbax-checkpoint-tmp*`)."""
    if jax.process_index() != 0 or not fs.isdir(self.directory):
      return
    for name in fs.listdir(self.directory):
      if name.startswith(f"{step}.orbax-checkpoint-tmp"):
        fs.remove_failed_write(fs.join(self.directory, name))

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    """(state, meta) of `step`, verified against its checksums; a UserError says what is wrong."""
    try:
      return self._restore_checked(step, abstract_state)
    except _Unusable as e:
      raise UserError(f"checkpoint {self._step_dir(step)} is unusable: {e}") from None

  def restore_latest(self, abstract_state: Any) -> Optional[Tuple[Any, Dict[str, Any], int]]:
    """(state, meta, step) of the newest intact checkpoint, or None when there is none.

    Newer steps that fail to restore or to verify are moved to
    `MODEL_DIR/checkpoints_corrupt/<step>-<unix time>` (never deleted), each
    with one printed line saying why. Nothing is moved when the checkpoints
    are readable but do not fit `abstract_state` (the model changed): that is
    a UserError.
    """
    if not fs.exists(self.directory):
      return None
    unusable = []  # (step, reason, does_not_fit)
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, meta = self._restore_checked(step, abstract_state)
      except _Unusable as e:
        unusable.append((step, str(e), isinstance(e, _DoesNotFit)))
        continue
      self._set_aside(unusable, resumed_at=step)
      return state, meta, step
    misfit = next((u for u in unusable if u[2]), None)
    if misfit is not None:
      raise UserError(f"checkpoint {self._step_dir(misfit[0])} does not fit this model "
                      f"({misfit[1]}); the model or the trainable parameters changed since it was "
                      "written: use a new MODEL_DIR or the run's original config")
    self._set_aside(unusable, resumed_at=None)
    return None

  def close(self) -> None:
    if self._lazy_manager is not None:
      self._lazy_manager.close()

  # -- restore, check, set aside ------------------------------------------------

  def _step_dir(self, step: int) -> str:
    return self.run.checkpoint(step)

  def _restore_checked(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    step_dir = self._step_dir(step)
    damage = _damaged_files(step_dir)
    if damage:
      raise _Unusable(damage)
    self._check_fits(step, abstract_state)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except _NOT_DAMAGE:
      raise
    except Exception as e:  # Orbax and tensorstore raise many types for damaged files
      first = _first_line(e)
      if any(code in first for code in _TRANSIENT):
        raise UserError(f"cannot read checkpoint {step_dir} ({first}); check access to "
                        "MODEL_DIR and rerun") from None
      raise _Unusable(f"restore failed: {type(e).__name__}: {first}") from None
    meta = restored.meta
    if not isinstance(meta, dict):
      raise _Unusable("meta/metadata is not a JSON object")
    records = meta.get(STATE_CHECKSUMS)
    if records is None:
      logging.warning("checkpoint %s has no %s (saved before checksums were recorded); its state "
                      "is not verified", step_dir, STATE_CHECKSUMS)
    else:
      problem = checksums.find_mismatch(records, restored.state)
      if problem is not None:
        raise _Unusable(problem)
    return restored.state, meta

  def _check_fits(self, step: int, abstract_state: Any) -> None:
    """Raises _DoesNotFit when the stored tree's paths, shapes or dtypes differ from the model's."""
    try:
      stored = self._manager.item_metadata(step).state
    except Exception as e:  # damaged metadata
      raise _Unusable(f"state metadata unreadable: {type(e).__name__}: {_first_line(e)}") from None
    stored = getattr(stored, "tree", stored)
    if stored is None:  # no _METADATA: Orbax restores from the arrays' own metadata
      return
    have, want = _shapes(stored), _shapes(abstract_state)
    for path in sorted(set(have) | set(want)):
      if have.get(path) != want.get(path):
        raise _DoesNotFit(f"{path}: checkpoint has {have.get(path, 'nothing')}, model expects "
                          f"{want.get(path, 'nothing')}")

  def _set_aside(self, unusable: List[Tuple[int, str, bool]], resumed_at: Optional[int]) -> None:
    if not unusable:
      return
    if jax.process_index() == 0:
      for step, reason, _ in unusable:
        target = self.run.corrupt_checkpoint(step, int(time.time()))
        fs.makedirs(os.path.dirname(target))
        while fs.exists(target):
          target += "+"
        fs.move(self._step_dir(step), target)
        then = ("starting from scratch" if resumed_at is None
                else f"resuming from step {resumed_at}")
        print(f"warning: checkpoint {self._step_dir(step)} is unusable ({reason}); moved it to "
              f"{target}, {then}", flush=True)
    multihost.sync("RunCheckpoints.restore_latest")  # process 0 moved the unusable ones
    self._manager.reload()


def _first_line(error: BaseException) -> str:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return (lines[0] if lines else type(error).__name__)[:300]


def _shapes(tree: Any) -> Dict[str, Tuple[Tuple[int, ...], str]]:
  return {path: (tuple(int(d) for d in leaf.shape), np.dtype(leaf.dtype).name)
          for path, leaf in checksums.flatten_paths(tree).items()}


def _damaged_files(step_dir: str) -> Optional[str]:
  """Why the step's metadata files are damaged, or None when they look whole.

  Checked before Orbax reads the step, whose own failures on such files are
  long, noisy and of many types. Data files are checked by the restore and
  the checksums.
  """
  meta = os.path.join(step_dir, "meta", "metadata")
  if not fs.exists(meta):
    return "meta/metadata is missing"
  state = os.path.join(step_dir, "state")
  json_files = [meta, os.path.join(state, "_METADATA")]
  array_metadatas = os.path.join(state, "array_metadatas")
  if fs.exists(array_metadatas):
    json_files += [os.path.join(array_metadatas, f) for f in fs.listdir(array_metadatas)]
  for path in json_files:
    if not fs.exists(path):
      continue
    try:
      json.loads(fs.read_bytes(path))
    except (ValueError, UnicodeDecodeError):
      return f"{os.path.relpath(path, step_dir)} is not valid JSON (truncated or damaged)"
  from prompt_tuning.io.backbone import ocdbt_problem
  problem = ocdbt_problem(state)
  return f"state/{problem}" if problem else None


def write_prompt(path: str, prompt) -> str:
  """Writes one `[P, E]` prompt as float32 `.npy` on the first host; returns `path`."""
  fs.write_on_first_host(
      path, lambda f: np.save(f, np.asarray(prompt, np.float32), allow_pickle=False))
  return path


def prompt_files(run: RunDir, name: str, prompt) -> Dict[str, np.ndarray]:
  """Each file (path -> `[P, E]` value) of the export of `prompt` as `name`.

  `MODEL_DIR/prompts/<name>.npy`; a multi-task prompt's `{task: [P, E]}` is
  `prompts/<name>/<task>.npy`, each file a plain prompt that `PROMPT_FILE` and
  `export --prompt` take.
  """
  if isinstance(prompt, Mapping):
    return {run.task_prompt(name, task): value for task, value in prompt.items()}
  return {run.prompt(name): prompt}


def export_prompt(run: RunDir, name: str, prompt) -> str:
  """Writes `prompt`'s files (`prompt_files`, float32) on the first host; the file (or a
  multi-task prompt's folder) written."""
  for path, value in prompt_files(run, name, prompt).items():
    write_prompt(path, value)
  return run.task_prompts(name) if isinstance(prompt, Mapping) else run.prompt(name)


def prompt_problem(path: str, value: np.ndarray) -> Optional[str]:
  """Why the prompt file at `path` does not hold `value` (None when it does, to float32
  rounding of a recomputed reparameterization)."""
  from prompt_tuning.io.npy import load_array  # pylint: disable=g-import-not-at-top
  try:
    saved = load_array(path, "prompt file", "it is rebuilt from the checkpoint")
  except UserError as e:
    return str(e)
  if saved.shape != np.shape(value):
    return f"its shape {saved.shape} is not the checkpoint's {np.shape(value)}"
  if not np.allclose(saved, value, rtol=1e-5, atol=1e-6):
    return "its values differ from the checkpoint's"
  return None


def save_tree(path: str, tree: Any) -> None:
  """Writes a parameter tree as `.npz` with '/'-joined keys (e.g. `prompt/prompt`), first host."""
  from prompt_tuning.multihost import to_host  # pylint: disable=g-import-not-at-top
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  arrays = {k: to_host(v) for k, v in flat.items()}
  fs.write_on_first_host(path, lambda f: np.savez(f, **arrays))


def load_tree(path: str) -> Dict[str, Any]:
  """Inverse of `save_tree` (numpy leaves; never unpickles; a damaged file is one line)."""
  from prompt_tuning.io.npy import load_npz  # pylint: disable=g-import-not-at-top
  flat = load_npz(path, "run file", "it cannot be rebuilt from a checkpoint: restore it from a "
                  "copy of the run, or start a new MODEL_DIR")
  return flax.traverse_util.unflatten_dict(flat, sep="/")
