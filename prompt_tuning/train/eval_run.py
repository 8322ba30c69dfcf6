"""`prompt-tuning eval` and `prompt-tuning infer`: a saved prompt on a task or mixture.

The prompt comes from the model's gin config, usually `prompts/from_file.gin`
with `PROMPT_FILE=MODEL_DIR/prompts/step_N.npy` (or a `PromptEnsemble` of
several files); the backbone from INITIAL_CHECKPOINT_PATH.
"""
import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
import seqio

from prompt_tuning.train import data as data_lib
from prompt_tuning.train import evaluation, summaries
from prompt_tuning.train.checkpoints import write_json
from prompt_tuning.train.initialize import build_model, initialize_variables
from prompt_tuning.train.partitioning import Partitioner


def _setup(mixture_or_task_name, mixture_or_task_module, task_feature_lengths,
           initial_checkpoint_path, split, use_cached, num_examples, batch_size, seed=0):
  data_lib.import_task_modules(mixture_or_task_module)
  data_lib.get_mixture_or_task(mixture_or_task_name)
  model = build_model()
  data_lib.validate_feature_lengths(task_feature_lengths, getattr(model.prompt, "length", 0) or 0)
  partitioner = Partitioner()
  variables, shardings = initialize_variables(model, partitioner, initial_checkpoint_path,
                                              jax.random.PRNGKey(seed))
  fns = evaluation.EvalModelFns(model, partitioner, variables, shardings, batch_size=batch_size,
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
             num_examples: Optional[int] = None, step: int = 0) -> Dict[str, float]:
  """Metrics of every task in the mixture; writes `MODEL_DIR/eval/metrics.json` + TensorBoard."""
  fns, evaluator = _setup(mixture_or_task_name, mixture_or_task_module, task_feature_lengths,
                          initial_checkpoint_path, split, use_cached_tasks, num_examples, batch_size)
  metrics = evaluation.run_evaluation(evaluator, fns, step)
  out_dir = os.path.join(model_dir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  write_json(os.path.join(out_dir, f"metrics_{split}.json"), metrics)
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
          num_examples: Optional[int] = None) -> Dict[str, str]:
  """Writes `MODEL_DIR/inference/<task>-<split>.jsonl` lines `{inputs, targets, prediction}`."""
  fns, evaluator = _setup(mixture_or_task_name, mixture_or_task_module, task_feature_lengths,
                          initial_checkpoint_path, split, use_cached_tasks, num_examples, batch_size)
  out_dir = os.path.join(model_dir, "inference")
  os.makedirs(out_dir, exist_ok=True)
  written = {}
  for task in evaluator.eval_tasks:
    model_ds = evaluator.cached_model_datasets[task.name]
    predictions = dict(fns.predict_fn(model_ds))
    vocab = task.output_features["targets"].vocabulary
    path = os.path.join(out_dir, f"{task.name}-{split}.jsonl")
    with open(path + ".tmp", "w") as f:
      for i, ex in enumerate(evaluator.cached_task_datasets[task.name].as_numpy_iterator()):
        record = {"inputs": _text(ex, "inputs", task), "targets": _text(ex, "targets", task),
                  "prediction": vocab.decode(predictions[i])}
        f.write(json.dumps(record) + "\n")
    os.replace(path + ".tmp", path)
    written[task.name] = path
    print(f"{task.name}: {len(predictions)} predictions -> {path}", flush=True)
  return written


def _text(example: Dict[str, Any], key: str, task) -> str:
  raw = example.get(f"{key}_pretokenized")
  if raw is not None:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
  return task.output_features[key].vocabulary.decode(np.asarray(example[key]).tolist())
