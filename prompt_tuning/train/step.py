"""The train step: gradients with respect to the trainable subtree only.

`train_step(trainable, opt_state, frozen, batch, rng)` is a pure function; the
loop jits it with explicit shardings. The frozen backbone is an input, never
differentiated, never updated, never given optimizer state.
"""
import dataclasses
from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.models import losses
from prompt_tuning.train import optim
from prompt_tuning.train.trainable import merge_variables

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss settings (T5X defaults)."""
  z_loss: float = 1e-4
  label_smoothing: float = 0.0


def token_loss_sums(model: nn.Module, variables: Any, batch: Batch, rng: jax.Array,
                    loss_config: LossConfig, enable_dropout: bool) -> Tuple[jax.Array, Metrics]:
  """Summed (not averaged) loss over target tokens of one (micro)batch, plus metric sums.

  Sums make microbatching and data parallelism exact: the caller divides by
  the total token weight once.
  """
  logits = model.apply(variables, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                       enable_dropout=enable_dropout, rngs={"dropout": rng})
  weights = batch.get("decoder_loss_weights", (batch["decoder_target_tokens"] > 0))
  weights = weights.astype(jnp.float32)
  loss_sum, z_loss_sum, weight_sum = losses.cross_entropy_with_z_loss(
      logits, batch["decoder_target_tokens"], weights,
      z_loss=loss_config.z_loss, label_smoothing=loss_config.label_smoothing)
  correct = (jnp.argmax(logits, -1) == batch["decoder_target_tokens"]) * weights
  sums = {"loss": loss_sum, "z_loss": z_loss_sum, "weight": weight_sum,
          "correct": jnp.sum(correct)}
  return loss_sum, sums


def _split_microbatches(batch: Batch, n: int) -> Batch:
  return jax.tree_util.tree_map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    loss_config: LossConfig = LossConfig(),
                    num_microbatches: int = 1) -> Callable:
  """Builds `train_step(trainable, opt_state, frozen, batch, rng)`.

  Returns `(trainable, opt_state, metrics)`; metrics are per-token means plus
  the gradient norm, trainable-parameter norm and learning rate.
  """

  def sums_and_grads(trainable, frozen, batch, rng):
    def loss_of(t):
      return token_loss_sums(model, merge_variables(t, frozen), batch, rng, loss_config, True)
    (_, sums), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
    return sums, grads

  def train_step(trainable, opt_state, frozen, batch, rng):
    if num_microbatches <= 1:
      sums, grads = sums_and_grads(trainable, frozen, batch, rng)
    else:
      micro = _split_microbatches(batch, num_microbatches)
      zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)

      def body(carry, xs):
        acc_sums, acc_grads = carry
        mb, i = xs
        sums, grads = sums_and_grads(trainable, frozen, mb, jax.random.fold_in(rng, i))
        return (jax.tree_util.tree_map(jnp.add, acc_sums, sums),
                jax.tree_util.tree_map(jnp.add, acc_grads, grads)), None

      init_sums = {"loss": 0.0, "z_loss": 0.0, "weight": 0.0, "correct": 0.0}
      init_sums = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), init_sums)
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
    lr = optim.current_learning_rate(opt_state)
    if lr is not None:
      metrics["learning_rate"] = jnp.asarray(lr, jnp.float32)
    return new_trainable, new_opt_state, metrics

  return train_step

