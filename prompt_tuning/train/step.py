"""The train step: gradients with respect to the trainable subtree only.

`train_step(trainable, opt_state, frozen, batch, rng)` is a pure function; the
loop jits it with explicit shardings. The frozen backbone is an input, never
differentiated, never updated, never given optimizer state.

Methods that add to the loss (InfoPrompt's mutual-information terms) do it
through `LossConfig.extra_terms`, never through a copy of the step: a term is
`term(model, variables, batch, features, rng) -> (loss [B], metrics {name: [B]})`
with per-example values. `features` are what the model sowed in its forward
pass (`encoded`, `encoder_valid`, `decoder_hidden`); `rng` is the step's key,
the same on every device and microbatch (per-example randomness must fold in
`batch['example_index']`, the global example index). Each example's term loss
is weighted by its number of target tokens, so after the one division by the
total token weight it is a token-weighted mean like the task loss, and sums
stay exact under microbatching and data parallelism.
"""
import dataclasses
from typing import Any, Callable, Dict, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.models import losses
from prompt_tuning.models import packed as packed_lib
from prompt_tuning.train import optim
from prompt_tuning.train.trainable import merge_variables

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]


LossTerm = Callable[..., Tuple[jax.Array, Dict[str, jax.Array]]]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss settings (T5X defaults) and the extra loss terms of a method.

  Attributes:
    z_loss: T5X's z-loss coefficient.
    label_smoothing: label smoothing of the cross-entropy.
    extra_terms: method loss terms (see the module docstring), e.g.
      `@infoprompt_loss_terms()`.
  """
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  extra_terms: Sequence[LossTerm] = ()


def token_loss_sums(model: nn.Module, variables: Any, batch: Batch, rng: jax.Array,
                    loss_config: LossConfig, enable_dropout: bool,
                    term_rng: jax.Array = None) -> Tuple[jax.Array, Metrics]:
  """Summed (not averaged) loss over target tokens of one (micro)batch, plus metric sums.

  Sums make microbatching and data parallelism exact: the caller divides by
  the total token weight once. `rng` drives dropout; `term_rng` (default:
  `rng`) is the key handed to `loss_config.extra_terms`.
  """
  inputs = (batch["encoder_input_tokens"], batch["decoder_input_tokens"])
  packed = packed_lib.model_kwargs(batch)  # packed rows (data/packing.py): segments' ids
  if loss_config.extra_terms:
    logits, sown = model.apply(variables, *inputs, enable_dropout=enable_dropout,
                               rngs={"dropout": rng}, mutable=["intermediates"], **packed)
    features = {k: v[0] for k, v in sown["intermediates"].items()}
  else:
    logits = model.apply(variables, *inputs, enable_dropout=enable_dropout, rngs={"dropout": rng},
                         **packed)
  weights = batch.get("decoder_loss_weights", (batch["decoder_target_tokens"] > 0))
  weights = weights.astype(jnp.float32)
  loss_sum, z_loss_sum, weight_sum = losses.cross_entropy_with_z_loss(
      logits, batch["decoder_target_tokens"], weights,
      z_loss=loss_config.z_loss, label_smoothing=loss_config.label_smoothing)
  correct = (jnp.argmax(logits, -1) == batch["decoder_target_tokens"]) * weights
  sums = {"loss": loss_sum, "z_loss": z_loss_sum, "weight": weight_sum,
          "correct": jnp.sum(correct)}
  if loss_config.extra_terms:
    example_weight = jnp.sum(weights, axis=1)  # [B] target tokens per example
    sums["examples"] = jnp.sum(example_weight > 0).astype(jnp.float32)
    for term in loss_config.extra_terms:
      term_loss, term_metrics = term(model, variables, batch, features,
                                     rng if term_rng is None else term_rng)
      loss_sum = loss_sum + jnp.sum(example_weight * term_loss)
      for name, values in term_metrics.items():
        sums[f"example_sum/{name}"] = jnp.sum(jnp.where(example_weight > 0, values, 0.0))
    sums["total_loss"] = loss_sum
  return loss_sum, sums


def _split_microbatches(batch: Batch, n: int) -> Batch:
  return jax.tree_util.tree_map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    loss_config: LossConfig = LossConfig(),
                    num_microbatches: int = 1) -> Callable:
  """Builds `train_step(trainable, opt_state, frozen, batch, rng)`.

  Returns `(trainable, opt_state, metrics)`; metrics are per-token means plus
  the gradient norm, trainable-parameter norm and the learning rate of each
  optimizer group (`optim.learning_rates`).
  """

  def sums_and_grads(trainable, frozen, batch, rng, term_rng):
    def loss_of(t):
      return token_loss_sums(model, merge_variables(t, frozen), batch, rng, loss_config, True,
                             term_rng)
    (_, sums), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
    return sums, grads

  def train_step(trainable, opt_state, frozen, batch, rng):
    if num_microbatches <= 1:
      sums, grads = sums_and_grads(trainable, frozen, batch, rng, rng)
    else:
      micro = _split_microbatches(batch, num_microbatches)
      zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)

      def body(carry, xs):
        acc_sums, acc_grads = carry
        mb, i = xs
        sums, grads = sums_and_grads(trainable, frozen, mb, jax.random.fold_in(rng, i), rng)
        return (jax.tree_util.tree_map(jnp.add, acc_sums, sums),
                jax.tree_util.tree_map(jnp.add, acc_grads, grads)), None

      first = jax.tree_util.tree_map(lambda x: x[0], micro)
      shapes = jax.eval_shape(lambda: sums_and_grads(trainable, frozen, first, rng, rng)[0])
      init_sums = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
      (sums, grads), _ = jax.lax.scan(body, (init_sums, zeros),
                                      (micro, jnp.arange(num_microbatches)))
    denom = jnp.maximum(sums["weight"], 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
    updates, new_opt_state = optimizer.update(grads, opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    metrics = {
        "loss": sums["loss"] / denom,
        "z_loss": sums["z_loss"] / denom,
        "accuracy": sums["correct"] / denom,
        "target_tokens": sums["weight"],
        "grad_norm": optax.tree.norm(grads),
        "trainable_norm": optax.tree.norm(new_trainable),
    }
    if "prompt" in new_trainable:
      metrics["prompt_norm"] = optax.tree.norm(new_trainable["prompt"])
    if "total_loss" in sums:  # task loss plus the method's terms, per target token
      metrics["total_loss"] = sums["total_loss"] / denom
      examples = jnp.maximum(sums["examples"], 1.0)
      for key in sums:
        if key.startswith("example_sum/"):
          metrics[key[len("example_sum/"):]] = sums[key] / examples
    for name, lr in optim.learning_rates(optimizer, opt_state).items():  # one per group
      metrics[name] = jnp.asarray(lr, jnp.float32)
    return new_trainable, new_opt_state, metrics

  return train_step

