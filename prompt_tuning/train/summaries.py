"""Console progress, TensorBoard summaries, the loss record and the gin config of a run."""
import inspect
import json
import logging
import os
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import gin
import jax

from prompt_tuning.errors import UserError

SUMMARY_FILE = "train_summary.json"
CONFIG_FILE = "config.gin"
# Bindings a rerun may change without changing what the run computes
# (`configurable.param`, or `configurable.*` for all of its parameters).
NON_RESULT_BINDINGS = frozenset({
    "train.train_steps", "train.stop_after_steps", "train.model_dir", "train.log_every",
    "train.checkpoint_period", "train.keep_checkpoints", "train.return_variables",
    "train.allow_config_change", "train.use_cached_tasks", "train.eval_period", "train.eval_split",
    "train.eval_mixture_or_task_name", "train.eval_num_examples", "train.early_stopping_metric",
    "train.early_stopping_mode", "train.early_stopping_patience", "EvalModelFns.*",
})


class Progress:
  """One console line per log: step, loss, steps/s and ETA."""

  def __init__(self, start_step: int, total_steps: int):
    self.total = total_steps
    self.last_step, self.last_time = start_step, time.time()

  def restart_clock(self, step: int) -> None:
    """Excludes time spent outside training steps (eval, checkpoints) from the rate."""
    self.last_step, self.last_time = step, time.time()

  def line(self, step: int, metrics: Dict[str, float]) -> str:
    now = time.time()
    rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    shown = " ".join(f"{k}={metrics[k]:.4g}" for k in ("loss", "accuracy", "grad_norm",
                                                       "learning_rate") if k in metrics)
    return f"step {step}/{self.total} {shown} | {rate:.2f} steps/s | ETA {_duration(eta)}"


def _duration(seconds: float) -> str:
  if seconds == float("inf"):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Writer:
  """TensorBoard scalars under MODEL_DIR (first host only)."""

  def __init__(self, model_dir: str):
    from clu import metric_writers
    self._writer = metric_writers.create_default_writer(
        model_dir, just_logging=jax.process_index() > 0, asynchronous=False)

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    self._writer.write_scalars(step, values)

  def close(self) -> None:
    self._writer.flush()
    self._writer.close()


def write_operative_config(model_dir: str) -> Optional[str]:
  """`MODEL_DIR/config.gin`: the gin bindings the run actually used."""
  if jax.process_index() != 0:
    return None
  from prompt_tuning.train.checkpoints import atomic_write
  path = os.path.join(model_dir, "config.gin")
  atomic_write(path, lambda f: f.write(gin.operative_config_str().encode()))
  return path


# ---- the loss record: appended to across resumes -------------------------------


def previous_history(model_dir: str, restored_step: Optional[int]
                     ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
  """(train_history, eval_history) of `MODEL_DIR/train_summary.json` up to `restored_step`.

  A resumed run extends these instead of starting empty; entries after the
  restored step (a resume from an older checkpoint) are dropped so no step
  appears twice. ([], []) for a fresh run.
  """
  from prompt_tuning.train.checkpoints import exists, read_bytes
  path = os.path.join(model_dir, SUMMARY_FILE)
  if restored_step is None or not exists(path):
    return [], []
  try:
    summary = json.loads(read_bytes(path))
    histories = [[dict(h) for h in summary.get(key, []) if int(h["step"]) <= restored_step]
                 for key in ("train_history", "eval_history")]
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise UserError(f"{path} is damaged ({type(e).__name__}) and would lose the run's loss record; "
                    "move it away (the run then starts a new record) and rerun") from None
  return histories[0], histories[1]


def write_history(model_dir: str, step: int, history: List[Dict[str, Any]],
                  eval_history: List[Dict[str, Any]]) -> None:
  """Records the loss so far in `train_summary.json` (with each checkpoint, so a killed
  run keeps it; the run's end rewrites the file with its full summary)."""
  from prompt_tuning.train.checkpoints import write_json
  write_json(os.path.join(model_dir, SUMMARY_FILE),
             {"model_dir": model_dir, "final_step": step, "train_history": history,
              "eval_history": eval_history})


# ---- a rerun must not silently change what a run computes -----------------------


class _Ref(NamedTuple):
  """`@name` / `@name()` in a gin file (no configurable is looked up)."""
  name: str
  evaluate: bool

  def __repr__(self):
    return f"@{self.name}{'()' if self.evaluate else ''}"


class _Macro(NamedTuple):
  name: str

  def __repr__(self):
    return f"%{self.name}"


class _Unset:
  def __repr__(self):
    return "unset"


_UNSET = _Unset()


def parse_bindings(text: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(bindings `{'scope/configurable.param': value}`, macros `{NAME: value}`) of gin text.

  Values are Python literals; references and macros stay symbolic, so no
  configurable needs to be importable.
  """
  from gin import config_parser

  class Delegate(config_parser.ParserDelegate):

    def configurable_reference(self, scoped_configurable_name, evaluate):
      return _Ref(scoped_configurable_name, bool(evaluate))

    def macro(self, macro_name):
      return _Macro(macro_name)

  bindings, macros = {}, {}
  for statement in config_parser.ConfigParser(text, Delegate()):
    if not isinstance(statement, config_parser.BindingStatement):
      continue
    name = f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector
    if statement.arg_name:
      bindings[f"{name}.{statement.arg_name}"] = statement.value
    else:
      macros[name] = statement.value
  return bindings, macros


def _resolve(value: Any, macros: Dict[str, Any], depth: int = 0) -> Any:
  if isinstance(value, _Macro) and value.name in macros and depth < 20:
    return _resolve(macros[value.name], macros, depth + 1)
  if isinstance(value, (list, tuple)) and not isinstance(value, (_Ref, _Macro)):
    return type(value)(_resolve(v, macros, depth) for v in value)
  if isinstance(value, dict):
    return {k: _resolve(v, macros, depth) for k, v in value.items()}
  return value


def _is_non_result(key: str) -> bool:
  selector, _, param = key.rpartition("/")[2].rpartition(".")
  name = selector.rpartition(".")[2]
  return f"{name}.{param}" in NON_RESULT_BINDINGS or f"{name}.*" in NON_RESULT_BINDINGS


def _default(key: str) -> Any:
  """The signature default of a binding this config does not set (`_UNSET` if none)."""
  selector, _, param = key.rpartition("/")[2].rpartition(".")
  configurable = gin.config._REGISTRY.get_match(selector)  # pylint: disable=protected-access
  if configurable is None:
    return _UNSET
  try:
    parameter = inspect.signature(configurable.wrapped).parameters.get(param)
  except (TypeError, ValueError):
    return _UNSET
  if parameter is None or parameter.default is inspect.Parameter.empty:
    return _UNSET
  return parameter.default


def config_differences(saved_text: str, limit: int = 3) -> List[str]:
  """Up to `limit` bindings of a saved operative config that the current gin config changes.

  Only bindings that change what a run computes count (not `NON_RESULT_BINDINGS`);
  macros are compared through the bindings that use them.
  """
  saved, saved_macros = parse_bindings(saved_text)
  current, current_macros = parse_bindings(gin.config_str())
  differences = []
  for key, value in saved.items():
    if _is_non_result(key):
      continue
    before = _resolve(value, saved_macros)
    now = _resolve(current[key], current_macros) if key in current else _default(key)
    if before == now:
      continue
    via = f" (via {value!r})" if isinstance(value, _Macro) else ""
    differences.append(f"{key}{via} was {before!r}, now {now!r}")
    if len(differences) == limit:
      break
  return differences


def check_config_unchanged(model_dir: str, allow_change: bool = False) -> None:
  """Refuses a rerun whose gin config changes what the run in MODEL_DIR computes.

  Compares the parsed bindings of `MODEL_DIR/config.gin` (the operative
  config the run wrote) with the current gin config. Nothing to compare
  (no config.gin) passes.

  Raises:
    UserError: naming the first differing binding and the way out, unless
      `allow_change` (gin: `train.allow_config_change = True`).
  """
  from prompt_tuning.train.checkpoints import exists, read_bytes
  path = os.path.join(model_dir, CONFIG_FILE)
  if not exists(path):
    return
  try:
    differences = config_differences(read_bytes(path).decode())
  except (SyntaxError, ValueError, UnicodeDecodeError) as e:
    logging.warning("cannot parse %s (%s); not comparing it with this run's config", path, e)
    return
  if not differences:
    return
  if allow_change:
    print(f"warning: the config differs from {path}: {differences[0]}; continuing because "
          "train.allow_config_change=True", flush=True)
    return
  raise UserError(f"this config differs from the run in {model_dir} ({path}): {differences[0]}; "
                  "use a new MODEL_DIR, restore the binding, or pass "
                  "--gin.train.allow_config_change=True to resume anyway")
