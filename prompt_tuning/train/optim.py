"""Optimizers and schedules, as gin-bindable factories returning optax transforms.

Each is wrapped in `optax.inject_hyperparams`, so the current learning rate
is part of the optimizer state and reaches the summaries.
The default is Lester et al.'s: Adafactor, constant learning rate 0.3,
decay rate 0.8, no parameter scaling, weight decay 1e-5.
"""
import re
from typing import Callable, Mapping, Optional, Union

import gin
import jax
import optax

Schedule = Union[float, Callable[[int], float]]


@gin.configurable
def constant_schedule(value: float = 0.3) -> optax.Schedule:
  return optax.constant_schedule(value)


@gin.configurable
def warmup_rsqrt_schedule(peak: float = 1.0, warmup_steps: int = 10_000) -> optax.Schedule:
  """T5's `rsqrt` decay after a constant warm-up plateau."""
  import jax.numpy as jnp
  return lambda step: peak * jnp.sqrt(warmup_steps) / jnp.sqrt(jnp.maximum(step, warmup_steps))


@gin.configurable
def linear_warmup_cosine_schedule(peak: float = 0.3, warmup_steps: int = 100,
                                  decay_steps: int = 10_000, end_value: float = 0.0):
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, decay_steps, end_value)


@gin.configurable
def adafactor(learning_rate: Schedule = 0.3, decay_rate: float = 0.8,
              multiply_by_parameter_scale: bool = False, weight_decay_rate: Optional[float] = 1e-5,
              clipping_threshold: Optional[float] = 1.0, momentum: Optional[float] = None,
              min_dim_size_to_factor: int = 128) -> optax.GradientTransformation:
  """Adafactor with the prompt-tuning paper's defaults."""
  static = ("min_dim_size_to_factor", "decay_offset", "multiply_by_parameter_scale", "factored")
  return optax.inject_hyperparams(optax.adafactor, static_args=static)(
      learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum,
      weight_decay_rate=weight_decay_rate)


@gin.configurable
def adamw(learning_rate: Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
          weight_decay: float = 1e-5, max_grad_norm: Optional[float] = None):
  tx = optax.inject_hyperparams(optax.adamw)(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
  if max_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)
  return tx


@gin.configurable
def sgd(learning_rate: Schedule = 0.1, momentum: Optional[float] = None):
  return optax.inject_hyperparams(optax.sgd)(learning_rate, momentum=momentum)


@gin.configurable
def partitioned(default: optax.GradientTransformation = gin.REQUIRED,
                by_pattern: Optional[Mapping[str, optax.GradientTransformation]] = None
                ) -> optax.GradientTransformation:
  """One optimizer per group of trainable parameters, chosen by regex over their paths.

  E.g. Residual Prompt Tuning's MLP at its own learning rate::

    train.optimizer = @partitioned()
    partitioned.default = @adafactor()
    partitioned.by_pattern = {'prompt/residual/.*': @residual_mlp/adafactor()}
    residual_mlp/adafactor.learning_rate = 1e-4

  A path takes the first pattern (in the mapping's order) that fully matches
  it; the rest take `default`. The reported learning rate is `default`'s.
  """
  patterns = list((by_pattern or {}).items())
  transforms = {"default": default, **{f"group_{i}": tx for i, (_, tx) in enumerate(patterns)}}

  def label(key_path, _):
    path = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)
    return next((f"group_{i}" for i, (p, _) in enumerate(patterns) if re.fullmatch(p, path)),
                "default")

  def labels(params):  # any pytree, also optax's placeholders when it maps over the state
    return jax.tree_util.tree_map_with_path(label, params)

  return optax.multi_transform(transforms, labels)


def current_learning_rate(opt_state) -> Optional[float]:
  """The learning rate recorded by `inject_hyperparams` in `opt_state`, if any (the first
  one found, e.g. `partitioned`'s default group)."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate")
  return found[0][1] if found else None
