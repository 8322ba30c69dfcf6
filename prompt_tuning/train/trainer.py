"""The prompt-tuning train loop (`prompt-tuning train`), readable in one sitting.

    build_run (tasks checked, model, mesh, backbone sharded + new variables)
    -> split trainable/frozen -> compile_train_step -> resume from MODEL_DIR if possible
    -> loop: batch -> step -> log -> [eval] -> [checkpoint + prompt export + new-parameter export]

The loop's bookkeeping lives in small objects: `saves.Saves` (resume, checkpoint
+ exports), `best.BestSoFar` (best evaluation, early stopping),
`evaluation.PeriodicEval` and `summaries.TrainLog` (console, TensorBoard, loss
record, config.gin). Where each file of the run folder lives: `run_dir.RunDir`.

Nothing is written to MODEL_DIR until the configuration, the task, the data
and the checkpoint shapes have been checked.

Steps are absolute, as in T5X: a run starts at the step its initial checkpoint
carries (`checkpoint_1100000`: 1,100,000; 0 for Hugging Face folders and a
random backbone) and ends at `TRAIN_STEPS`, so `TRAIN_STEPS = 1_150_000` from
that checkpoint tunes 50,000 steps. Checkpoints, `prompts/step_N.npy`, eval
and checkpoint periods, TensorBoard and `train_summary.json` count the same way.
"""
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import gin
import jax
import optax

from prompt_tuning import checks, fs, host_memory, multihost
from prompt_tuning.data import bucketing
from prompt_tuning.data.task_tokens import task_tokens_of
from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import RunDir
from prompt_tuning.train import data as data_lib
from prompt_tuning.train import packed_runs, run_lock, run_records, step_memory
from prompt_tuning.train.best import BestSoFar
from prompt_tuning.train.evaluation import PeriodicEval
from prompt_tuning.train.initialize import checkpoint_step
from prompt_tuning.train.partitioning import Partitioner, check_batch_size
from prompt_tuning.train.run_setup import (CompiledStep, RunContext, Split, build_run,
                                            compile_train_step)
from prompt_tuning.train.saves import Saves, TrainState, check_rerun_config
from prompt_tuning.train.summaries import TrainLog
from prompt_tuning.train.trainable import (check_extras_train, count_parameters,
                                           trainable_patterns)


def _check_arguments(*, model_dir, train_steps, batch_size, eval_period, checkpoint_period,
                     keep_checkpoints, early_stopping_mode, early_stopping_patience,
                     num_microbatches, log_every, max_trainable_norm, eval_num_examples,
                     stop_after_steps, seed) -> None:
  """The cheap checks of `train`'s arguments, before the model is built or anything written."""
  checks.output_dir(model_dir, "MODEL_DIR")
  checks.seed(seed, "RANDOM_SEED (train.seed)", "--gin.RANDOM_SEED=0")
  checks.positive_int(train_steps, "TRAIN_STEPS (train.train_steps)", "--gin.TRAIN_STEPS=1000")
  checks.positive_int(batch_size, "BATCH_SIZE (train.batch_size)", "--gin.BATCH_SIZE=32")
  if eval_period not in (None, 0):
    checks.positive_int(eval_period, "EVAL_PERIOD (train.eval_period)",
                        "--gin.EVAL_PERIOD=1000 (None: no evaluation)")
  checks.positive_int(checkpoint_period, "CHECKPOINT_PERIOD (train.checkpoint_period)",
                      "--gin.CHECKPOINT_PERIOD=1000")
  checks.optional_positive_int(keep_checkpoints, "train.keep_checkpoints",
                               "--gin.train.keep_checkpoints=3")
  checks.one_of(early_stopping_mode, ("max", "min"), "train.early_stopping_mode")
  checks.optional_positive_int(early_stopping_patience, "train.early_stopping_patience",
                               "--gin.train.early_stopping_patience=5")
  if num_microbatches != step_memory.AUTO:
    checks.positive_int(num_microbatches, "NUM_MICROBATCHES (train.num_microbatches)",
                        "--gin.NUM_MICROBATCHES=1 (or 'auto')")
  checks.positive_int(log_every, "train.log_every", "--gin.train.log_every=10")
  checks.optional_positive_int(eval_num_examples, "train.eval_num_examples",
                               "--gin.train.eval_num_examples=1000")
  checks.optional_positive_int(stop_after_steps, "train.stop_after_steps",
                               "--gin.train.stop_after_steps=100")
  if max_trainable_norm is not None:
    checks.positive_number(max_trainable_norm, "train.max_trainable_norm",
                           "--gin.train.max_trainable_norm=1e6 (None: no bound)")


def check_divergence(metrics: Mapping[str, float], step: int,
                     max_trainable_norm: Optional[float]) -> None:
  """Raises a UserError when step `step`'s metrics show divergence (nothing is saved for it).

  Divergence is a metric that is not finite (loss first, as it is the usual
  one), or the trainable parameters' norm beyond `max_trainable_norm`: at a
  huge learning rate the parameters grow without bound while the loss and
  gradients can stay finite, or vanish.
  """
  bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
  if bad:
    name = "loss" if "loss" in bad else bad[0]
    raise UserError(f"training diverged: {name} became {metrics[name]} at step {step}; no "
                    "checkpoint was written for it. Lower the learning rate or check the data")
  norm = metrics.get("trainable_norm")
  if max_trainable_norm is not None and norm is not None and norm > max_trainable_norm:
    raise UserError(f"training diverged: the trainable parameters' norm reached {norm:.3g} at "
                    f"step {step}, beyond train.max_trainable_norm={max_trainable_norm:g}; no "
                    "checkpoint was written for it. Lower the learning rate (or raise "
                    "--gin.train.max_trainable_norm if such norms are expected)")


def _check_data(mixture_or_task_name, mixture_or_task_module, task_feature_lengths,
                length_buckets, train_split, eval_name, eval_split, initial_checkpoint_path,
                train_steps) -> Tuple[int, Optional[bucketing.LengthBuckets]]:
  """The checks of the lengths, tasks and steps; (the initial checkpoint's step, buckets)."""
  data_lib.validate_feature_lengths(task_feature_lengths)
  length_buckets = bucketing.check_buckets(length_buckets, task_feature_lengths)
  initial_step = checkpoint_step(initial_checkpoint_path)
  if train_steps <= initial_step:
    raise UserError(f"TRAIN_STEPS={train_steps:,} is not past the initial checkpoint's step "
                    f"{initial_step:,}: as in T5X, TRAIN_STEPS is the step to stop at, counted from "
                    f"the checkpoint's step; e.g. --gin.TRAIN_STEPS={initial_step + 30000:_} tunes "
                    "30,000 steps")
  data_lib.import_task_modules(mixture_or_task_module)
  data_lib.check_split(mixture_or_task_name, train_split, "train.train_split")
  if eval_name:
    data_lib.check_split(eval_name, eval_split, "EVAL_SPLIT (train.eval_split)")
  return initial_step, length_buckets


def _compile_run(initial_checkpoint_path, seed, mixture_or_task_name, train_split, eval_name,
                 eval_split, mixture_or_task_module, task_feature_lengths, frozen_dtype,
                 edit_initial_variables, optimizer, batch_size, num_microbatches, initial_step,
                 pack: Union[bool, str] = False
                 ) -> Tuple[RunContext, Split, CompiledStep, int, bool]:
  """The run's model, mesh and variables, split into trainable and frozen, its compiled step
  (the optimizer's global-step counters at `initial_step`), the batch size of this host
  (checked before anything compiles) and whether it packs (`packed_runs.resolve_for_model`)."""
  splits = {mixture_or_task_name: [train_split]}
  if eval_name:
    splits.setdefault(eval_name, []).append(eval_split)
  ctx = build_run(initial_checkpoint_path=initial_checkpoint_path, seed=seed,
                  mixture_or_task_names=list(splits), data_splits=splits,
                  mixture_or_task_module=mixture_or_task_module,
                  task_feature_lengths=task_feature_lengths, frozen_dtype=frozen_dtype,
                  edit_initial_variables=edit_initial_variables)
  pack = packed_runs.resolve_for_model(pack, ctx.model)  # before the step compiles
  local_batch = check_batch_size(batch_size, ctx.partitioner, num_microbatches)
  ctx.check_pass_fits(batch_size // num_microbatches, "a train step of TASK_FEATURE_LENGTHS "
                      f"{dict(task_feature_lengths)} and BATCH_SIZE={batch_size}",
                      "lower TASK_FEATURE_LENGTHS or BATCH_SIZE, or raise "
                      "train.num_microbatches or make_mesh.model_parallel_size")
  split = ctx.split(trainable_patterns())
  check_extras_train(ctx.model, split.trainable, split.patterns)
  ctx.variables = None  # the split holds them; the backbone is not kept twice
  compiled = compile_train_step(ctx, split, optimizer, num_microbatches, start_step=initial_step)
  return ctx, split, compiled, local_batch, pack




def _print_steps(start_step: int, train_steps: int, end_step: int) -> None:
  if start_step < train_steps:
    count = train_steps - start_step
    print(f"from step {start_step:,} to {train_steps:,}: {count:,} step{'s' if count != 1 else ''}"
          + (f" (stopping at {end_step:,})" if end_step < train_steps else ""), flush=True)
  else:
    print(f"step {start_step:,} reached TRAIN_STEPS={train_steps:,}: nothing left to train",
          flush=True)


def _print_sizes(trainable: Any, split: Split, partitioner: Partitioner) -> Tuple[int, int]:
  """Prints and returns (trainable, frozen) parameter counts."""
  n_trainable, n_frozen = count_parameters(trainable), count_parameters(split.frozen)
  print(f"trainable parameters: {n_trainable:,} ({', '.join(split.patterns)}); frozen: "
        f"{n_frozen:,}; mesh {dict(partitioner.mesh.shape)}", flush=True)
  return n_trainable, n_frozen


def _write_summary(run: RunDir, state: TrainState, log: TrainLog, best: BestSoFar,
                   sizes: Tuple[int, int]) -> Dict[str, Any]:
  """The run's summary, also written to `train_summary.json` (replacing the loss record)."""
  record = best.record()
  summary = {"model_dir": run.root, "initial_step": state.first_step, "final_step": state.step,
             "trainable_parameters": sizes[0], "frozen_parameters": sizes[1],
             "train_history": log.history, "eval_history": log.eval_history,
             "best_metric": best.best, "best_step": record["step"] if record else None}
  fs.write_json(run.train_summary, summary)
  return summary


@gin.configurable
@run_lock.releases_run_lock
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, initial_checkpoint_path: Optional[str] = None,
          mixture_or_task_module: Optional[Sequence[str]] = None,
          optimizer: optax.GradientTransformation = gin.REQUIRED, seed: int = 0,
          eval_period: Optional[int] = 1000, eval_split: str = "validation",
          eval_mixture_or_task_name: Optional[str] = None, eval_num_examples: Optional[int] = None,
          checkpoint_period: int = 1000, keep_checkpoints: Optional[int] = 3,
          early_stopping_metric: Optional[str] = None, early_stopping_mode: str = "max",
          early_stopping_patience: Optional[int] = None, num_microbatches: Union[int, str] = 1,
          frozen_dtype: Optional[str] = None, use_cached_tasks: bool = False, log_every: int = 10,
          train_split: str = "train", stop_after_steps: Optional[int] = None,
          return_variables: bool = False, allow_config_change: bool = False,
          max_trainable_norm: Optional[float] = 1e6,
          length_buckets: Optional[bucketing.LengthBuckets] = None,
          pack: Union[bool, str] = False, pack_targets_length: Optional[int] = None,
          edit_initial_variables: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
          device_memory_gib: Optional[float] = None) -> Dict[str, Any]:
  """Tunes the trainable subtree on a task; returns a summary dict.

  `train_steps` is the absolute step to stop at (T5X's `TRAIN_STEPS`): the
  run tunes `train_steps - s` steps from an initial checkpoint at step `s`.
  `stop_after_steps` (also absolute) ends the loop early without changing the
  schedule (used to test kill-and-resume); `return_variables` adds the final
  `trainable` and `frozen` trees to the summary (not to the JSON file);
  `edit_initial_variables` maps the freshly initialized variables (before any
  resume) to new ones of the same structure — how XPrompt rewinds the prompt
  and fixes its masks. `allow_config_change` resumes a run whose saved
  `config.gin` differs in a binding that changes results (refused otherwise).
  Training stops with a UserError, before any checkpoint of the step, when a
  logged metric is not finite or the trainable parameters' norm exceeds
  `max_trainable_norm` (divergence; None turns the bound off).
  `length_buckets` cuts each batch to the smallest bucket holding it (the step
  compiles once per bucket; `runs/prompt_finetune.gin` binds 'auto', None is
  fixed shapes: `runs/fixed_shapes.gin`, `data/bucketing.py`). `pack` (`PACK`)
  packs several examples per row, each behind its own prompt (`data/packing.py`): BATCH_SIZE
  then counts rows, as in T5X, and 'auto' buckets mean fixed shapes; `pack_targets_length`
  (`PACK_TARGETS_LENGTH`) is the packed decoder row (None: `packing.auto_targets_length`).
  Where one device's memory is known (`device_memory_gib`, else what TPU and GPU
  devices report), the step is compiled with abstract weights and checked against it
  before the checkpoint is read (`step_memory.check_run_fits`); `num_microbatches='auto'`
  (`NUM_MICROBATCHES`) takes the smallest count that fits.
  See `configs/runs/prompt_finetune.gin`.
  """
  _check_arguments(model_dir=model_dir, train_steps=train_steps, batch_size=batch_size,
                   eval_period=eval_period, checkpoint_period=checkpoint_period,
                   keep_checkpoints=keep_checkpoints, early_stopping_mode=early_stopping_mode,
                   early_stopping_patience=early_stopping_patience,
                   num_microbatches=num_microbatches, log_every=log_every,
                   max_trainable_norm=max_trainable_norm, eval_num_examples=eval_num_examples,
                   stop_after_steps=stop_after_steps, seed=seed)
  eval_name = (eval_mixture_or_task_name or mixture_or_task_name) if eval_period else None
  length_buckets = packed_runs.check_pack(pack, pack_targets_length, length_buckets)
  initial_step, length_buckets = _check_data(
      mixture_or_task_name, mixture_or_task_module, task_feature_lengths, length_buckets,
      train_split, eval_name, eval_split, initial_checkpoint_path, train_steps)
  if device_memory_gib is not None:
    checks.positive_number(device_memory_gib, "train.device_memory_gib",
                           "--gin.train.device_memory_gib=16 (None: the devices' own)")
  num_microbatches = step_memory.check_run_fits(num_microbatches, device_memory_gib, batch_size,
                                                task_feature_lengths, optimizer, frozen_dtype)
  ctx, split, compiled, local_batch, pack = _compile_run(
      initial_checkpoint_path, seed, mixture_or_task_name, train_split, eval_name, eval_split,
      mixture_or_task_module, task_feature_lengths, frozen_dtype, edit_initial_variables,
      optimizer, batch_size, num_microbatches, initial_step, pack)
  layout = None
  if pack:
    layout = packed_runs.layout(ctx.model, task_feature_lengths, pack_targets_length)
  # After the arguments' own checks (their errors are the more specific), before a resume
  # reads or anything writes.
  check_rerun_config(RunDir(model_dir), allow_config_change)

  run = RunDir(model_dir)
  run_lock.acquire(model_dir)  # one writer per MODEL_DIR; released when train() ends or raises
  saves = Saves(run, ctx, split, keep_checkpoints, initial_checkpoint_path, mixture_or_task_name)
  records = run_records.model_records(ctx.model)
  state = saves.resume(compiled, initial_step, records)
  start_step = state.step
  end_step = train_steps if stop_after_steps is None else min(train_steps, stop_after_steps)
  _print_steps(start_step, train_steps, end_step)
  task_tokens = task_tokens_of(ctx.model)  # multi-task prompts: each input's task token
  if layout is None:
    batches = data_lib.batches(mixture_or_task_name, task_feature_lengths, train_split,
                               local_batch, seed=seed, skip_batches=state.batches_consumed,
                               use_cached=use_cached_tasks, task_tokens=task_tokens,
                               length_buckets=length_buckets)
  else:
    state.examples_consumed = packed_runs.data_position(state, model_dir)
    batches = data_lib.packed_batches(mixture_or_task_name, task_feature_lengths, train_split,
                                      local_batch, seed, layout,
                                      skip_examples=state.examples_consumed,
                                      use_cached=use_cached_tasks, task_tokens=task_tokens)
  fs.makedirs(model_dir)
  run_records.write_records(run, records)
  sizes = _print_sizes(state.trainable, split, ctx.partitioner)
  best = BestSoFar(saves, early_stopping_metric, early_stopping_mode, early_stopping_patience,
                   resumed_at=start_step if state.resumed else None)
  evaluate = eval_name and PeriodicEval(ctx.model, ctx.partitioner, split.shardings, eval_name,
                                        task_feature_lengths, eval_split, use_cached_tasks,
                                        eval_num_examples, task_tokens,
                                        log_dir=run.inference_eval.root)
  log = TrainLog(run, start_step, train_steps, state.resumed, batch_size)

  while state.step < end_step:
    rows = next(batches, None)
    if rows is None:
      raise UserError(f"{mixture_or_task_name} ran out of data at step {state.step}")
    if layout is None:
      rows = data_lib.with_example_index(rows, state.batches_consumed, batch_size)
    else:  # rows are not examples: no example index (methods that need one refuse PACK)
      rows, count = rows
      state.examples_consumed += count
    log.count_batch(rows, count if layout is not None else batch_size)
    with ctx.partitioner.context():
      batch = ctx.partitioner.shard_batch(rows)
      state.trainable, state.opt_state, metrics = compiled.step(
          state.trainable, state.opt_state, split.frozen, batch, ctx.step_rng(state.step))
    if state.step == start_step:  # the step has compiled: its compiler's memory is free now
      host_memory.release_free_memory()
    state.step = step = state.step + 1
    due_eval = bool(eval_period) and (step % eval_period == 0 or step == train_steps)
    due_save = step % checkpoint_period == 0 or step == end_step
    if step % log_every == 0 or due_eval or due_save:
      logged = {k: float(v) for k, v in jax.device_get(metrics).items()}
      check_divergence(logged, step, max_trainable_norm)
      log.train(step, logged)
    if due_eval:
      eval_metrics = evaluate(step, split.merged(state.trainable))
      log.eval(step, eval_metrics)
      best.update(step, eval_metrics, state.trainable)
    stop = due_eval and best.should_stop
    if due_save or stop:
      # The loss record first: killed before the checkpoint commits, a rerun resumes from the
      # previous step and drops the newer entries; killed after, the record is complete.
      log.write_record(step)
      saves.save(state)
    if due_eval or due_save:
      log.restart_clock(step)
    if stop:
      print(best.stopping_line(step), flush=True)
      break
  log.close()
  if evaluate:
    evaluate.close()
  saves.close()
  multihost.sync("train finished")  # process 0's best-record files are written
  summary = _write_summary(run, state, log, best, sizes)
  if return_variables:
    summary.update(trainable=state.trainable, frozen=split.frozen,
                   best_trainable=best.trainable() if summary["best_step"] is not None else None)
  return summary
