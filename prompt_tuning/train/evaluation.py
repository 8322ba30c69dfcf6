"""Model functions for `seqio.Evaluator`: predictions (decoding) and scores (rank classification).

seqio hands us enumerated datasets of `(index, model features)`; we batch
them to a fixed size (padding the last batch, so jit compiles once), run the
jitted model function over the mesh, and return `(index, output)` pairs.
Every host iterates the same global batches, but puts only the rows of its own
devices into the global arrays (`make_array_from_callback`), so each host
computes its shard of the evaluation set; the outputs are gathered across
hosts (`to_host`) so every host scores the same full set of predictions and
the metrics equal the single-host ones.
"""
import dataclasses
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import gin
import jax
import numpy as np
import seqio

from prompt_tuning.data import bucketing
from prompt_tuning.errors import UserError
from prompt_tuning.models import decoding
from prompt_tuning.prompts import ensemble
from prompt_tuning.train import eval_logs, rank_scoring
from prompt_tuning.multihost import to_host
from prompt_tuning.train.partitioning import Partitioner

Variables = Dict[str, Any]


def _fixed_batches(dataset, batch_size: int, keys: Sequence[str],
                   buckets: Optional[bucketing.LengthBuckets] = None):
  """Yields (indices, {key: [batch_size, ...]}, n_real) with zero-padded tails; with
  `buckets`, the length dimension of each batch is cut to its bucket."""
  indices, rows = [], []
  def flush():
    n = len(rows)
    batch = {k: np.stack([r[k] for r in rows] + [np.zeros_like(rows[0][k])] * (batch_size - n))
             for k in keys}
    if buckets is not None:
      batch = bucketing.pad_to_buckets(batch, buckets)
    return list(indices), batch, n
  for index, features in dataset.as_numpy_iterator():
    indices.append(int(index))
    rows.append({k: features[k] for k in keys})
    if len(rows) == batch_size:
      yield flush()
      indices, rows = [], []
  if rows:
    yield flush()


@gin.configurable
class EvalModelFns:
  """Jitted predict/score functions; `variables` may be replaced between
  evaluations (same shapes) without recompiling.

  Attributes:
    batch_size: global evaluation batch (a multiple of the data-parallel size).
    beam_size, alpha: decoding settings (`beam_size=1` is greedy).
    length_buckets: cut each batch's encoder inputs to their bucket; the
      functions compile once per bucket (the run files bind 'auto':
      `data/bucketing.py`; None: fixed shapes). Targets are a training
      setting: decoding keeps `max_decode_length`, and rank classification
      already cuts candidates to the longest one.
    inputs_length: `TASK_FEATURE_LENGTHS['inputs']` of the evaluated data:
      'auto' buckets resolve from it and explicit ones must end at it (None:
      only the lists' form is checked; 'auto' is an error).
    pack: `PACK` of the eval/infer run files; True is refused (packing is built for
      training, `data/packing.py`); training's periodic evaluation never packs.
  """

  def __init__(self, model, partitioner: Partitioner, variables: Variables,
               variable_shardings: Any, batch_size: int = 32, beam_size: int = 1,
               alpha: float = 0.6, max_decode_length: Optional[int] = None,
               length_buckets: Optional[bucketing.LengthBuckets] = None,
               inputs_length: Optional[int] = None, pack: bool = False):
    if pack is not False:
      raise UserError(f"PACK={pack!r} (EvalModelFns.pack): evaluation and inference do not pack "
                      "(decoding and rank classification read one example per row; length "
                      "buckets already cut their padding); set PACK = False")
    self.model = model
    buckets = bucketing.check_buckets(
        length_buckets, None if inputs_length is None else {"inputs": inputs_length})
    self.inputs_buckets = buckets and dataclasses.replace(buckets, targets=None)
    self.partitioner = partitioner
    self.variables = variables
    # With a prompt ensemble every example is repeated once per prompt.
    self.copies = getattr(model.prompt, "ensemble_size", 1)
    shards = partitioner.data_parallel_size
    self.batch_size = max(shards, batch_size // shards * shards)
    self.max_decode_length = max_decode_length
    data = partitioner.data_sharding

    def predict(variables, encoder_input_tokens, max_len):
      tokens, _ = decoding.generate(model, variables, encoder_input_tokens,
                                    max_decode_length=max_len, beam_size=beam_size, alpha=alpha)
      return tokens

    def score(variables, batch):
      return rank_scoring.packed_scores(model, variables, batch)

    self._predict = jax.jit(predict, static_argnums=2,
                            in_shardings=(variable_shardings, data), out_shardings=data)
    self._score = jax.jit(score, in_shardings=(variable_shardings, data), out_shardings=data)

  def _global(self, batch: Dict[str, np.ndarray]) -> Dict[str, jax.Array]:
    sharding = self.partitioner.data_sharding
    batch = {k: np.repeat(v, self.copies, axis=0) for k, v in batch.items()}
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
            for k, v in batch.items()}

  def predict_fn(self, dataset, model_feature_shapes: Optional[Mapping[str, int]] = None
                 ) -> List[Tuple[int, List[int]]]:
    out = []
    for indices, batch, n in _fixed_batches(dataset, self.batch_size, ["encoder_input_tokens",
                                                                        "decoder_target_tokens"],
                                            self.inputs_buckets):
      max_len = self.max_decode_length or batch["decoder_target_tokens"].shape[1]
      with self.partitioner.context():
        tokens = self._predict(self.variables, self._global(batch)["encoder_input_tokens"], max_len)
      tokens = ensemble.combine_predictions(to_host(tokens), self.copies)[:n]
      out.extend(zip(indices, tokens))
    return out

  def score_fn(self, dataset, model_feature_shapes: Optional[Mapping[str, int]] = None
               ) -> List[Tuple[int, float]]:
    """Rank classification: each distinct input is encoded once (`rank_scoring`);
    `batch_size` counts inputs, each with all of its candidate targets."""
    out = []
    for indices, batch, n in rank_scoring.candidate_batches(dataset.as_numpy_iterator(),
                                                            self.batch_size):
      if self.inputs_buckets is not None:
        batch = bucketing.pad_to_buckets(batch, self.inputs_buckets)
      with self.partitioner.context():
        scores = self._score(self.variables, self._global(batch))
      scores = ensemble.combine_scores(to_host(scores), self.copies)[:n]
      out.extend(rank_scoring.scores_of_rows(indices, scores))
    return out


class _WithoutEmptyLoggerWarning(logging.Filter):
  """Drops seqio's "'logger_cls' is empty so seqio.Evaluator will not log its results": an
  evaluator without `log_dir` (XPrompt's search, the demo, `infer`) writes its results itself,
  or none on purpose."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "'logger_cls' is empty" not in record.getMessage()


_EMPTY_LOGGER_FILTER = _WithoutEmptyLoggerWarning()


def make_evaluator(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                   split: str = "validation", use_cached: bool = False,
                   num_examples: Optional[int] = None,
                   task_tokens: Optional[Mapping[str, int]] = None,
                   log_dir: Optional[str] = None) -> seqio.Evaluator:
  """A seqio evaluator of every task of `mixture_or_task_name` (metrics per task).

  `task_tokens`: `{task: token}` to start each input with (multi-task prompts,
  `data.task_tokens`), or None. `log_dir`: an `inference_eval/` folder where each
  evaluation writes T5X's prediction, metrics and TensorBoard files (`eval_logs`); the
  caller closes them with `eval_logs.close_loggers`. None writes nothing.
  """
  from prompt_tuning.train.data import readable_data_errors
  absl_logger = logging.getLogger("absl")
  if _EMPTY_LOGGER_FILTER not in absl_logger.filters:
    absl_logger.addFilter(_EMPTY_LOGGER_FILTER)
  with readable_data_errors(mixture_or_task_name):
    evaluator = seqio.Evaluator(
        mixture_or_task_name=mixture_or_task_name,
        feature_converter=seqio.EncDecFeatureConverter(pack=False),
        eval_split=split, use_cached=use_cached, sequence_length=dict(task_feature_lengths),
        num_examples=num_examples, async_compute_metrics=False,
        logger_cls=(eval_logs.InferenceEvalLogger,) if log_dir else (), log_dir=log_dir)
  for task in evaluator.eval_tasks:
    dataset = evaluator.cached_task_datasets[task.name]  # read and cached in memory already
    if next(iter(dataset.take(1)), None) is None:  # its metrics would be of nothing
      raise UserError(f"{task.name} has no examples in split {split!r}, so its metrics would "
                      "mean nothing; check its data, or choose another split (EVAL_SPLIT)")
  if task_tokens:
    from prompt_tuning.data.task_tokens import mark_evaluator
    mark_evaluator(evaluator, task_tokens)
  return evaluator


def run_evaluation(evaluator: seqio.Evaluator, fns: EvalModelFns, step: int) -> Dict[str, float]:
  """Runs every task of the evaluator; returns flat `{'task/metric': value}`."""
  metrics, _ = evaluator.evaluate(compute_metrics=True, step=step,
                                  predict_fn=fns.predict_fn, score_fn=fns.score_fn)
  eval_logs.raise_failure(evaluator)
  flat = {}
  for task, values in (metrics.result() or {}).items():
    for name, value in values.items():
      value = getattr(value, "value", value)
      try:
        flat[f"{task}/{name}"] = float(value)
      except (TypeError, ValueError):
        logging.info("skipping non-scalar metric %s/%s", task, name)
  return flat


class PeriodicEval:
  """The trainer's evaluation every EVAL_PERIOD steps, on the variables of the moment.

  The jitted model functions are built at the first evaluation and kept, so
  they compile once per run. With `log_dir` (`MODEL_DIR/inference_eval`, as in
  T5X) each evaluation writes T5X's files there; `close()` ends them.
  """

  def __init__(self, model, partitioner: Partitioner, shardings: Variables,
               mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
               use_cached: bool, num_examples: Optional[int], task_tokens=None,
               log_dir: Optional[str] = None):
    self.model, self.partitioner, self.shardings = model, partitioner, shardings
    self.feature_lengths = task_feature_lengths
    self.evaluator = make_evaluator(mixture_or_task_name, task_feature_lengths, split, use_cached,
                                    num_examples, task_tokens, log_dir)
    self._fns: Optional[EvalModelFns] = None

  def close(self) -> None:
    eval_logs.close_loggers(self.evaluator)

  def __call__(self, step: int, variables: Variables) -> Dict[str, float]:
    if self._fns is None:
      self._fns = EvalModelFns(self.model, self.partitioner, None, self.shardings,
                               max_decode_length=self.feature_lengths["targets"],
                               inputs_length=self.feature_lengths["inputs"])
    self._fns.variables = variables
    return run_evaluation(self.evaluator, self._fns, step)
