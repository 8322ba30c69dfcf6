"""Console progress, TensorBoard summaries, the loss record and the gin config of a run.

`TrainLog` is the training loop's use of them all.
"""
import json
import os
import socket
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import gin
import jax

from prompt_tuning import fs
from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import RunDir


class Progress:
  """Rate and ETA of long work counted in steps or examples: one progress class for the project.

  `line(step, metrics)` is the trainer's console line; `update(count)` prints
  an occasional `what: done/total examples (rate/s, ETA)` line to stderr for
  commands that work through a file.
  """

  def __init__(self, start: int, total: int, what: str = "step", every_s: float = 5.0):
    self.total, self.what, self.every_s = total, what, every_s
    self.done = start
    self.last_step, self.last_time = start, time.time()
    self.started_at = self.last_printed = self.last_time

  def restart_clock(self, step: int) -> None:
    """Excludes time spent outside training steps (eval, checkpoints) from the rate."""
    self.last_step, self.last_time = step, time.time()

  def _rate_and_eta(self, done: int, since_done: int, since_time: float) -> tuple:
    rate = (done - since_done) / max(time.time() - since_time, 1e-9)
    eta = (self.total - done) / rate if rate > 0 else float("inf")
    return rate, _duration(eta)

  def steps_per_second(self, step: int) -> float:
    """The rate since the last `line` (or `restart_clock`), without restarting it."""
    return self._rate_and_eta(step, self.last_step, self.last_time)[0]

  def line(self, step: int, metrics: Dict[str, float]) -> str:
    rate, eta = self._rate_and_eta(step, self.last_step, self.last_time)
    self.last_step, self.last_time = step, time.time()
    shown = " ".join(f"{k}={metrics[k]:.4g}" for k in ("loss", "accuracy", "grad_norm",
                                                       "learning_rate") if k in metrics)
    return f"step {step}/{self.total} {shown} | {rate:.2f} steps/s | ETA {eta}"

  def update(self, count: int) -> None:
    self.done += count
    now = time.time()
    finished_slowly = self.done >= self.total and now - self.started_at >= self.every_s
    if now - self.last_printed >= self.every_s or finished_slowly:
      self.last_printed = now
      rate, eta = self._rate_and_eta(self.done, 0, self.started_at)
      print(f"{self.what}: {self.done}/{self.total} examples ({rate:.1f}/s, ETA {eta})",
            file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
  if seconds == float("inf"):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Writer:
  """TensorBoard scalars under a folder (first host only).

  Written as plain scalar summaries (`simple_value`), which TensorBoard's
  Scalars dashboard and `EventAccumulator.Scalars()` read; local or `gs://`.
  The events file is created with the first scalars, so a run that fails
  before logging anything leaves no file behind. Records are written in this
  thread (TensorBoard's own writer uses a background thread, whose failures on a
  full disk print a traceback and surface later): a failed write is one UserError.
  """
  FLUSH_EVERY_S = 120.0  # object stores upload the whole object at each flush

  def __init__(self, log_dir: str):
    self._log_dir = log_dir
    self._path = None
    self._records = None
    self._flushed_at = 0.0

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    if jax.process_index() != 0:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in sorted(values.items())])
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def _write(self, event) -> None:
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    try:
      if self._records is None:
        fs.makedirs(self._log_dir)
        self._path = fs.join(self._log_dir, f"events.out.tfevents.{int(time.time()):010d}."
                             f"{socket.gethostname()}.{os.getpid()}.0")
        self._records = RecordWriter(fs.open_file(self._path, "wb"))
        self._records.write(event_pb2.Event(wall_time=time.time(),
                                            file_version="brain.Event:2").SerializeToString())
      self._records.write(event.SerializeToString())
      if not fs.is_remote(self._path) or time.time() - self._flushed_at > self.FLUSH_EVERY_S:
        self._records.flush()
        self._flushed_at = time.time()
    except UserError:
      raise
    except Exception as e:  # OSError locally, tf.errors.* on object stores
      raise self._failed(e) from None

  def _failed(self, error: Exception) -> UserError:
    if isinstance(error, OSError):
      return fs.io_error(self._path or self._log_dir, error)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return UserError(f"cannot write TensorBoard events to {self._path or self._log_dir} "
                     f"({first}); free space on its disk or make it writable, then rerun")

  def close(self) -> None:
    if self._records is not None:
      records, self._records = self._records, None
      try:
        records.close()
      except Exception as e:  # pylint: disable=broad-except
        raise self._failed(e) from None


def write_operative_config(run: RunDir) -> Optional[str]:
  """`MODEL_DIR/config.gin`: the gin bindings the run actually used."""
  if jax.process_index() != 0:
    return None
  path = run.config
  fs.write_checked_text(path, gin.operative_config_str())
  return path


# ---- the loss record: appended to across resumes -------------------------------


def previous_history(run: RunDir, restored_step: Optional[int]
                     ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
  """(train_history, eval_history) of `MODEL_DIR/train_summary.json` up to `restored_step`.

  A resumed run extends these instead of starting empty; entries after the
  restored step (a resume from an older checkpoint) are dropped so no step
  appears twice. ([], []) for a fresh run.
  """
  path = run.train_summary
  if restored_step is None or not fs.exists(path):
    return [], []
  try:
    summary = json.loads(fs.read_bytes(path))
    histories = [[dict(h) for h in summary.get(key, []) if int(h["step"]) <= restored_step]
                 for key in ("train_history", "eval_history")]
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise UserError(f"{path} is damaged ({type(e).__name__}) and would lose the run's loss record; "
                    "move it away (the run then starts a new record) and rerun") from None
  return histories[0], histories[1]


def write_history(run: RunDir, step: int, history: List[Dict[str, Any]],
                  eval_history: List[Dict[str, Any]]) -> None:
  """Records the loss so far in `train_summary.json` (with each checkpoint, so a killed
  run keeps it; the run's end rewrites the file with its full summary)."""
  fs.write_json(run.train_summary, {"model_dir": run.root, "final_step": step,
                                    "train_history": history, "eval_history": eval_history})


def train_scalars(metrics: Dict[str, float], steps_per_second: float,
                  batch_size: int, examples_per_step: Optional[float] = None,
                  compiled_programs: Optional[int] = None) -> Dict[str, float]:
  """The TensorBoard scalars of a logged train step, under T5X's tags and with T5X's meanings.

  T5X's `loss` and `z_loss` are the step's sums over its target tokens (the
  reference's `LOSS_NORMALIZING_FACTOR = None`), and `cross_ent_loss` their
  difference; the per-token mean that the console and `train_summary.json`
  show as `loss` is T5X's `loss_per_nonpadding_target_token`. `accuracy` and
  `learning_rate` mean the same in both. Metrics T5X has no name for keep ours
  (`grad_norm`, `trainable_norm`, `prompt_norm`, `target_tokens`, a method's
  terms). `timing/steps_per_second` and `timing/seqs_per_second` are measured
  over the steps since the last logged one, without evaluations and saves; as in
  T5X, a packed run's sequences are its rows. Ours besides T5X's:
  `timing/examples_per_second` counts examples (`examples_per_step`, their mean
  over those steps: more than the rows when packed), the rate by which packed and
  unpacked runs compare; `timing/compiled_programs` (the distinct batch shapes
  this process has run: each compiled or loaded the step once) shows which
  intervals include compiling, e.g. a length bucket's first batch.
  """
  scalars = dict(metrics)
  tokens = metrics.get("target_tokens")
  if tokens is not None and "loss" in metrics:
    scalars["loss_per_nonpadding_target_token"] = metrics["loss"]
    scalars["loss"] = metrics["loss"] * tokens
    if "z_loss" in metrics:
      scalars["z_loss"] = metrics["z_loss"] * tokens
      scalars["cross_ent_loss"] = scalars["loss"] - scalars["z_loss"]
  scalars["timing/steps_per_second"] = steps_per_second
  scalars["timing/seqs_per_second"] = steps_per_second * batch_size
  scalars["timing/examples_per_second"] = steps_per_second * (
      batch_size if examples_per_step is None else examples_per_step)
  if compiled_programs is not None:
    scalars["timing/compiled_programs"] = compiled_programs
  return scalars


class TrainLog:
  """What the training loop reports: console lines, TensorBoard, the loss record, config.gin.

  TensorBoard scalars go where T5X writes them, `MODEL_DIR/train/` under T5X's
  tags (`train_scalars`), so a T5X user's dashboards and scripts find them.
  Evaluation scalars are written by the evaluator (`eval_logs`,
  `MODEL_DIR/inference_eval/<task>/`). A resumed run extends the run folder's
  loss record (`previous_history`).
  """

  def __init__(self, run: RunDir, start_step: int, train_steps: int, resumed: bool,
               batch_size: int):
    self.run = run
    self.batch_size = batch_size
    self.history, self.eval_history = previous_history(run, start_step if resumed else None)
    self.progress = Progress(start_step, train_steps)
    self.writer = Writer(run.train_tensorboard)
    self._wrote_config = False
    self._examples = self._examples_at_clock = 0  # trained on by this process
    self._shapes = set()

  def count_batch(self, rows: Dict[str, Any], examples: int) -> None:
    """Each step's batch (`rows`: this host's arrays) and the examples in the global batch."""
    self._examples += examples
    self._shapes.add(tuple(sorted((k, v.shape) for k, v in rows.items())))

  def train(self, step: int, metrics: Dict[str, float]) -> None:
    if not self._wrote_config:  # before any checkpoint: every save is a logged step
      write_operative_config(self.run)
      self._wrote_config = True
    self.history.append({"step": step, **metrics})
    examples_per_step = ((self._examples - self._examples_at_clock)
                         / max(step - self.progress.last_step, 1))
    self._examples_at_clock = self._examples
    self.writer.scalars(step, train_scalars(
        metrics, self.progress.steps_per_second(step), self.batch_size, examples_per_step,
        len(self._shapes)))
    print(self.progress.line(step, metrics), flush=True)

  def eval(self, step: int, metrics: Dict[str, float]) -> None:
    print(f"step {step} eval: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
          flush=True)
    self.eval_history.append({"step": step, **metrics})

  def write_record(self, step: int) -> None:
    """The loss record so far, `train_summary.json` (with each checkpoint)."""
    write_history(self.run, step, self.history, self.eval_history)

  def restart_clock(self, step: int) -> None:
    self.progress.restart_clock(step)

  def close(self) -> None:
    self.writer.close()
