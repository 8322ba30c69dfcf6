"""The data side of multi-task prompts: each example's input starts with its task's token.

`prompts.multitask.MultiTaskPrompt` reads an example's task from its first
input token (the reference code's form). These map steps put that token there,
per subtask of a SeqIO mixture, for training (`marked_provider`, before the
mixture samples its tasks, so the mixing order is unchanged) and for seqio's
per-task evaluation (`mark_evaluator`). The token takes the input's first
position and the input keeps its length: an input that filled
`TASK_FEATURE_LENGTHS['inputs']` loses its last token.

Inputs that already carry the reference's `<extra_id_t>` sentinel (its task
preprocessors) need none of this: bind `MultiTaskPrompt.task_token_base` to
the sentinel `<extra_id_0>`'s id and `MULTITASK_TOKENS_IN_DATA = True`.
"""
import copy
from typing import Mapping, Optional

import gin
import seqio
import tensorflow as tf

from prompt_tuning.errors import UserError


def prepend_token(tokens: tf.Tensor, token: int, length: Optional[int] = None) -> tf.Tensor:
  """`[n]` tokens -> `[token, tokens...]`, cut to `length` (default: `n`, the input's own length).

  Before feature conversion `length` is the feature length; after it (padded
  rows) the default keeps the padded length.
  """
  out = tf.concat([tf.constant([token], tokens.dtype), tokens], axis=0)
  return out[:(tf.shape(tokens)[0] if length is None else length)]


def _check_tasks(provider, task_tokens: Mapping[str, int], what: str) -> None:
  missing = [t.name for t in seqio.get_subtasks(provider) if t.name not in task_tokens]
  if missing:
    raise UserError(f"{what} has tasks {missing} that the multi-task prompt does not know "
                    f"(MultiTaskPrompt.tasks = {sorted(task_tokens)}); set MULTITASK_TASKS to "
                    "the training mixture's tasks")


def marked_provider(provider, task_tokens: Mapping[str, int]):
  """A copy of a SeqIO task or mixture whose examples' `inputs` start with their task's token.

  Args:
    provider: a `seqio.Task` or `seqio.Mixture` (the registered one is not changed).
    task_tokens: `{task name: token id}` (`MultiTaskPrompt.task_token_ids`).
  """
  _check_tasks(provider, task_tokens, provider.name)

  def mark(task, ds, sequence_length):
    token = task_tokens[task.name]
    length = (sequence_length or {}).get("inputs")
    return ds.map(lambda ex: {**ex, "inputs": prepend_token(ex["inputs"], token, length)},
                  num_parallel_calls=tf.data.AUTOTUNE)

  marked = copy.copy(provider)
  if isinstance(provider, seqio.Mixture):
    def get_task_dataset(task, output_feature_keys, sequence_length=None, *args, **kwargs):
      ds = provider.get_task_dataset(task, output_feature_keys, sequence_length, *args, **kwargs)
      return mark(task, ds, sequence_length)
    marked.get_task_dataset = get_task_dataset
  else:
    def get_dataset(sequence_length=None, *args, **kwargs):
      return mark(provider, provider.get_dataset(sequence_length, *args, **kwargs), sequence_length)
    marked.get_dataset = get_dataset
  return marked


def mark_evaluator(evaluator: seqio.Evaluator, task_tokens: Mapping[str, int]) -> None:
  """Puts each task's token first in the `encoder_input_tokens` of `evaluator`'s model datasets."""
  for task in evaluator.eval_tasks:
    _check_tasks(task, task_tokens, f"evaluation task {task.name}")
  datasets = evaluator.cached_model_datasets  # seqio's own dict: replaced in place
  for name in list(datasets):
    token = task_tokens[name]
    datasets[name] = datasets[name].map(
        lambda i, ex, token=token: (i, {**ex, "encoder_input_tokens": prepend_token(
            ex["encoder_input_tokens"], token)}))


@gin.configurable
def task_tokens_of(model, tokens_in_data: bool = False) -> Optional[Mapping[str, int]]:
  """`{task name: token}` the data path must add for `model`'s prompt, or None.

  Args:
    model: the run's `T5`.
    tokens_in_data: the tasks' own preprocessing already starts each input with
      its task token (the reference's sentinel form): add none.
  """
  prompt = getattr(model, "prompt", None)
  if not hasattr(prompt, "task_token_ids"):
    if tokens_in_data:
      raise UserError("MULTITASK_TOKENS_IN_DATA is set but the prompt is not a MultiTaskPrompt; "
                      "add configs/prompts/multitask.gin or drop the binding")
    return None
  if tokens_in_data:
    return None
  return prompt.task_token_ids(model.config.vocab_size)
