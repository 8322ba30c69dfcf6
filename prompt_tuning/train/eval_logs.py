"""T5X's inference-eval outputs: what seqio's default loggers write under `inference_eval/`.

T5X evaluates through a `seqio.Evaluator` with `log_dir=<dir>/inference_eval`
and seqio's `JSONLogger` and `TensorBoardLogger`; users' scripts and
dashboards read the files those write, so each evaluation here writes the same
names with the same contents:

    <log_dir>/<task>-<step:06>.jsonl   one line per example: {"input": the task's
                                       features (inputs_pretokenized, ...), "target":
                                       the postprocessed target, then one field per
                                       inference type: "output" + "prediction"
                                       (decoding) or "score" (rank classification)}
    <log_dir>/<task>-metrics.jsonl     {"step": N, <metric>: value}, a line appended
                                       per evaluation
    <log_dir>/<task>/events.out.tfevents.*   scalars `eval/<metric>` at step N

seqio's own loggers are not used: they write through `tf.io.gfile` (a failure
is a TensorFlow traceback), the predictions file is written in place (a killed
run leaves half a file) and its TensorBoard writer flushes from a background
thread. Here every file is written whole (`fs.atomic_write`) by the first host
only, and a failed write is one UserError naming the file.
"""
import json
import logging
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
from seqio import loggers as seqio_loggers
from seqio import metrics as seqio_metrics

from prompt_tuning import fs
from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import InferenceEvalDir
from prompt_tuning.train.summaries import Writer


class InferenceEvalLogger(seqio_loggers.Logger):
  """A `seqio.Evaluator` logger (`logger_cls`) writing T5X's `inference_eval/` files.

  Every example of every evaluation is written, as T5X's configs do by default
  (`JSON_WRITE_N_RESULTS = None`): the predictions are what a user inspects
  when a metric moves, and they cost one line of text per example.
  """

  def __init__(self, output_dir: str):
    super().__init__(output_dir)
    self.folder = InferenceEvalDir(output_dir)
    self._writers: Dict[str, Writer] = {}  # one TensorBoard run per task, as seqio's
    self.failure: Optional[UserError] = None

  def __call__(self, task_name: str, step: Optional[int],
               metrics: Mapping[str, seqio_metrics.MetricValue], dataset: Any,
               inferences: Optional[Mapping[str, Sequence[Any]]],
               targets: Optional[Sequence[Any]]) -> None:
    if jax.process_index() != 0 or self.failure:  # every host computes the same results
      return
    # Kept for `raise_failure` rather than raised: seqio would log it with its own error line
    # and raise it again wrapped in a ValueError.
    try:
      self._write(task_name, step, metrics, dataset, inferences, targets)
    except UserError as e:
      self.failure = e

  def _write(self, task_name, step, metrics, dataset, inferences, targets) -> None:
    step = -1 if step is None else int(step)  # seqio's loggers' value for "no step"
    # The predictions first (seqio writes them last): when a write fails, no metric is
    # recorded for an evaluation whose predictions are missing.
    if inferences and targets is not None and dataset is not None:
      self._write_predictions(task_name, step, dataset, inferences, targets)
    scalars = {name: value.value for name, value in metrics.items()
               if isinstance(value, seqio_metrics.Scalar)}
    if scalars:
      self._append_metrics(task_name, step, scalars)
      writer = self._writers.setdefault(task_name, Writer(self.folder.tensorboard(task_name)))
      writer.scalars(step, {f"eval/{name}": value for name, value in scalars.items()})

  def _append_metrics(self, task: str, step: int, scalars: Dict[str, float]) -> None:
    path = self.folder.metrics(task)
    # Rewritten whole with the new line, as seqio simulates an append: a file is never half
    # written, at the cost of rewriting one short line per past evaluation.
    previous = _read(path) if fs.exists(path) else b""
    line = json.dumps({"step": step, **scalars}, cls=seqio_loggers.TensorAndNumpyEncoder) + "\n"
    _write(path, previous + line.encode())

  def _write_predictions(self, task: str, step: int, dataset: Any,
                         inferences: Mapping[str, Sequence[Any]], targets: Sequence[Any]) -> None:
    aux = inferences.get("aux_value") or {}
    fields = {"target": targets, **{k: v for k, v in inferences.items() if k != "aux_value"}}
    lines = []
    for i, example in enumerate(dataset.as_numpy_iterator()):
      record = {"input": example}
      for name, values in fields.items():
        if i < len(values):
          record[name] = values[i]
      for name, values in aux.items():
        record[f"aux_{name}"] = values[i]
      lines.append(_json_line(record))
    _write(self.folder.predictions(task, step), "".join(lines).encode())

  def close(self) -> None:
    writers, self._writers = self._writers, {}
    for writer in writers.values():
      writer.close()


def _json_line(record: Dict[str, Any]) -> str:
  """One line of seqio's JSON (its encoder: short arrays as lists, long ones as a summary
  string, bytes as text); a field it cannot encode is left out, as seqio leaves it out."""
  encoder = seqio_loggers.TensorAndNumpyEncoder
  try:
    return json.dumps(record, cls=encoder) + "\n"
  except TypeError:
    kept = {}
    for name, value in record.items():
      try:
        json.dumps(value, cls=encoder)
        kept[name] = value
      except TypeError:
        logging.warning("inference_eval: `%s` is not JSON serializable; not written", name)
    return json.dumps(kept, cls=encoder) + "\n"


def _read(path: str) -> bytes:
  try:
    return fs.read_bytes(path)
  except OSError as e:
    raise fs.io_error(path, e, "read") from None
  except Exception as e:  # pylint: disable=broad-except  (tf.errors.* on object stores)
    raise _failed(path, e, "read") from None


def _write(path: str, data: bytes) -> None:
  try:
    fs.atomic_write(path, lambda f: f.write(data))
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (tf.errors.* on object stores)
    raise _failed(path, e, "write") from None


def _failed(path: str, error: Exception, doing: str) -> UserError:
  first = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return UserError(f"cannot {doing} {path} ({first}); check that its folder is reachable and "
                   "writable, then rerun")


def raise_failure(evaluator) -> None:
  """Raises the first failed write of the evaluator's `InferenceEvalLogger`s (after its
  evaluation: no later file of that evaluation was written)."""
  for logger in getattr(evaluator, "loggers", ()):
    if isinstance(logger, InferenceEvalLogger) and logger.failure:
      failure, logger.failure = logger.failure, None
      raise failure


def close_loggers(evaluator) -> None:
  """Closes the TensorBoard files of the evaluator's `InferenceEvalLogger`s."""
  for logger in getattr(evaluator, "loggers", ()):
    if isinstance(logger, InferenceEvalLogger):
      logger.close()
