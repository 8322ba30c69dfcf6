"""Optimizers and schedules, as gin-bindable factories returning optax transforms.

Each is wrapped in `optax.inject_hyperparams`, so the current learning rate
is part of the optimizer state and reaches the summaries.
The default is Lester et al.'s: Adafactor, constant learning rate 0.3,
decay rate 0.8, no parameter scaling, weight decay 1e-5.

Step counting. T5X keeps one step in the train state, restored from the
initial checkpoint (1,100,000 for the LM-adapted T5 1.1), and its Adafactor's
second-moment decay `1 - (t + 1)^-0.8` and its learning-rate schedules read
that global step. optax counts updates from 0 in each transform's state. An
optimizer made by `counts_global_steps` (`adafactor` by default) has its
counters started at the run's initial step by `start_at_step`, so a prompt
tuned from `checkpoint_1100000` sees beta2 = 1 - 1100001^-0.8 at its first
update, as in T5X. `adamw` and `sgd` count their own updates (PyTorch's
convention, which the Residual and InfoPrompt papers' code follows) unless
told otherwise.
"""
import re
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Union

import gin
import jax
import jax.numpy as jnp
import optax

from prompt_tuning import checks
from prompt_tuning.errors import UserError

Schedule = Union[float, Callable[[int], float]]


def _learning_rate(value: Schedule, name: str) -> Schedule:
  """A finite learning rate >= 0 (0 freezes a group of `partitioned`), or a schedule (whose own
  factory checked its numbers)."""
  if callable(value):
    return value
  return checks.number(value, name, f"--gin.{name}=0.3", at_least=0)


def _optional(value: Optional[float], name: str, example: str, **bounds) -> Optional[float]:
  return None if value is None else checks.number(value, name, f"{example} (or None)", **bounds)


class GlobalStepState(NamedTuple):
  """The state of a transform whose counters follow the run's global step."""
  inner: Any


def counts_global_steps(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` with its step counters marked for `start_at_step` (T5X's global-step semantics)."""
  def init(params):
    return GlobalStepState(tx.init(params))

  def update(updates, state, params=None):
    updates, inner = tx.update(updates, state.inner, params)
    return updates, GlobalStepState(inner)

  return optax.GradientTransformation(init, update)


def start_at_step(opt_state: Any, step: int) -> Any:
  """`opt_state` with the counters of every `counts_global_steps` part set to `step`.

  Called on a fresh optimizer state with the run's initial step (the initial
  checkpoint's); a resumed state keeps the counters it was saved with. Other
  transforms (e.g. `adamw`) keep counting their own updates from 0.
  """
  def set_count(path, leaf):
    named = getattr(path[-1], "name", None) if path else None
    return jnp.full_like(leaf, step) if named == "count" else leaf

  def start(node):
    if isinstance(node, GlobalStepState):
      return GlobalStepState(jax.tree_util.tree_map_with_path(set_count, node.inner))
    return node

  return jax.tree_util.tree_map(start, opt_state,
                                is_leaf=lambda x: isinstance(x, GlobalStepState))


@gin.configurable
def constant_schedule(value: float = 0.3) -> optax.Schedule:
  return optax.constant_schedule(_learning_rate(value, "constant_schedule.value"))


@gin.configurable
def warmup_rsqrt_schedule(peak: float = 1.0, warmup_steps: int = 10_000) -> optax.Schedule:
  """T5's `rsqrt` decay after a constant warm-up plateau."""
  peak = _learning_rate(peak, "warmup_rsqrt_schedule.peak")
  checks.positive_int(warmup_steps, "warmup_rsqrt_schedule.warmup_steps",
                      "--gin.warmup_rsqrt_schedule.warmup_steps=10000")
  return lambda step: peak * jnp.sqrt(warmup_steps) / jnp.sqrt(jnp.maximum(step, warmup_steps))


@gin.configurable
def linear_decay_schedule(peak: float = 1e-4, decay_steps: int = 20_000,
                          end_value: float = 0.0) -> optax.Schedule:
  """Linear decay from `peak` to `end_value` over `decay_steps` (the Hugging Face Trainer's
  default `linear` schedule without warm-up)."""
  peak = _learning_rate(peak, "linear_decay_schedule.peak")
  checks.positive_int(decay_steps, "linear_decay_schedule.decay_steps",
                      "--gin.linear_decay_schedule.decay_steps=20000")
  checks.number(end_value, "linear_decay_schedule.end_value",
                "--gin.linear_decay_schedule.end_value=0.0", at_least=0)
  return optax.linear_schedule(peak, end_value, decay_steps)


@gin.configurable
def linear_warmup_cosine_schedule(peak: float = 0.3, warmup_steps: int = 100,
                                  decay_steps: int = 10_000, end_value: float = 0.0):
  peak = _learning_rate(peak, "linear_warmup_cosine_schedule.peak")
  if warmup_steps != 0:
    checks.positive_int(warmup_steps, "linear_warmup_cosine_schedule.warmup_steps",
                        "--gin.linear_warmup_cosine_schedule.warmup_steps=100")
  checks.positive_int(decay_steps, "linear_warmup_cosine_schedule.decay_steps",
                      "--gin.linear_warmup_cosine_schedule.decay_steps=10000")
  checks.number(end_value, "linear_warmup_cosine_schedule.end_value",
                "--gin.linear_warmup_cosine_schedule.end_value=0.0", at_least=0)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, decay_steps, end_value)


# T5X's factors that a product of ours reproduces exactly, and its others (refused by name).
LR_FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay")
LR_FACTORS_NOT_HERE = ("linear_decay", "decay_every", "cosine_decay")


@gin.configurable("create_learning_rate_scheduler", module="utils")
def create_learning_rate_scheduler(factors: str = "constant * linear_warmup * rsqrt_decay",
                                   base_learning_rate: float = 0.5, warmup_steps: int = 1000,
                                   step_offset: int = 0, min_learning_rate: float = 1e-8,
                                   decay_factor: None = None, steps_per_decay: None = None,
                                   steps_per_cycle: None = None) -> optax.Schedule:
  """T5X's `utils.create_learning_rate_scheduler` (same name, defaults and values) for the
  factors it shares with us.

  The rate at step t is the product of the `*`-separated factors at s = max(0, t - step_offset),
  raised to at least `min_learning_rate`: `constant` = base_learning_rate, `linear_warmup` =
  min(1, s / warmup_steps), `rsqrt_decay` = 1 / sqrt(max(s, warmup_steps)),
  `rsqrt_normalized_decay` = sqrt(warmup_steps / max(s, warmup_steps)). T5X evaluates it at its
  train state's step, which starts at the initial checkpoint's: give it to an optimizer that
  counts global steps (`adafactor` does by default). T5X's `linear_decay`, `decay_every` and
  `cosine_decay` are refused (`t5x_settings` maps T5X's bindings of it onto the run's optimizer).
  """
  name = "utils.create_learning_rate_scheduler"
  # T5X's fields of the factors refused here: accepted by gin so that a binding is refused by
  # name (`t5x_settings`), never set.
  for field, value in (("decay_factor", decay_factor), ("steps_per_decay", steps_per_decay),
                       ("steps_per_cycle", steps_per_cycle)):
    if value is not None:
      raise UserError(f"{name}.{field} is read only by T5X's "
                      f"{', '.join(LR_FACTORS_NOT_HERE)} factors, which are not "
                      "available here; leave it out")
  names = [f.strip() for f in factors.split("*")] if isinstance(factors, str) else [factors]
  unknown = [f for f in names if f not in LR_FACTORS]
  if unknown:
    raise UserError(f"{name}.factors: {unknown[0]!r} is not available here (exact: "
                    f"{', '.join(LR_FACTORS)}); use a product of those, e.g. "
                    "'constant * rsqrt_decay'")
  base = checks.number(base_learning_rate, f"{name}.base_learning_rate",
                       f"--gin.{name}.base_learning_rate=0.3", at_least=0)
  checks.positive_int(warmup_steps, f"{name}.warmup_steps", f"--gin.{name}.warmup_steps=1000")
  if not isinstance(step_offset, int) or isinstance(step_offset, bool):
    raise UserError(f"{name}.step_offset must be an int, not {step_offset!r}; e.g. "
                    f"--gin.{name}.step_offset=0")
  floor = checks.number(min_learning_rate, f"{name}.min_learning_rate",
                        f"--gin.{name}.min_learning_rate=1e-8", at_least=0)

  def schedule(step):
    s = jnp.maximum(0, jnp.asarray(step) - step_offset).astype(jnp.float32)
    rate = jnp.float32(1.0)
    for factor in names:
      if factor == "constant":
        rate = rate * base
      elif factor == "linear_warmup":
        rate = rate * jnp.minimum(1.0, s / warmup_steps)
      elif factor == "rsqrt_decay":
        rate = rate / jnp.sqrt(jnp.maximum(s, warmup_steps))
      else:  # rsqrt_normalized_decay
        rate = rate * jnp.sqrt(warmup_steps / jnp.maximum(s, warmup_steps))
    return jnp.maximum(rate, floor).astype(jnp.float32)
  return schedule


@gin.configurable
def adafactor(learning_rate: Schedule = 0.3, decay_rate: float = 0.8, step_offset: int = 0,
              multiply_by_parameter_scale: bool = False, weight_decay_rate: Optional[float] = 1e-5,
              clipping_threshold: Optional[float] = 1.0, momentum: Optional[float] = None,
              min_dim_size_to_factor: int = 128, global_steps: bool = True
              ) -> optax.GradientTransformation:
  """T5X's Adafactor with the prompt-tuning paper's defaults.

  The second-moment decay at global step t is `1 - (t - step_offset + 1)^-decay_rate`
  (T5X's `Adafactor.step_offset`). With `global_steps` (default) t counts from the
  initial checkpoint's step, as T5X; `step_offset = -1_100_000` makes a step-0 copy
  of the LM-adapted checkpoint (a Hugging Face folder) decay as `checkpoint_1100000`
  does. `global_steps=False` counts this optimizer's own updates from 0 (optax's
  convention). Weight decay is not scaled by the learning rate, as in T5X.
  """
  learning_rate = _learning_rate(learning_rate, "adafactor.learning_rate")
  checks.number(decay_rate, "adafactor.decay_rate", "--gin.adafactor.decay_rate=0.8", above=0)
  _optional(weight_decay_rate, "adafactor.weight_decay_rate",
            "--gin.adafactor.weight_decay_rate=1e-5", at_least=0)
  _optional(clipping_threshold, "adafactor.clipping_threshold",
            "--gin.adafactor.clipping_threshold=1.0", above=0)
  _optional(momentum, "adafactor.momentum", "--gin.adafactor.momentum=0.9", at_least=0, below=1)
  static = ("min_dim_size_to_factor", "decay_offset", "multiply_by_parameter_scale", "factored")
  tx = optax.inject_hyperparams(optax.adafactor, static_args=static)(
      learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, decay_offset=step_offset,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum,
      weight_decay_rate=weight_decay_rate)
  return counts_global_steps(tx) if global_steps else tx


@gin.configurable
def adamw(learning_rate: Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-5, max_grad_norm: Optional[float] = None,
          global_steps: bool = False) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay, multiplied by the learning rate as in PyTorch).

  Its bias correction and schedule count its own updates from 0, as PyTorch's
  AdamW; `global_steps=True` counts from the initial checkpoint's step instead.
  """
  learning_rate = _learning_rate(learning_rate, "adamw.learning_rate")
  for name, value, example in (("b1", b1, 0.9), ("b2", b2, 0.999)):
    checks.number(value, f"adamw.{name}", f"--gin.adamw.{name}={example}", at_least=0, below=1)
  checks.number(eps, "adamw.eps", "--gin.adamw.eps=1e-8", at_least=0)
  checks.number(weight_decay, "adamw.weight_decay", "--gin.adamw.weight_decay=1e-5", at_least=0)
  _optional(max_grad_norm, "adamw.max_grad_norm", "--gin.adamw.max_grad_norm=1.0", above=0)
  tx = optax.inject_hyperparams(optax.adamw)(learning_rate, b1=b1, b2=b2, eps=eps,
                                             weight_decay=weight_decay)
  if max_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)
  return counts_global_steps(tx) if global_steps else tx


@gin.configurable
def sgd(learning_rate: Schedule = 0.1, momentum: Optional[float] = None,
        global_steps: bool = False) -> optax.GradientTransformation:
  learning_rate = _learning_rate(learning_rate, "sgd.learning_rate")
  _optional(momentum, "sgd.momentum", "--gin.sgd.momentum=0.9", at_least=0, below=1)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate, momentum=momentum)
  return counts_global_steps(tx) if global_steps else tx


class Partitioned(optax.GradientTransformationExtraArgs):
  """`optax.multi_transform` over named groups of parameters (what `partitioned` returns).

  Besides `init`/`update`, it knows its groups: `patterns` (group label -> regex, in
  matching order) and `group_of(path)`, which `plan` and the step's metrics read.
  """
  patterns: Dict[str, str]

  def group_of(self, path: str) -> str:
    return next((label for label, p in self.patterns.items() if re.fullmatch(p, path)),
                "default")

  def metric_name(self, label: str) -> str:
    """`learning_rate` for the default group, `learning_rate/<pattern's words>` for others."""
    if label == "default":
      return "learning_rate"
    words = re.sub(r"[^A-Za-z0-9_/]+", "", self.patterns[label]).strip("/")
    return f"learning_rate/{words or label}"


@gin.configurable
def partitioned(default: optax.GradientTransformation = gin.REQUIRED,
                by_pattern: Optional[Mapping[str, optax.GradientTransformation]] = None
                ) -> Partitioned:
  """One optimizer per group of trainable parameters, chosen by regex over their paths
  (T5X's `MultiOptimizer`): each group has its own state, schedule and step counting.

  E.g. InfoPrompt's critics with AdamW 1e-3 beside the prompt's Adafactor 0.3::

    train.optimizer = @partitioned()
    partitioned.default = @adafactor()
    partitioned.by_pattern = {'info/.*': @info/adamw()}
    info/adamw.learning_rate = 1e-3

  A path takes the first pattern (in the mapping's order) that fully matches
  it; the rest take `default`. Each group's learning rate is reported
  (`learning_rate` for the default group, `learning_rate/info` for `'info/.*'`).
  """
  items = list((by_pattern or {}).items())
  for pattern, _ in items:
    try:
      re.compile(pattern)
    except re.error as e:
      raise UserError(f"partitioned.by_pattern: {pattern!r} is not a regular expression "
                      f"({e}); fix the pattern") from None
  transforms = {"default": default, **{f"group_{i}": tx for i, (_, tx) in enumerate(items)}}
  patterns = {f"group_{i}": p for i, (p, _) in enumerate(items)}

  def labels(params):  # any pytree, also optax's placeholders when it maps over the state
    return jax.tree_util.tree_map_with_path(lambda kp, _: tx.group_of(key_path_name(kp)), params)

  tx = Partitioned(*optax.multi_transform(transforms, labels))
  tx.patterns = patterns
  return tx


def key_path_name(key_path) -> str:
  """`'prompt/residual/down/kernel'` for a JAX key path into a parameter tree."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)


def parameter_groups(optimizer: optax.GradientTransformation, params: Any) -> Dict[str, list]:
  """`{group label: [parameter paths]}` of `params` under `optimizer` ('default' alone
  unless it is `partitioned`)."""
  paths = [key_path_name(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  if not isinstance(optimizer, Partitioned):
    return {"default": paths}
  groups = {label: [] for label in ["default", *optimizer.patterns]}
  for path in paths:
    groups[optimizer.group_of(path)].append(path)
  return groups


def learning_rates(optimizer: optax.GradientTransformation, opt_state: Any) -> Dict[str, Any]:
  """The current learning rate of each group, as recorded by `inject_hyperparams`:
  `{'learning_rate': ..., 'learning_rate/<group>': ...}` (empty if none is recorded)."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate")
  if not isinstance(optimizer, Partitioned):
    return {"learning_rate": found[0][1]} if found else {}
  rates = {}
  for path, value in found:
    label = next((k.key for k in path if getattr(k, "key", None) in
                  ("default", *optimizer.patterns)), None)
    if label is not None:
      rates.setdefault(optimizer.metric_name(label), value)
  return rates


def current_learning_rate(opt_state) -> Optional[float]:
  """The learning rate recorded by `inject_hyperparams` in `opt_state`, if any (the first
  one found, e.g. `partitioned`'s default group)."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate")
  return found[0][1] if found else None
