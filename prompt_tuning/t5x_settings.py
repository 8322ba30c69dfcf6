"""T5X's setting names (the bindings its users type), each honoured here or refused in one line.

A reference command line or gin file sets T5X's configurables: `utils.DatasetConfig` (in the
`train/`, `train_eval/` and `infer_eval/` scopes of T5X's `finetune.gin`, unscoped in its
`eval.gin` and `infer.gin`), `utils.SaveCheckpointConfig`, `utils.create_learning_rate_scheduler`,
`partitioning.PjitPartitioner`, and the reference's prompt initializers
(`prompt_init/linen.initializers.uniform`, `prompt_init/prompts.from_sample_of_embeddings`).
Gin parses a binding only of a configurable it knows, so each is registered here with the
fields we handle; `apply`, called by `gin_utils.parse` after the files and flags are read,
turns every such binding into the binding of ours with the same meaning (e.g.
`train/utils.DatasetConfig.batch_size` sets `train.batch_size`) or raises a `UserError` naming
what replaces it. None of these configurables is ever called: a binding of one is either
rewritten into ours or refused, so none is silently ignored. docs/reference.md, "T5X
settings", lists every name and what happens to it (tests/test_t5x_settings.py tries each).

"The same meaning" is T5X's, gin's scoping included: T5X's `finetune.gin` binds all three
scoped `DatasetConfig`s, and a scoped binding wins over an unscoped one, so an unscoped
`utils.DatasetConfig.batch_size` reaches none of T5X's train datasets; here it is refused in
a train run rather than given a meaning T5X never had.
"""
import dataclasses
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gin

from prompt_tuning.errors import UserError
from prompt_tuning.train.optim import LR_FACTORS, LR_FACTORS_NOT_HERE

# ---- The T5X configurables gin must know (never called: `apply` rewrites or refuses).


@gin.configurable("DatasetConfig", module="utils")
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """T5X's `utils.DatasetConfig` fields that users set (T5X's `t5x/utils.py`)."""
  mixture_or_task_name: Any = None
  task_feature_lengths: Any = None
  split: Any = None
  batch_size: Any = None
  shuffle: Any = None
  seed: Any = None
  use_cached: Any = None
  pack: Any = None
  module: Any = None


@gin.configurable("SaveCheckpointConfig", module="utils")
def save_checkpoint_config(period=None, keep=None):
  del period, keep
  raise AssertionError("t5x_settings.apply rewrites utils.SaveCheckpointConfig; never called")


@gin.configurable("PjitPartitioner", module="partitioning")
def pjit_partitioner(num_partitions=None, model_parallel_submesh=None):
  del num_partitions, model_parallel_submesh
  raise AssertionError("t5x_settings.apply rewrites partitioning.PjitPartitioner; never called")


@gin.configurable("from_sample_of_embeddings", module="prompts")
def from_sample_of_embeddings(population_size=None):
  del population_size
  raise AssertionError("t5x_settings.apply rewrites prompts.from_sample_of_embeddings")


# Our prompt initializer is registered as `uniform` too, and gin refuses a short name that
# two configurables share (`uniform.scale` is ours, in docs and run files), so T5X's
# `linen.initializers.uniform` flags are renamed to this one before parsing (`rewrite_flags`).
T5X_UNIFORM = "linen.initializers.uniform"
_UNIFORM_STAND_IN = "t5x.linen_initializers_uniform"


@gin.configurable("linen_initializers_uniform", module="t5x")
def linen_initializers_uniform(scale=None):
  del scale
  raise AssertionError("t5x_settings.apply rewrites linen.initializers.uniform; never called")


# `utils.create_learning_rate_scheduler` is a real schedule: `train/optim.py` registers it.
LR_SCHEDULER = "utils.create_learning_rate_scheduler"
# T5X's fields that only its factors missing here (LR_FACTORS_NOT_HERE) read.
LR_FIELDS_NOT_HERE = ("decay_factor", "steps_per_decay", "steps_per_cycle")
# The values the reference's run files give the scheduler when a flag sets only some fields:
# its prompt_finetune.gin sets factors 'constant' (and base_learning_rate 0.3, which is our
# optimizer's learning rate), T5X's finetune.gin warmup_steps 1000.
LR_RUN_DEFAULTS = {"factors": "constant", "warmup_steps": 1000, "step_offset": 0,
                   "min_learning_rate": 1e-8}

SELECTORS = {
    "utils.DatasetConfig": "utils.DatasetConfig",
    "utils.SaveCheckpointConfig": "utils.SaveCheckpointConfig",
    "partitioning.PjitPartitioner": "partitioning.PjitPartitioner",
    "prompts.from_sample_of_embeddings": "prompts.from_sample_of_embeddings",
    _UNIFORM_STAND_IN: T5X_UNIFORM,
    LR_SCHEDULER: LR_SCHEDULER,
}
DATASET_SCOPES = ("train", "train_eval", "infer_eval")


def rewrite_flags(bindings: Sequence[str]) -> List[str]:
  """`--gin.[scope/]linen.initializers.uniform.X=V` flags under the stand-in's name."""
  pattern = re.compile(r"^(\s*(?:[\w.]+/)*)" + re.escape(T5X_UNIFORM) + r"(\.\w+\s*=)")
  return [pattern.sub(r"\1" + _UNIFORM_STAND_IN + r"\2", b) for b in bindings]


# ---- What each binding becomes.


@dataclasses.dataclass(frozen=True)
class _Binding:
  scope: str
  selector: str    # T5X's name, e.g. 'utils.DatasetConfig'
  field: str
  value: Any

  @property
  def name(self) -> str:
    return f"{self.scope + '/' if self.scope else ''}{self.selector}.{self.field}"

  def text(self) -> str:
    return f"{self.name}={_show(self.value)}"


def _show(value: Any) -> str:
  return str(value) if isinstance(value, gin.config.ConfigurableReference) else repr(value)


def _refuse(binding: _Binding, why: str, use: str) -> UserError:
  return UserError(f"{binding.text()} is refused: {why}; use {use}")


_UNSET = object()


def _macro(name: str) -> Any:
  params = gin.config._CONFIG.get((name, "gin.macro"))  # pylint: disable=protected-access
  return _UNSET if params is None or "value" not in params else params["value"]


def _resolved(value: Any) -> Any:
  """The literal a value stands for, following `%MACRO`s; `_UNSET` for `@configurable()`."""
  for _ in range(100):  # a chain of macros, never a cycle (gin refuses those)
    if not isinstance(value, gin.config.ConfigurableReference):
      return value
    if not str(value).startswith("%"):
      return _UNSET
    value = _macro(str(value)[1:])
  return _UNSET


def _find(command_selector: str) -> Optional[Tuple[str, str]]:
  """The `(scope, full selector)` key of an unscoped configurable's bindings, if bound."""
  for scope, selector in gin.config._CONFIG:  # pylint: disable=protected-access
    if not scope and (selector == command_selector or selector.endswith("." + command_selector)):
      return scope, selector
  return None


def _bound(target: str) -> Any:
  """What `configurable.param` (unscoped) is bound to, `_UNSET` when unbound."""
  selector, _, param = target.rpartition(".")
  key = _find(selector)
  if key is None:
    return _UNSET
  return gin.config._CONFIG[key].get(param, _UNSET)  # pylint: disable=protected-access


def command() -> Optional[str]:
  """The entry point the parsed run files configure: 'train', 'evaluate', 'infer' or None."""
  for name in ("train", "evaluate", "infer"):
    if _find(name) is not None:
      return name
  return None


class _Rewrites:
  """Our bindings to make, each checked against a flag that sets the same parameter."""

  def __init__(self, flag_keys: Sequence[str]):
    self.flag_keys = set(flag_keys)
    self.made: Dict[str, Tuple[Any, _Binding]] = {}

  def set(self, target: str, value: Any, binding: _Binding) -> None:
    # A flag setting our parameter itself and T5X's name for it: which one wins is not
    # obvious, so both are refused unless they agree. A run file's binding (`%BATCH_SIZE`)
    # is replaced, as T5X's own bindings replace its run files' macros.
    if target in self.flag_keys and _resolved(_bound(target)) != _resolved(value):
      raise UserError(f"{binding.text()} and --gin.{target}={_show(_bound(target))} set the "
                      f"same setting ({binding.name} is T5X's name for {target}): set only one")
    if target in self.made and _resolved(self.made[target][0]) != _resolved(value):
      other = self.made[target][1]
      raise UserError(f"{binding.text()} and {other.text()} both set {target}: set only one")
    self.made[target] = (value, binding)

  def apply(self) -> Dict[str, str]:
    with gin.unlock_config():
      for target, (value, _) in self.made.items():
        gin.bind_parameter(target, value)
    return {target: binding.name for target, (_, binding) in self.made.items()}


def _t5x_bindings() -> List[_Binding]:
  found = []
  for (scope, selector), params in list(gin.config._CONFIG.items()):  # pylint: disable=protected-access
    t5x_name = next((name for ours, name in SELECTORS.items()
                     if selector == ours or selector.endswith("." + ours)), None)
    if t5x_name is None:
      continue
    for field, value in sorted(params.items()):
      found.append(_Binding(scope, t5x_name, field, value))
  return found


def apply(flags: Sequence[str]) -> Dict[str, str]:
  """Rewrites every T5X binding of the parsed config into ours, or raises naming the way out.

  Args:
    flags: the user's `KEY = VALUE` flags: a flag that sets one of our parameters and a T5X
      name that sets it too must agree.

  Returns:
    `{our parameter: the T5X name that set it}`, for the hint of a macro left unread.
  """
  rewrites = _Rewrites([b.partition("=")[0].strip() for b in flags])
  run = command()
  bindings = _t5x_bindings()
  lr = [b for b in bindings if b.selector == LR_SCHEDULER]
  for binding in bindings:
    if binding.selector == "utils.DatasetConfig":
      _dataset_config(binding, run, rewrites)
    elif binding.selector == "utils.SaveCheckpointConfig":
      _save_checkpoint_config(binding, run, rewrites)
    elif binding.selector == "partitioning.PjitPartitioner":
      _partitioner(binding, bindings, rewrites)
    elif binding.selector in ("prompts.from_sample_of_embeddings", T5X_UNIFORM):
      _prompt_init(binding, rewrites)
  if lr:
    _learning_rate(lr, run, rewrites)
  return rewrites.apply()


# ---- utils.DatasetConfig


# What each field is in a train run: T5X's `train/` dataset is the training data, its
# `infer_eval/` one the train-time SeqIO evaluation (this trainer's periodic eval).
_TRAIN_FIELDS = {"mixture_or_task_name": "train.mixture_or_task_name", "split": "train.train_split",
                 "batch_size": "train.batch_size"}
_INFER_EVAL_FIELDS = {"mixture_or_task_name": "train.eval_mixture_or_task_name",
                      "split": "train.eval_split", "batch_size": "EvalModelFns.batch_size"}
# Our one setting for the training data and its evaluation together.
_SHARED = {"task_feature_lengths": "TASK_FEATURE_LENGTHS", "use_cached": "USE_CACHED_TASKS",
           "module": "MIXTURE_OR_TASK_MODULE"}
# Fields whose only value here is the one T5X's run files give them (train/ pack is PACK).
_ONLY = {"pack": (False, "evaluation and inference read one example per row here (packing "
                  "is for training: train/utils.DatasetConfig.pack or PACK)",
                  "pack = False, or leave it out")}
_EVAL_SEED = 42  # seqio.Evaluator's seed, which eval here does not change


def _dataset_config(binding: _Binding, run: Optional[str], rewrites: _Rewrites) -> None:
  field, value = binding.field, binding.value
  if field == "pack" and run == "train" and binding.scope == "train":
    if not isinstance(_resolved(value), bool):
      raise _refuse(binding, "T5X's pack is True or False", "train/utils.DatasetConfig.pack = "
                    "True, or our PACK = 'auto' (packs on TPU, buckets elsewhere)")
    rewrites.set("train.pack", value, binding)
    return
  if field in _ONLY:
    only, why, use = _ONLY[field]
    if _resolved(value) is not only:
      raise _refuse(binding, why, use)
    return
  if run in ("evaluate", "infer"):
    _eval_dataset_config(binding, run, rewrites)
  elif run == "train":
    _train_dataset_config(binding, rewrites)
  else:
    raise _refuse(binding, "no train, eval or infer run file is given, so nothing reads it",
                  "it with runs/prompt_finetune.gin or runs/prompt_eval.gin")


def _eval_dataset_config(binding: _Binding, run: str, rewrites: _Rewrites) -> None:
  field, value = binding.field, binding.value
  if binding.scope:
    raise _refuse(binding, f"{run} reads T5X's unscoped utils.DatasetConfig (eval.gin, infer.gin)"
                  f"; a {binding.scope}/ binding reaches nothing in T5X's {run} either",
                  f"utils.DatasetConfig.{field}")
  targets = {"mixture_or_task_name": "mixture_or_task_name", "split": "split",
             "batch_size": "batch_size", "use_cached": "use_cached_tasks",
             "task_feature_lengths": "task_feature_lengths", "module": "mixture_or_task_module"}
  if field in targets:
    if field == "task_feature_lengths" and not isinstance(_resolved(value), dict):
      # T5X's None computes the longest example; lengths here are always given.
      raise _refuse(binding, "lengths are not computed from the data here",
                    "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 8}\"")
    rewrites.set(f"{run}.{targets[field]}", value, binding)
  elif field == "shuffle":
    if _resolved(value) is not False:
      raise _refuse(binding, f"{run} reads every example once, in order", "shuffle = False")
  elif field == "seed":
    if _resolved(value) != _EVAL_SEED:
      raise _refuse(binding, f"the evaluated data's seed is seqio's {_EVAL_SEED} here (T5X's "
                    "eval.gin sets 42 too)", f"utils.DatasetConfig.seed = {_EVAL_SEED} or none")


def _train_dataset_config(binding: _Binding, rewrites: _Rewrites) -> None:
  field, value, scope = binding.field, binding.value, binding.scope
  if scope not in DATASET_SCOPES:
    # T5X's finetune.gin binds every field in all three scopes; gin prefers those bindings to
    # an unscoped (or other-scoped) one, which so reaches none of T5X's datasets.
    ours = {**_TRAIN_FIELDS, **_SHARED, "seed": "RANDOM_SEED"}.get(field)
    where = "an unscoped binding" if not scope else f"a {scope}/ binding"
    raise _refuse(binding, f"in a train run T5X reads the train/, train_eval/ and infer_eval/ "
                  f"utils.DatasetConfig, which {where} does not override",
                  f"train/utils.DatasetConfig.{field} or infer_eval/utils.DatasetConfig.{field}"
                  + (f" (training data: {ours})" if ours else ""))
  if scope == "train_eval":
    raise _refuse(binding, "T5X's train_eval (a teacher-forced loss on validation batches) is "
                  "not run here; the train-time evaluation is T5X's infer_eval (SeqIO metrics)",
                  f"infer_eval/utils.DatasetConfig.{field}")
  if field in _SHARED:
    raise _refuse(binding, "one setting here serves the training data and its evaluation "
                  "together", f"--gin.{_SHARED[field]}=...")
  fields = _TRAIN_FIELDS if scope == "train" else _INFER_EVAL_FIELDS
  if field in fields:
    if scope == "train" and field == "mixture_or_task_name":
      # T5X's train/ scope names the training data only: the train-time eval keeps
      # MIXTURE_OR_TASK_NAME, as its infer_eval/ binding does.
      infer_eval = gin.config._CONFIG.get(("infer_eval", "utils.DatasetConfig"), {})  # pylint: disable=protected-access
      if ("mixture_or_task_name" not in infer_eval
          and _resolved(_bound("train.eval_mixture_or_task_name")) in (None, _UNSET)):
        rewrites.set("train.eval_mixture_or_task_name", _bound("train.mixture_or_task_name"),
                     binding)
    rewrites.set(fields[field], value, binding)
  elif field == "shuffle":
    shuffled = scope == "train"
    if _resolved(value) is not shuffled:
      raise _refuse(binding, "training batches are always shuffled here and evaluations never "
                    "are", f"{scope}/utils.DatasetConfig.shuffle = {shuffled} or none")
  elif field == "seed":
    if scope == "train":
      raise _refuse(binding, "RANDOM_SEED seeds both the data order and dropout here (T5X's "
                    "None, a new order every run: a new RANDOM_SEED per run)",
                    "--gin.RANDOM_SEED=N")
    if _resolved(value) != _EVAL_SEED:
      raise _refuse(binding, f"the evaluated data's seed is seqio's {_EVAL_SEED} here (T5X's "
                    "finetune.gin sets 42 too)", f"infer_eval/utils.DatasetConfig.seed = "
                    f"{_EVAL_SEED} or none")


# ---- utils.SaveCheckpointConfig, partitioning.PjitPartitioner, prompt initializers


def _unscoped(binding: _Binding, use: str) -> None:
  if binding.scope:
    raise _refuse(binding, f"T5X calls {binding.selector} unscoped; a {binding.scope}/ binding "
                  "reaches nothing there either", use)


def _save_checkpoint_config(binding: _Binding, run: Optional[str], rewrites: _Rewrites) -> None:
  target = {"period": "train.checkpoint_period", "keep": "train.keep_checkpoints"}[binding.field]
  macro = {"period": "CHECKPOINT_PERIOD", "keep": "train.keep_checkpoints"}[binding.field]
  _unscoped(binding, f"utils.SaveCheckpointConfig.{binding.field}")
  if run != "train":
    raise _refuse(binding, f"only training writes checkpoints (this is {_run_name(run)})",
                  f"it with prompt-tuning train (--gin.{macro}=...)")
  rewrites.set(target, binding.value, binding)


def _partitioner(binding: _Binding, bindings: Sequence[_Binding], rewrites: _Rewrites) -> None:
  _unscoped(binding, f"partitioning.PjitPartitioner.{binding.field}")
  value = _resolved(binding.value)
  if value is None:
    return  # T5X's own "not set" (its finetune.gin: model_parallel_submesh = None)
  both = [b for b in bindings if b.selector == binding.selector and not b.scope
          and _resolved(b.value) is not None]
  if len(both) > 1:
    raise UserError("partitioning.PjitPartitioner: num_partitions and model_parallel_submesh are "
                    "both set; T5X allows at most one: keep one (here both set "
                    "make_mesh.model_parallel_size)")
  if binding.field == "model_parallel_submesh":
    if (not isinstance(value, (tuple, list)) or len(value) != 4
        or not all(isinstance(v, int) and v >= 1 for v in value)):
      raise _refuse(binding, "T5X's submesh is a 4-tuple (x, y, z, c) of positive ints",
                    "e.g. (4, 4, 1, 2), or num_partitions")
    # T5X's model axis has prod(x, y, z, c) devices; which physical devices form it is
    # jax.experimental.mesh_utils' choice here (the same partitioning, so the same results).
    size = math.prod(value)
  else:
    size = value
  if _resolved(_bound("make_mesh.mesh_shape")) not in (None, _UNSET):
    raise UserError(f"{binding.text()} and make_mesh.mesh_shape both shape the mesh: set only one")
  rewrites.set("make_mesh.model_parallel_size", size, binding)


def _run_name(run: Optional[str]) -> str:
  return {"evaluate": "an eval run", "infer": "an infer run", "train": "a train run"}.get(
      run, "no train, eval or infer run")


def _referenced(configurable: str) -> bool:
  """Whether some binding's value is `@configurable()` (unscoped): the run uses it."""
  found = []

  def walk(value):
    if isinstance(value, gin.config.ConfigurableReference):
      name = str(value).lstrip("@").rstrip("()")
      found.append(name == configurable or name.endswith("." + configurable))
    elif isinstance(value, dict):
      for item in value.values():
        walk(item)
    elif isinstance(value, (list, tuple)):
      for item in value:
        walk(item)
  for params in list(gin.config._CONFIG.values()):  # pylint: disable=protected-access
    for v in params.values():
      walk(v)
  return any(found)


def _prompt_init(binding: _Binding, rewrites: _Rewrites) -> None:
  ours = {"population_size": ("sampled_vocab", "prompts/from_sampled_vocab.gin or "
                              "prompts/from_class_labels.gin"),
          "scale": ("uniform", "prompts/from_uniform.gin")}[binding.field]
  target = f"{ours[0]}.{binding.field}"
  if binding.scope != "prompt_init":
    # The reference's model and prompt gin files bind it in the prompt_init/ scope, which
    # wins over this binding: it reaches nothing there.
    where = f"a {binding.scope}/" if binding.scope else "an unscoped"
    raise _refuse(binding, f"the reference binds prompt_init/{binding.selector}, which {where} "
                  "binding does not override", f"prompt_init/{binding.selector}.{binding.field} or --gin.{target}")
  if not _referenced(ours[0]):
    raise _refuse(binding, f"the prompt here is not initialized by {ours[0]} (as in the "
                  f"reference, the setting would change nothing)", f"{ours[1]}")
  rewrites.set(target, binding.value, binding)


# ---- utils.create_learning_rate_scheduler


def _learning_rate(bindings: Sequence[_Binding], run: Optional[str], rewrites: _Rewrites) -> None:
  fields = {}
  for binding in bindings:
    _unscoped(binding, f"{LR_SCHEDULER}.{binding.field}")
    if run != "train":
      raise _refuse(binding, f"only training has a learning rate (this is {_run_name(run)})",
                    "it with prompt-tuning train")
    if binding.field in LR_FIELDS_NOT_HERE:
      raise _refuse(binding, f"only T5X's {', '.join(LR_FACTORS_NOT_HERE)} factors read it, and "
                    "they are not available here", "factors from "
                    f"{', '.join(LR_FACTORS)}, or linear_decay_schedule / "
                    "linear_warmup_cosine_schedule as the optimizer's learning_rate")
    fields[binding.field] = binding
  first = bindings[0]
  factors = _resolved(fields["factors"].value) if "factors" in fields else "constant"
  names = [f.strip() for f in str(factors).split("*")]
  bad = [f for f in names if f not in LR_FACTORS]
  if not isinstance(factors, str) or bad:
    binding = fields.get("factors", first)
    raise _refuse(binding, f"factor {bad[0] if bad else factors!r} is not available here (exact: "
                  f"{', '.join(LR_FACTORS)})", "a product of those, or linear_decay_schedule / "
                  "linear_warmup_cosine_schedule as the optimizer's learning_rate")
  optimizer = _resolved_reference(_bound("train.optimizer"))
  if optimizer not in ("adafactor", "adamw", "sgd"):
    raise _refuse(first, f"the run's optimizer ({_show(_bound('train.optimizer'))}) has no single "
                  "learning rate", "the learning_rate of each optimizer of partitioned()")
  target = f"{optimizer}.learning_rate"
  values = {name: _resolved(fields[name].value) if name in fields else default
            for name, default in LR_RUN_DEFAULTS.items()}
  if "base_learning_rate" in fields:
    values["base_learning_rate"] = _resolved(fields["base_learning_rate"].value)
  else:
    current = _resolved(_bound(target))
    if current is _UNSET:
      current = _default(optimizer, "learning_rate")
    if not isinstance(current, (int, float)) or isinstance(current, bool):
      raise _refuse(first, f"the run's {target} is not a number to start from",
                    f"{LR_SCHEDULER}.base_learning_rate")
    values["base_learning_rate"] = current
  # A field that the factors do not read changes nothing (in T5X neither): refused, not dropped.
  readers = {"warmup_steps": ("linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay"),
             "step_offset": ("linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay")}
  for name, factors_reading in readers.items():
    if name in fields and not set(names) & set(factors_reading):
      raise _refuse(fields[name], f"factors {factors!r} do not read it, so it would change "
                    "nothing", f"factors with {' / '.join(factors_reading)}, or leave it out")
  from prompt_tuning.train import optim  # pylint: disable=g-import-not-at-top
  try:
    optim.create_learning_rate_scheduler(**values)  # its checks, now rather than at the first step
  except UserError as e:
    raise UserError(f"{first.name}: {e}") from None
  if names == ["constant"]:
    # A constant needs no schedule: the number itself (T5X clamps at min_learning_rate).
    rewrites.set(target, max(values["base_learning_rate"], values["min_learning_rate"]), first)
    return
  if optimizer != "adafactor" and _resolved(_bound(f"{optimizer}.global_steps")) is not True:
    # T5X's schedules read the train state's step, which starts at the checkpoint's.
    raise _refuse(first, f"T5X's schedules read the global step, which {optimizer} does not "
                  "count by default", f"--gin.{optimizer}.global_steps=True")
  if optimizer == "adafactor" and _resolved(_bound("adafactor.global_steps")) is False:
    raise _refuse(first, "T5X's schedules read the global step, which adafactor.global_steps="
                  "False does not count", "--gin.adafactor.global_steps=True")
  with gin.unlock_config():
    for name, value in values.items():
      gin.bind_parameter(f"{LR_SCHEDULER}.{name}", value)
  rewrites.set(target, _lr_reference(), first)


def _lr_reference():
  """`@utils.create_learning_rate_scheduler()` as gin's parser makes it."""
  from gin import config_parser  # pylint: disable=g-import-not-at-top
  statement = next(iter(config_parser.ConfigParser(
      f"x.y = @{LR_SCHEDULER}()", gin.config.ParserDelegate())))
  return statement.value


def _default(configurable: str, param: str) -> Any:
  """The default of a registered configurable's parameter (`_UNSET` when there is none)."""
  import inspect  # pylint: disable=g-import-not-at-top
  try:
    fn = gin.config._REGISTRY.get_match(configurable).wrapped  # pylint: disable=protected-access
    default = inspect.signature(inspect.unwrap(fn)).parameters[param].default
  except (AttributeError, KeyError, ValueError, TypeError):
    return _UNSET
  return _UNSET if default is inspect.Parameter.empty else default


def _resolved_reference(value: Any) -> Optional[str]:
  """The short name of the configurable a `@name()` value calls (following macros)."""
  for _ in range(100):
    if not isinstance(value, gin.config.ConfigurableReference):
      return None
    text = str(value)
    if text.startswith("%"):
      value = _macro(text[1:])
      continue
    if "/" in text:
      return None  # a scoped optimizer: not one of ours to rebind
    return text.lstrip("@").rstrip("()").rsplit(".", 1)[-1]
  return None


def user_names(message: str) -> str:
  """`message` with the stand-in configurable called by the name the user typed."""
  return message.replace(_UNIFORM_STAND_IN, T5X_UNIFORM).replace(
      "linen_initializers_uniform", T5X_UNIFORM)
