"""`prompt-tuning eval` and `prompt-tuning infer`: a saved prompt on a task or mixture.

The prompt comes from the model's gin config, usually `prompts/from_file.gin`
with `PROMPT_FILE=MODEL_DIR/prompts/step_N.npy` (or a `PromptEnsemble` of
several files); the backbone from INITIAL_CHECKPOINT_PATH. Other new parameters
(LoRA, adapters, APET's insertions, ...) come from an export of the run,
`DELTAS_FILE=MODEL_DIR/exports/step_N` (`configs/runs/deltas_eval.gin`), on a
model built with the run's method gin files.

T5X's eval bindings, which the reference's eval scripts use, map onto these:
`CHECKPOINT_PATH` sets INITIAL_CHECKPOINT_PATH (`gin_utils.T5X_MACRO_ALIASES`),
`EVAL_OUTPUT_DIR` / `INFER_OUTPUT_DIR` replace MODEL_DIR/eval and
MODEL_DIR/inference, and `utils.DatasetConfig.{split,batch_size,use_cached,...}` set
the split, batch size, cache use, ... (`prompt_tuning.t5x_settings` rewrites them into
`evaluate.split` and the like when the gin files are parsed).
"""
import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax
import gin
import numpy as np

from prompt_tuning import checks, fs
from prompt_tuning.data.task_tokens import task_tokens_of
from prompt_tuning.errors import UserError
from prompt_tuning.prompts.ensemble import PromptEnsemble
from prompt_tuning.prompts.files import step_of
from prompt_tuning.run_dir import ResultsDir, RunDir
from prompt_tuning.train import data as data_lib
from prompt_tuning.train import evaluation, summaries
from prompt_tuning.train.initialize import backbone_paths, checkpoint_step
from prompt_tuning.train.run_setup import RunContext, build_run


def output_dir(model_dir: Optional[str], t5x_dir: Optional[str], t5x_name: str,
               subdir: str) -> ResultsDir:
  """`t5x_dir` (T5X's EVAL_OUTPUT_DIR / INFER_OUTPUT_DIR) or `MODEL_DIR/<subdir>`: exactly one.

  `subdir` is the `RunDir` entry of the results (`eval` or `inference`).
  """
  if model_dir and t5x_dir:
    raise UserError(f"both MODEL_DIR and {t5x_name} are set; results go to {t5x_name} when set, "
                    f"else MODEL_DIR/{subdir}: set only one")
  if t5x_dir:
    return ResultsDir(t5x_dir)
  if model_dir:
    return getattr(RunDir(model_dir), subdir)
  raise UserError(f"no output folder: set --gin.MODEL_DIR=\"'/path/run'\" (results in "
                  f"MODEL_DIR/{subdir}) or T5X's --gin.{t5x_name}=\"'/path'\"")


def prompt_files(model) -> Tuple[str, ...]:
  """The files the model's prompt is loaded from (PROMPT_FILE or PROMPT_FILES), if any."""
  if isinstance(model.prompt, PromptEnsemble):
    return tuple(model.prompt.prompt_files)
  path = getattr(getattr(model.prompt, "initializer", None), "path", None)
  return (path,) if path else ()


def evaluated_step(model, initial_checkpoint_path: Optional[str],
                   deltas_file: Optional[str] = None) -> int:
  """The step summaries of an eval are written at: that of a `step_N.npy` PROMPT_FILE
  (all files of an ensemble when they agree) or of a DELTAS_FILE export, else the initial
  checkpoint's step."""
  if deltas_file:
    from prompt_tuning.train import exports
    # Only export.json: load_run has read and checked the tensors already.
    step = (fs.read_json(exports.export_files(deltas_file)[1]) or {}).get("step")
    if isinstance(step, int):
      return step
  steps = {step_of(path) for path in prompt_files(model)}
  if len(steps) == 1 and None not in steps:
    return steps.pop()
  return checkpoint_step(initial_checkpoint_path)


def loaded_parameter_paths(model, from_files: Sequence[str] = ()) -> Tuple[str, ...]:
  """The new (non-backbone) parameter paths whose values come from files, not initializers.

  Args:
    model: the run's `T5`.
    from_files: paths loaded by other means, e.g. from `DELTAS_FILE` (`exports.loading_edit`).
  """
  paths = set(from_files)
  if isinstance(model.prompt, PromptEnsemble):
    paths.add("prompt/prompts")
  elif getattr(getattr(model.prompt, "initializer", None), "loads_saved_values", False):
    paths.add("prompt/prompt")
  return tuple(sorted(paths))


def check_parameters_are_loaded(ctx: RunContext, allow_random_parameters: bool,
                                from_files: Sequence[str] = ()) -> None:
  """Refuses to evaluate parameters that were randomly initialized rather than loaded.

  Every parameter outside the backbone must come from where the user said
  (`PROMPT_FILE`, `PROMPT_FILES`, `DELTAS_FILE`); otherwise eval would report
  plausible-looking metrics of an untrained prompt or of identity deltas.
  `from_files` are the paths loaded from `DELTAS_FILE`.
  """
  params = flax.traverse_util.flatten_dict(flax.core.unfreeze(ctx.variables["params"]), sep="/")
  new = set(params) - backbone_paths(ctx.model.config)
  random = sorted(new - set(loaded_parameter_paths(ctx.model, from_files)))
  if random and not allow_random_parameters:
    shown = ", ".join(random[:3]) + (f" and {len(random) - 3} more" if len(random) > 3 else "")
    raise UserError(
        f"refusing to evaluate randomly initialized parameters ({shown}): load the prompt with "
        "--gin_file=prompts/from_file.gin --gin.PROMPT_FILE=\"'.../prompts/step_N.npy'\" after the "
        "model's gin file (exported prompts already fold Residual/XPrompt, so drop those method "
        "files), load other new parameters with --gin_file=runs/deltas_eval.gin "
        "--gin.DELTAS_FILE=\"'MODEL_DIR/exports/step_N'\", or pass "
        "--gin.evaluate.allow_random_parameters=True to evaluate them on purpose")


def load_run(mixture_or_task_name: str, mixture_or_task_module: Optional[Sequence[str]],
             task_feature_lengths: Mapping[str, int], initial_checkpoint_path: Optional[str],
             allow_random_parameters: bool = False, deltas_file: Optional[str] = None,
             split: Optional[str] = None) -> RunContext:
  """The run context of an eval or infer, after checking where its parameters came from
  (and, given `split`, that every task has data for it).

  `deltas_file`: an export folder (`MODEL_DIR/exports/step_N`) whose new
  parameters replace the model's freshly initialized ones.
  """
  from prompt_tuning.train import exports
  from prompt_tuning.train.initialize import build_model
  model, edit, loaded = build_model(), None, ()
  if deltas_file:
    edit, loaded = exports.loading_edit(deltas_file, model)
  ctx = build_run(initial_checkpoint_path=initial_checkpoint_path,
                  mixture_or_task_names=[mixture_or_task_name],
                  mixture_or_task_module=mixture_or_task_module,
                  task_feature_lengths=task_feature_lengths, model=model,
                  edit_initial_variables=edit,
                  data_splits={mixture_or_task_name: [split]} if split else None)
  check_parameters_are_loaded(ctx, allow_random_parameters, loaded)
  return ctx


def _check_arguments(command: str, out_dir, mixture_or_task_name, mixture_or_task_module, split,
                     batch_size, num_examples) -> None:
  """The cheap checks of eval/infer arguments, before the model is built or anything written."""
  checks.output_dir(out_dir.root,
                    "the output folder (MODEL_DIR or EVAL_OUTPUT_DIR/INFER_OUTPUT_DIR)")
  checks.positive_int(batch_size, f"BATCH_SIZE ({command}.batch_size)", "--gin.BATCH_SIZE=32")
  checks.optional_positive_int(num_examples, f"{command}.num_examples",
                               f"--gin.{command}.num_examples=100")
  data_lib.import_task_modules(mixture_or_task_module)
  data_lib.check_split(mixture_or_task_name, split, f"EVAL_SPLIT ({command}.split)")


def _prepare(command, model_dir, t5x_output_dir, mixture_or_task_name, mixture_or_task_module,
             task_feature_lengths, initial_checkpoint_path, split, batch_size, use_cached,
             num_examples, allow_random_parameters, deltas_file):
  """What `evaluate` and `infer` share: checks, the loaded run, its jitted model functions and
  the SeqIO evaluator.

  Returns:
    (ctx, fns, evaluator, split, out_dir).
  """
  t5x_name, subdir = (("EVAL_OUTPUT_DIR", "eval") if command == "evaluate"
                      else ("INFER_OUTPUT_DIR", "inference"))
  out_dir = output_dir(model_dir, t5x_output_dir, t5x_name, subdir)
  _check_arguments(command, out_dir, mixture_or_task_name, mixture_or_task_module, split,
                   batch_size, num_examples)
  ctx = load_run(mixture_or_task_name, mixture_or_task_module, task_feature_lengths,
                 initial_checkpoint_path, allow_random_parameters, deltas_file, split)
  ctx.check_pass_fits(batch_size, f"decoding TASK_FEATURE_LENGTHS {dict(task_feature_lengths)} "
                      f"in batches of {batch_size}", "lower TASK_FEATURE_LENGTHS or BATCH_SIZE",
                      decoding=True, copies=getattr(ctx.model.prompt, "ensemble_size", 1))
  fns = evaluation.EvalModelFns(ctx.model, ctx.partitioner, ctx.variables, ctx.shardings,
                                batch_size=batch_size,
                                max_decode_length=task_feature_lengths["targets"],
                                inputs_length=task_feature_lengths["inputs"])
  evaluator = evaluation.make_evaluator(mixture_or_task_name, task_feature_lengths, split,
                                        use_cached, num_examples, task_tokens_of(ctx.model))
  return ctx, fns, evaluator, split, out_dir


@gin.configurable
def evaluate(*, model_dir: Optional[str] = None, mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             initial_checkpoint_path: Optional[str] = None,
             mixture_or_task_module: Optional[Sequence[str]] = None, split: str = "validation",
             batch_size: int = 32, use_cached_tasks: bool = False,
             num_examples: Optional[int] = None, step: Optional[int] = None,
             allow_random_parameters: bool = False, eval_output_dir: Optional[str] = None,
             deltas_file: Optional[str] = None) -> Dict[str, float]:
  """Metrics of every task in the mixture; writes `metrics_<split>.json` + TensorBoard.

  Results go to `MODEL_DIR/eval/` or, with T5X's `EVAL_OUTPUT_DIR`, there.
  TensorBoard summaries are written at `step`: by default the step of a
  `step_N.npy` PROMPT_FILE or DELTAS_FILE export, else the initial checkpoint's step.
  `allow_random_parameters=True` evaluates a prompt (or other new parameters)
  that was not loaded from a file: only ever on purpose, e.g. as a baseline.
  T5X's `utils.DatasetConfig` fields set `split`, `batch_size`, `use_cached_tasks`, ...
  `deltas_file` (`DELTAS_FILE`): a run's export folder `MODEL_DIR/exports/step_N`
  holding its new parameters (see `prompt_tuning.train.exports`).
  """
  ctx, fns, evaluator, split, out_dir = _prepare(
      "evaluate", model_dir, eval_output_dir, mixture_or_task_name, mixture_or_task_module,
      task_feature_lengths, initial_checkpoint_path, split, batch_size, use_cached_tasks,
      num_examples, allow_random_parameters, deltas_file)
  if step is None:
    step = evaluated_step(ctx.model, initial_checkpoint_path, deltas_file)
  metrics = evaluation.run_evaluation(evaluator, fns, step)
  fs.makedirs(out_dir.root)
  fs.write_json(out_dir.metrics(split), metrics)
  writer = summaries.Writer(out_dir.tensorboard)
  writer.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
  writer.close()
  print(f"step {step:,} {split}: written to {out_dir}", flush=True)
  for k, v in sorted(metrics.items()):
    print(f"{k}: {v:.4f}", flush=True)
  return metrics


@gin.configurable
def infer(*, model_dir: Optional[str] = None, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = None,
          mixture_or_task_module: Optional[Sequence[str]] = None, split: str = "validation",
          batch_size: int = 32, use_cached_tasks: bool = False,
          num_examples: Optional[int] = None,
          allow_random_parameters: bool = False, infer_output_dir: Optional[str] = None,
          deltas_file: Optional[str] = None) -> Dict[str, str]:
  """Writes `<task>-<split>.jsonl` lines `{inputs, targets, prediction}`.

  To `MODEL_DIR/inference/` or, with T5X's `INFER_OUTPUT_DIR`, there.
  `deltas_file` as in `evaluate`.
  """
  _, fns, evaluator, split, out_dir = _prepare(
      "infer", model_dir, infer_output_dir, mixture_or_task_name, mixture_or_task_module,
      task_feature_lengths, initial_checkpoint_path, split, batch_size, use_cached_tasks,
      num_examples, allow_random_parameters, deltas_file)
  written = {}
  for task in evaluator.eval_tasks:
    model_ds = evaluator.cached_model_datasets[task.name]
    predictions = dict(fns.predict_fn(model_ds))
    vocab = task.output_features["targets"].vocabulary
    path = out_dir.predictions(task.name, split)
    lines = []
    for i, ex in enumerate(evaluator.cached_task_datasets[task.name].as_numpy_iterator()):
      record = {"inputs": _text(ex, "inputs", task), "targets": _text(ex, "targets", task),
                "prediction": vocab.decode(predictions[i])}
      lines.append(json.dumps(record) + "\n")
    fs.write_on_first_host(path, lambda f: f.write("".join(lines).encode()))
    written[task.name] = path
    print(f"{task.name}: {len(predictions)} predictions -> {path}", flush=True)
  return written


def _text(example: Dict[str, Any], key: str, task) -> str:
  raw = example.get(f"{key}_pretokenized")
  if raw is not None:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
  return task.output_features[key].vocabulary.decode(np.asarray(example[key]).tolist())
