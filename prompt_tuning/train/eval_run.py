"""`prompt-tuning eval` and `prompt-tuning infer`: saved prompts or deltas on a task or mixture.

The prompt comes from the model's gin config, usually `prompts/from_file.gin`
with `PROMPT_FILE=MODEL_DIR/prompts/step_N.npy` (or a `PromptEnsemble` of
several files); the backbone from INITIAL_CHECKPOINT_PATH. Other new parameters
(LoRA, adapters, APET's insertions, ...) come from an export of the run,
`DELTAS_FILE=MODEL_DIR/exports/step_N` (`configs/runs/deltas_eval.gin`), on a
model built with the run's method gin files.
"""
import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax
import gin
import numpy as np

from prompt_tuning import checks, fs
from prompt_tuning.errors import UserError
from prompt_tuning.prompts.ensemble import PromptEnsemble
from prompt_tuning.train import data as data_lib
from prompt_tuning.train import evaluation, summaries
from prompt_tuning.train.initialize import backbone_paths
from prompt_tuning.train.run_setup import RunContext, build_run


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
             allow_random_parameters: bool = False,
             deltas_file: Optional[str] = None) -> RunContext:
  """The run context of an eval or infer, after checking where its parameters came from.

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
                  edit_initial_variables=edit)
  check_parameters_are_loaded(ctx, allow_random_parameters, loaded)
  return ctx


def _check_arguments(command: str, model_dir, mixture_or_task_name, mixture_or_task_module, split,
                     batch_size, num_examples) -> None:
  """The cheap checks of eval/infer arguments, before the model is built or anything written."""
  checks.output_dir(model_dir, "MODEL_DIR")
  checks.positive_int(batch_size, f"BATCH_SIZE ({command}.batch_size)", "--gin.BATCH_SIZE=32")
  checks.optional_positive_int(num_examples, f"{command}.num_examples",
                               f"--gin.{command}.num_examples=100")
  data_lib.import_task_modules(mixture_or_task_module)
  data_lib.check_split(mixture_or_task_name, split, f"EVAL_SPLIT ({command}.split)")


def _setup(mixture_or_task_name, mixture_or_task_module, task_feature_lengths,
           initial_checkpoint_path, split, use_cached, num_examples, batch_size,
           allow_random_parameters, deltas_file):
  ctx = load_run(mixture_or_task_name, mixture_or_task_module, task_feature_lengths,
                 initial_checkpoint_path, allow_random_parameters, deltas_file)
  fns = evaluation.EvalModelFns(ctx.model, ctx.partitioner, ctx.variables, ctx.shardings,
                                batch_size=batch_size,
                                max_decode_length=task_feature_lengths["targets"])
  evaluator = evaluation.make_evaluator(mixture_or_task_name, task_feature_lengths, split,
                                        use_cached, num_examples)
  return fns, evaluator


@gin.configurable
def evaluate(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             initial_checkpoint_path: Optional[str] = None,
             mixture_or_task_module: Optional[Sequence[str]] = None, split: str = "validation",
             batch_size: int = 32, use_cached_tasks: bool = False,
             num_examples: Optional[int] = None, step: int = 0,
             allow_random_parameters: bool = False,
             deltas_file: Optional[str] = None) -> Dict[str, float]:
  """Metrics of every task in the mixture; writes `MODEL_DIR/eval/metrics.json` + TensorBoard.

  `allow_random_parameters=True` evaluates a prompt (or other new parameters)
  that was not loaded from a file: only ever on purpose, e.g. as a baseline.
  `deltas_file` (`DELTAS_FILE`): a run's export folder `MODEL_DIR/exports/step_N`
  holding its new parameters (see `prompt_tuning.train.exports`).
  """
  _check_arguments("evaluate", model_dir, mixture_or_task_name, mixture_or_task_module, split,
                   batch_size, num_examples)
  fns, evaluator = _setup(mixture_or_task_name, mixture_or_task_module, task_feature_lengths,
                          initial_checkpoint_path, split, use_cached_tasks, num_examples, batch_size,
                          allow_random_parameters, deltas_file)
  metrics = evaluation.run_evaluation(evaluator, fns, step)
  out_dir = fs.join(model_dir, "eval")
  fs.makedirs(out_dir)
  fs.write_json(fs.join(out_dir, f"metrics_{split}.json"), metrics)
  writer = summaries.Writer(out_dir)
  writer.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
  writer.close()
  for k, v in sorted(metrics.items()):
    print(f"{k}: {v:.4f}", flush=True)
  return metrics


@gin.configurable
def infer(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = None,
          mixture_or_task_module: Optional[Sequence[str]] = None, split: str = "validation",
          batch_size: int = 32, use_cached_tasks: bool = False,
          num_examples: Optional[int] = None,
          allow_random_parameters: bool = False,
          deltas_file: Optional[str] = None) -> Dict[str, str]:
  """Writes `MODEL_DIR/inference/<task>-<split>.jsonl` lines `{inputs, targets, prediction}`.

  `deltas_file` as in `evaluate`.
  """
  _check_arguments("infer", model_dir, mixture_or_task_name, mixture_or_task_module, split,
                   batch_size, num_examples)
  fns, evaluator = _setup(mixture_or_task_name, mixture_or_task_module, task_feature_lengths,
                          initial_checkpoint_path, split, use_cached_tasks, num_examples, batch_size,
                          allow_random_parameters, deltas_file)
  out_dir = fs.join(model_dir, "inference")
  written = {}
  for task in evaluator.eval_tasks:
    model_ds = evaluator.cached_model_datasets[task.name]
    predictions = dict(fns.predict_fn(model_ds))
    vocab = task.output_features["targets"].vocabulary
    path = fs.join(out_dir, f"{task.name}-{split}.jsonl")
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
