"""A rerun must not silently change what a run computes: its gin config is checked against
the run's saved `MODEL_DIR/config.gin` before it resumes.

Only bindings that change results count (`NON_RESULT_BINDINGS` lists those a
rerun may change: steps, periods, logging, evaluation). Macros are resolved
before comparing, so a `PROMPT_LENGTH` change reads
`Prompt.length (via %PROMPT_LENGTH) was 4, now 6`.
"""
import inspect
import tokenize
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import gin

from prompt_tuning import fs
from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import RunDir
# Bindings a rerun may change without changing what the run computes
# (`configurable.param`, or `configurable.*` for all of its parameters).
NON_RESULT_BINDINGS = frozenset({
    "train.train_steps", "train.stop_after_steps", "train.model_dir", "train.log_every",
    "train.checkpoint_period", "train.keep_checkpoints", "train.return_variables",
    "train.allow_config_change", "train.use_cached_tasks", "train.eval_period", "train.eval_split",
    "train.eval_mixture_or_task_name", "train.eval_num_examples", "train.early_stopping_metric",
    "train.early_stopping_mode", "train.early_stopping_patience", "train.max_trainable_norm",
    "EvalModelFns.*",
    # Bucket lists only cut padding (losses equal to float tolerance); what bucketing changes
    # is the batches, through the window alone: compared by `_bucket_window`.
    "train.length_buckets", "LengthBuckets.*",
})



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


def _most_specific(bindings: Dict[str, Any], key: str) -> Optional[str]:
  """The binding gin applies to `key` (`scope/.../configurable.param`): the key itself, else
  the same binding under ever shorter prefixes of its scope path (gin merges the bindings of
  every prefix, the longest winning).

  The saved config is the *operative* one: a configurable called while a macro or
  scope is evaluated (`TASKS = @f()`) is recorded as `TASKS/f.param`, while the
  current (parsed) config binds `f.param`.
  """
  scopes, _, selector = key.rpartition("/")
  parts = scopes.split("/") if scopes else []
  for i in range(len(parts), -1, -1):
    candidate = "/".join(parts[:i] + [selector])
    if candidate in bindings:
      return candidate
  return None


def _bucket_window(bindings: Dict[str, Any], macros: Dict[str, Any]) -> int:
  """The length-grouping window a config trains with (`data/bucketing.py`): 1 without
  bucketing too, since fixed shapes and window 1 compute the same batches in the same order.

  So a run recorded before bucketing was on by default (`train.length_buckets = None`, or no
  binding at all) resumes under the default 'auto' buckets, and one with a window does not
  resume without it.
  """
  bound = _most_specific(bindings, "train.length_buckets")
  if bound is None or not isinstance(bindings[bound], _Ref):
    return 1
  window = bindings.get(_most_specific(bindings, "LengthBuckets.window"), 1)
  return _resolve(window, macros)


def config_differences(saved_text: str, limit: int = 3) -> List[str]:
  """Up to `limit` bindings of a saved operative config that the current gin config changes.

  Only bindings that change what a run computes count (not `NON_RESULT_BINDINGS`);
  macros are compared through the bindings that use them.
  """
  saved, saved_macros = parse_bindings(saved_text)
  current, current_macros = parse_bindings(gin.config_str())
  differences = []
  window_before = _bucket_window(saved, saved_macros)
  window_now = _bucket_window(current, current_macros)
  if window_before != window_now:
    differences.append(f"BUCKET_WINDOW (LengthBuckets.window) was {window_before!r}, now "
                       f"{window_now!r} (1 also without bucketing)")
  for key, value in saved.items():
    if _is_non_result(key):
      continue
    before = _resolve(value, saved_macros)
    bound = _most_specific(current, key)
    now = _resolve(current[bound], current_macros) if bound else _default(key)
    if before == now:
      continue
    via = f" (via {value!r})" if isinstance(value, _Macro) else ""
    differences.append(f"{key}{via} was {before!r}, now {now!r}")
    if len(differences) >= limit:
      break
  return differences[:limit]


def check_config_unchanged(run: RunDir, allow_change: bool = False) -> None:
  """Refuses a rerun whose gin config changes what the run in MODEL_DIR computes.

  Compares the parsed bindings of `MODEL_DIR/config.gin` (the operative
  config the run wrote) with the current gin config. Nothing to compare
  (no config.gin) passes.

  Raises:
    UserError: naming the first differing binding and the way out, unless
      `allow_change` (gin: `train.allow_config_change = True`).
  """
  path = run.config
  if not fs.exists(path):
    return
  try:
    differences = config_differences(fs.read_checked_text(path))
  except (fs.Damaged, SyntaxError, ValueError, tokenize.TokenError) as e:
    reason = str(e) if isinstance(e, fs.Damaged) else f"it does not parse: {e}"
    raise UserError(f"{path} is damaged ({' '.join(reason.split())[:150]}); it records the config "
                    "this run was trained with, which a rerun is compared with: restore it from a "
                    "copy of the run, or move it away to resume without the comparison (the "
                    "rerun writes its own)") from None
  if not differences:
    return
  if allow_change:
    print(f"warning: the config differs from {path}: {differences[0]}; continuing because "
          "train.allow_config_change=True", flush=True)
    return
  raise UserError(f"this config differs from the run in {run.root} ({path}): {differences[0]}; "
                  "use a new MODEL_DIR, restore the binding, or pass "
                  "--gin.train.allow_config_change=True to resume anyway")
