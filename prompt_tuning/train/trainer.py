"""The prompt-tuning train loop (`prompt-tuning train`), readable in one sitting.

    build_run (tasks checked, model, mesh, backbone sharded + new variables)
    -> split trainable/frozen -> compile_train_step -> resume from MODEL_DIR if possible
    -> loop: batch -> step -> log -> [eval] -> [checkpoint + prompt export + new-parameter export]

Run folder: checkpoints/ (Orbax), prompts/step_N.npy, exports/step_N/ (every new
parameter, `train.exports`), the plan's records (e.g. apet_selection.json,
`train.run_records`), config.gin, train_summary.json, TensorBoard events.

Nothing is written to MODEL_DIR until the configuration, the task, the data
and the checkpoint shapes have been checked.

Steps are absolute, as in T5X: a run starts at the step its initial checkpoint
carries (`checkpoint_1100000`: 1,100,000; 0 for Hugging Face folders and a
random backbone) and ends at `TRAIN_STEPS`, so `TRAIN_STEPS = 1_150_000` from
that checkpoint tunes 50,000 steps. Checkpoints, `prompts/step_N.npy`, eval
and checkpoint periods, TensorBoard and `train_summary.json` count the same way.
"""
import logging
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import gin
import jax
import optax

from prompt_tuning import checks, fs, host_memory, multihost
from prompt_tuning.data import bucketing
from prompt_tuning.data.task_tokens import task_tokens_of
from prompt_tuning.errors import UserError
from prompt_tuning.train import data as data_lib
from prompt_tuning.train import config_check, evaluation, exports, run_lock, run_records, summaries
from prompt_tuning.train.checkpoints import (RunCheckpoints, export_prompt, export_prompt_if_missing,
                                             load_tree, save_tree)
from prompt_tuning.train.initialize import checkpoint_step
from prompt_tuning.train.partitioning import check_batch_size
from prompt_tuning.train.run_setup import abstract_arrays, build_run, compile_train_step
from prompt_tuning.train.trainable import (check_extras_train, count_parameters,
                                           trainable_patterns)


# The best evaluation so far (train.early_stopping_metric): its step and value, and the
# trainable tree of that step for every method (the prompt also as prompts/best.npy).
BEST_RECORD = "prompts/best.json"
BEST_TRAINABLE = "best/trainable.npz"


def metric_key(metrics: Mapping[str, float], name: str) -> str:
  """The key of `metrics` that `name` names: itself, or the one `task/name` when unique
  (so `accuracy` names `super_glue_rte/accuracy`, as XPrompt's metric does)."""
  if name in metrics:
    return name
  matches = [k for k in metrics if k.split("/")[-1] == name]
  if len(matches) == 1:
    return matches[0]
  raise UserError(f"early-stopping metric {name!r} is not {'one' if not matches else 'a unique one'}"
                  f" of the eval metrics {sorted(metrics)}; fix train.early_stopping_metric")


class EarlyStopping:
  """Tracks the best value of `metric`; stops when it has not improved for `patience` evaluations."""

  def __init__(self, metric: Optional[str], mode: str = "max", patience: Optional[int] = None):
    self.metric, self.mode, self.patience = metric, mode, patience
    self.best, self.bad_evals = None, 0

  def improved(self, metrics: Mapping[str, float]) -> bool:
    if not self.metric:
      return False
    value = metrics[metric_key(metrics, self.metric)]
    better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
    if better:
      self.best, self.bad_evals = value, 0
    else:
      self.bad_evals += 1
    return better

  def resume(self, record: Optional[Mapping[str, Any]], step: int) -> None:
    """Continues from the best recorded before `step` (so a resume never forgets it)."""
    if self.metric and record and record.get("metric") == self.metric and record["step"] <= step:
      self.best = record["value"]

  @property
  def should_stop(self) -> bool:
    return self.patience is not None and self.bad_evals >= self.patience


def _check_arguments(*, model_dir, train_steps, batch_size, eval_period, checkpoint_period,
                     keep_checkpoints, early_stopping_mode, early_stopping_patience,
                     num_microbatches, log_every, max_trainable_norm, eval_num_examples,
                     stop_after_steps) -> None:
  """The cheap checks of `train`'s arguments, before the model is built or anything written."""
  checks.output_dir(model_dir, "MODEL_DIR")
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
  checks.positive_int(num_microbatches, "train.num_microbatches", "--gin.train.num_microbatches=1")
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


def _data_splits(train_name: str, train_split: str, eval_name: Optional[str],
                 eval_split: str) -> Dict[str, list]:
  splits = {train_name: [train_split]}
  if eval_name:
    splits.setdefault(eval_name, []).append(eval_split)
  return splits


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
          early_stopping_patience: Optional[int] = None, num_microbatches: int = 1,
          frozen_dtype: Optional[str] = None, use_cached_tasks: bool = False, log_every: int = 10,
          train_split: str = "train", stop_after_steps: Optional[int] = None,
          return_variables: bool = False, allow_config_change: bool = False,
          max_trainable_norm: Optional[float] = 1e6,
          length_buckets: Optional[bucketing.LengthBuckets] = None,
          edit_initial_variables: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None
          ) -> Dict[str, Any]:
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
  fixed shapes: `runs/fixed_shapes.gin`, `data/bucketing.py`).
  See `configs/runs/prompt_finetune.gin`.
  """
  # ---- validate everything before touching MODEL_DIR ----
  eval_name = eval_mixture_or_task_name or mixture_or_task_name
  _check_arguments(model_dir=model_dir, train_steps=train_steps, batch_size=batch_size,
                   eval_period=eval_period, checkpoint_period=checkpoint_period,
                   keep_checkpoints=keep_checkpoints, early_stopping_mode=early_stopping_mode,
                   early_stopping_patience=early_stopping_patience,
                   num_microbatches=num_microbatches, log_every=log_every,
                   max_trainable_norm=max_trainable_norm, eval_num_examples=eval_num_examples,
                   stop_after_steps=stop_after_steps)
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
  if eval_period:
    data_lib.check_split(eval_name, eval_split, "EVAL_SPLIT (train.eval_split)")
  ctx = build_run(initial_checkpoint_path=initial_checkpoint_path, seed=seed,
                  mixture_or_task_names=[mixture_or_task_name] + ([eval_name] if eval_period else []),
                  mixture_or_task_module=mixture_or_task_module,
                  task_feature_lengths=task_feature_lengths, frozen_dtype=frozen_dtype,
                  edit_initial_variables=edit_initial_variables,
                  data_splits=_data_splits(mixture_or_task_name, train_split,
                                           eval_name if eval_period else None, eval_split))
  partitioner = ctx.partitioner
  local_batch = check_batch_size(batch_size, partitioner)
  if num_microbatches < 1 or batch_size % (num_microbatches * partitioner.data_parallel_size):
    raise UserError(f"BATCH_SIZE={batch_size} does not split into {num_microbatches} microbatches "
                    f"over {partitioner.data_parallel_size} data shards")
  split = ctx.split(trainable_patterns())
  check_extras_train(ctx.model, split.trainable, split.patterns)
  ctx.variables = None  # the split holds them; the backbone is not kept twice
  compiled = compile_train_step(ctx, split, optimizer, num_microbatches, start_step=initial_step)
  trainable, opt_state, frozen = split.trainable, compiled.opt_state, split.frozen

  def export_info(step):
    return {"step": step, "initial_checkpoint_path": initial_checkpoint_path,
            "mixture_or_task_name": mixture_or_task_name, "trainable_patterns": list(split.patterns)}

  # ---- resume ----
  run_lock.acquire(model_dir)  # one writer per MODEL_DIR; released when train() ends or raises
  checkpoints = RunCheckpoints(model_dir, keep=keep_checkpoints)
  start_step, batches_consumed = initial_step, 0
  records = run_records.model_records(ctx.model)
  if checkpoints.latest_step() is not None:
    config_check.check_config_unchanged(model_dir, allow_config_change)
    run_records.check_records(model_dir, records)  # e.g. APET's positions: never resumed elsewhere
  abstract = {"trainable": abstract_arrays(trainable, split.trainable_shardings),
              "opt_state": abstract_arrays(opt_state, compiled.opt_shardings)}
  resumed = checkpoints.restore_latest(abstract)  # sets aside damaged newer steps
  if resumed is not None:
    restored, meta, start_step = resumed
    trainable, opt_state = restored["trainable"], restored["opt_state"]
    batches_consumed = int(meta.get("batches_consumed", start_step))
    _check_resumed_steps(meta, start_step, initial_step, checkpoints.directory)
    if meta.get("initial_checkpoint_path") != initial_checkpoint_path:
      logging.warning("resuming a run tuned against %s with backbone %s",
                      meta.get("initial_checkpoint_path"), initial_checkpoint_path)
    print(f"resumed from {checkpoints.directory} at step {start_step:,}", flush=True)
    export_prompt_if_missing(model_dir, f"step_{start_step}",
                             ctx.exported_prompt(split.merged(trainable)))
    exports.export_if_missing(model_dir, f"step_{start_step}", ctx.model,
                              split.merged(trainable), export_info(start_step))

  # The step of the run's first batch: data positions and example indices count from it.
  first_step = start_step - batches_consumed
  end_step = train_steps if stop_after_steps is None else min(train_steps, stop_after_steps)
  if start_step < train_steps:
    count = train_steps - start_step
    print(f"from step {start_step:,} to {train_steps:,}: {count:,} step{'s' if count != 1 else ''}"
          + (f" (stopping at {end_step:,})" if end_step < train_steps else ""), flush=True)
  else:
    print(f"step {start_step:,} reached TRAIN_STEPS={train_steps:,}: nothing left to train",
          flush=True)
  task_tokens = task_tokens_of(ctx.model)  # multi-task prompts: each input's task token
  batches = data_lib.batches(mixture_or_task_name, task_feature_lengths, train_split, local_batch,
                             seed=seed, skip_batches=batches_consumed,
                             use_cached=use_cached_tasks, task_tokens=task_tokens,
                             length_buckets=length_buckets)
  fs.makedirs(model_dir)
  run_records.write_records(model_dir, records)
  writer = summaries.Writer(model_dir)
  n_trainable, n_frozen = count_parameters(trainable), count_parameters(frozen)
  print(f"trainable parameters: {n_trainable:,} ({', '.join(split.patterns)}); frozen: "
        f"{n_frozen:,}; mesh {dict(partitioner.mesh.shape)}", flush=True)
  step_fn = compiled.step

  evaluator, early = None, EarlyStopping(early_stopping_metric, early_stopping_mode,
                                         early_stopping_patience)
  if resumed is not None:
    early.resume(fs.read_json(fs.join(model_dir, BEST_RECORD)), start_step)
  if eval_period:
    evaluator = evaluation.make_evaluator(eval_name, task_feature_lengths, eval_split,
                                          use_cached_tasks, eval_num_examples, task_tokens)

  def export_all(name, step):
    variables = split.merged(trainable)
    value = ctx.exported_prompt(variables)
    if value is not None:
      export_prompt(model_dir, name, value)
    exports.export_new_variables(model_dir, name, ctx.model, variables, export_info(step))

  def meta(step):
    return {"step": step, "batches_consumed": step - first_step, "initial_step": first_step,
            "initial_checkpoint_path": initial_checkpoint_path,
            "mixture_or_task_name": mixture_or_task_name, "trainable_patterns": list(split.patterns)}

  def save(step):
    # The loss record first: killed before the checkpoint commits, a rerun resumes from the
    # previous step and drops the newer entries; killed after, the record is complete.
    summaries.write_history(model_dir, step, history, eval_history)
    checkpoints.save(step, {"trainable": trainable, "opt_state": opt_state}, meta(step))
    export_all(f"step_{step}", step)

  eval_fns = None

  def evaluate(step):
    nonlocal eval_fns
    if eval_fns is None:  # built once: its jitted functions compile once per run
      eval_fns = evaluation.EvalModelFns(ctx.model, partitioner, None, split.shardings,
                                         max_decode_length=task_feature_lengths["targets"],
                                         inputs_length=task_feature_lengths["inputs"])
    eval_fns.variables = split.merged(trainable)
    metrics = evaluation.run_evaluation(evaluator, eval_fns, step)
    writer.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
    print(f"step {step} eval: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
          flush=True)
    return metrics

  # ---- loop ----
  history, eval_history = summaries.previous_history(model_dir, start_step if resumed else None)
  progress = summaries.Progress(start_step, train_steps)
  step, last_metrics = start_step, None
  wrote_config = False
  while step < end_step:
    local = next(batches, None)
    if local is None:
      raise UserError(f"{mixture_or_task_name} ran out of data at step {step}")
    with partitioner.context():
      batch = partitioner.shard_batch(
          data_lib.with_example_index(local, step - first_step, batch_size))
      trainable, opt_state, metrics = step_fn(trainable, opt_state, frozen, batch,
                                              ctx.step_rng(step))
    if step == start_step:  # the step has compiled: its compiler's memory is free now
      host_memory.release_free_memory()
    step += 1
    due_eval = bool(eval_period) and (step % eval_period == 0 or step == train_steps)
    due_save = step % checkpoint_period == 0 or step == end_step
    if step % log_every == 0 or due_eval or due_save or step == end_step:
      last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      check_divergence(last_metrics, step, max_trainable_norm)
      if not wrote_config:  # before any checkpoint: every save is a logged step
        summaries.write_operative_config(model_dir)
        wrote_config = True
      history.append({"step": step, **last_metrics})
      writer.scalars(step, {f"train/{k}": v for k, v in last_metrics.items()})
      print(progress.line(step, last_metrics), flush=True)
    stop = False
    if due_eval:
      eval_metrics = evaluate(step)
      eval_history.append({"step": step, **eval_metrics})
      if early.improved(eval_metrics):
        export_all("best", step)
        save_tree(fs.join(model_dir, BEST_TRAINABLE), trainable)
        fs.write_json(fs.join(model_dir, BEST_RECORD),
                      {"step": step, "metric": early.metric, "value": early.best})
      stop = early.should_stop
    if due_save or stop:
      save(step)
    if due_eval or due_save:
      progress.restart_clock(step)
    if stop:
      print(f"early stopping at step {step}: {early.metric} has not improved for "
            f"{early.patience} evaluations (best {early.best})", flush=True)
      break
  writer.close()
  checkpoints.close()
  multihost.sync("train finished")  # process 0's best-record files are written
  best = fs.read_json(fs.join(model_dir, BEST_RECORD)) if early.best is not None else None
  summary = {"model_dir": model_dir, "initial_step": first_step, "final_step": step,
             "trainable_parameters": n_trainable,
             "frozen_parameters": n_frozen, "train_history": history, "eval_history": eval_history,
             "best_metric": early.best, "best_step": best["step"] if best else None}
  fs.write_json(fs.join(model_dir, summaries.SUMMARY_FILE), summary)
  if return_variables:
    summary.update(trainable=trainable, frozen=frozen,
                   best_trainable=load_tree(fs.join(model_dir, BEST_TRAINABLE)) if best else None)
  return summary

