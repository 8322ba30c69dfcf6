"""What a training run keeps in its folder at each save, and how a rerun resumes from it.

A save writes, in this order: the loss record (by the caller), the Orbax
checkpoint of the trainable state (`checkpoints.RunCheckpoints`), then the
exports of that step: the prompt `.npy` and every new parameter
(`exports.export_new_variables`). Killed between the checkpoint and its
exports, a rerun writes the missing exports of the step it resumes from; one it
finds damaged (truncated, or not what the checkpoint gives) it moves to
`damaged/` and writes again (`rebuild_exports`).
Where each file lives: `run_dir.RunDir`.
"""
import dataclasses
import logging
import os
import time
from typing import Any, Mapping, Optional

import jax

from prompt_tuning import fs, multihost
from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import RunDir
from prompt_tuning.train import config_check, exports, run_records
from prompt_tuning.train.checkpoints import (RunCheckpoints, export_prompt, prompt_files,
                                             prompt_problem)
from prompt_tuning.train.run_setup import CompiledStep, RunContext, Split, abstract_arrays


@dataclasses.dataclass
class TrainState:
  """Where the loop stands: the trainable state, its step, and the step of the run's first batch.

  Steps are absolute (as in T5X); `first_step` is the initial checkpoint's step
  for every run this folder saw, so `step - first_step` batches were consumed.
  """
  trainable: Any
  opt_state: Any
  step: int
  first_step: int
  resumed: bool = False
  # Packed runs (PACK = True): examples consumed, the data position (a batch holds a varying
  # number of them); None for unpacked runs, whose position is `batches_consumed`.
  examples_consumed: Optional[int] = None

  @property
  def batches_consumed(self) -> int:
    return self.step - self.first_step


class Saves:
  """The trainer's checkpoints and exports in one run folder."""

  def __init__(self, run: RunDir, ctx: RunContext, split: Split, keep_checkpoints: Optional[int],
               initial_checkpoint_path: Optional[str], mixture_or_task_name: str):
    self.run, self.ctx, self.split = run, ctx, split
    self.checkpoints = RunCheckpoints(run.root, keep=keep_checkpoints)
    self.initial_checkpoint_path = initial_checkpoint_path
    # What every checkpoint and export says about the run it came from.
    self.description = {"initial_checkpoint_path": initial_checkpoint_path,
                        "mixture_or_task_name": mixture_or_task_name,
                        "trainable_patterns": list(split.patterns)}

  def resume(self, compiled: CompiledStep, initial_step: int,
             records: run_records.Records) -> TrainState:
    """The newest intact checkpoint's state, or the fresh one (`compiled`'s) without any.

    A rerun is checked first: it must not rebuild the plan's records elsewhere (`run_records`);
    its config was checked before the model was built (`check_rerun_config`).
    """
    fresh = TrainState(self.split.trainable, compiled.opt_state, initial_step, initial_step)
    if self.checkpoints.latest_step() is not None:
      run_records.check_records(self.run, records)  # e.g. APET's positions: never resumed elsewhere
    abstract = {"trainable": abstract_arrays(fresh.trainable, self.split.trainable_shardings),
                "opt_state": abstract_arrays(fresh.opt_state, compiled.opt_shardings)}
    resumed = self.checkpoints.restore_latest(abstract)  # sets aside damaged newer steps
    if resumed is None:
      return fresh
    restored, meta, step = resumed
    _check_resumed_steps(meta, step, initial_step, self.checkpoints.directory)
    if meta.get("initial_checkpoint_path") != self.initial_checkpoint_path:
      logging.warning("resuming a run tuned against %s with backbone %s",
                      meta.get("initial_checkpoint_path"), self.initial_checkpoint_path)
    print(f"resumed from {self.checkpoints.directory} at step {step:,}", flush=True)
    examples = meta.get("examples_consumed")
    state = TrainState(restored["trainable"], restored["opt_state"], step,
                       first_step=step - int(meta.get("batches_consumed", step)), resumed=True,
                       examples_consumed=None if examples is None else int(examples))
    self.rebuild_exports(f"step_{step}", step, state.trainable, f"checkpoint {step}")
    return state

  def save(self, state: TrainState) -> None:
    """The checkpoint of `state`'s step, then its exports (the loss record is the caller's)."""
    meta = {"step": state.step, "batches_consumed": state.batches_consumed,
            "initial_step": state.first_step, **self.description}
    if state.examples_consumed is not None:
      meta["examples_consumed"] = state.examples_consumed
    self.checkpoints.save(state.step, {"trainable": state.trainable,
                                       "opt_state": state.opt_state}, meta)
    self.export(f"step_{state.step}", state.step, state.trainable)

  def export(self, name: str, step: int, trainable: Any) -> None:
    """`prompts/<name>.npy` (when the model has one prompt value) and `exports/<name>/`."""
    variables = self.split.merged(trainable)
    value = self.ctx.exported_prompt(variables)
    if value is not None:
      export_prompt(self.run, name, value)
    exports.export_new_variables(self.run, name, self.ctx.model, variables,
                                 {"step": step, **self.description})

  def rebuild_exports(self, name: str, step: int, trainable: Any, source: str) -> None:
    """Writes the exports of `name` (`export`) that are missing, or that do not hold what
    `trainable` exports to; a damaged one is first moved to `damaged/` with one printed line.

    Killed between a checkpoint and its exports, a run leaves them missing; a copy, a full
    disk or a bad sector can leave one truncated or changed. `source` names where
    `trainable` came from (e.g. `checkpoint 40`), for the line.
    """
    variables = self.split.merged(trainable)
    prompt = self.ctx.exported_prompt(variables)  # every host: these gather sharded arrays
    contents = exports.export_contents(self.ctx.model, variables,
                                       {"step": step, **self.description})
    if jax.process_index() == 0:
      if prompt is not None:
        files = prompt_files(self.run, name, prompt)
        damaged = {p: prompt_problem(p, v) for p, v in files.items() if fs.exists(p)}
        if len(damaged) < len(files) or any(damaged.values()):
          self._set_aside({p: why for p, why in damaged.items() if why}, source)
          export_prompt(self.run, name, prompt)
      out = self.run.export(name)
      if contents is not None and not fs.exists(out.description):
        exports.write_export(out, contents)
      elif contents is not None:
        problem = exports.export_problem(out, contents)
        if problem:
          self._set_aside({out.root: problem}, source)
          exports.write_export(out, contents)
    multihost.sync(f"exports of {name} checked")

  def _set_aside(self, damaged: Mapping[str, str], source: str) -> None:
    """Moves each damaged file or folder (path -> why) to `damaged/<time>/`, one line each."""
    when = int(time.time())
    for path, why in damaged.items():
      target = self.run.damaged(when, os.path.relpath(path, self.run.root))
      fs.makedirs(os.path.dirname(target))
      fs.move(path, target)
      why = why.split("; ")[0]  # the reader's way out is this rebuild
      print(f"warning: {path} is damaged ({why}); moved it to {target} and wrote it again from "
            f"{source}", flush=True)

  def close(self) -> None:
    self.checkpoints.close()


def check_rerun_config(run: RunDir, allow_config_change: bool) -> None:
  """Refuses a rerun whose saved `config.gin` is damaged or differs in a binding that changes
  results (`config_check`); a folder without a saved step has nothing to compare with.

  `train` calls it before the model is built, so such a rerun fails in seconds rather than after
  the backbone loads and the step compiles.
  """
  folder = run.checkpoints
  if fs.isdir(folder) and any(name.isdigit() for name in fs.listdir(folder)):
    config_check.check_config_unchanged(run, allow_config_change)


def _check_resumed_steps(meta: Mapping[str, Any], step: int, initial_step: int,
                         directory: str) -> None:
  """Refuses to resume checkpoints that count steps differently from this run.

  Runs written before steps were absolute counted from 0 and record no
  `initial_step`; from a checkpoint that carries a step they cannot continue
  on the absolute axis.
  """
  recorded = meta.get("initial_step")
  if recorded is None and initial_step > 0 and step < initial_step:
    raise UserError(f"{directory} counts steps from 0 (written before TRAIN_STEPS counted from the "
                    f"initial checkpoint's step {initial_step:,}, as in T5X); finish it with the "
                    "version that wrote it, or start a new MODEL_DIR")
  if recorded is not None and int(recorded) != initial_step:
    logging.warning("%s started at step %s, but the initial checkpoint now carries step %s; "
                    "resuming on the run's own step axis", directory, recorded, initial_step)

