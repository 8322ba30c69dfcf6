"""T5 1.1 building blocks in Flax linen: RMS norm, dense, attention, relative bias, MLP.

Every parameter carries T5X logical axis names (`embed`, `joined_kv`, `mlp`,
`heads`, `relpos_buckets`, `vocab`) so the partitioner can shard it by rules.
Parameter names follow flaxformer so T5X checkpoints load by name.
`RMSNorm`, `Dense`, `MultiHeadAttention` and `GatedMlp` take an optional
`deltas` plan (`prompt_tuning.models.deltas`); the default adds nothing.
"""
import functools
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models.deltas import NO_DELTAS, DeltaPlan, SiteInfo, apply_deltas

Array = jax.Array
# Large negative attention bias for masked positions (T5X's value); finite so
# fully-masked rows do not produce NaN.
MASK_BIAS = -1e10

_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _partitioned(init, axes: Tuple[str, ...]):
  return nn.with_logical_partitioning(init, axes)


class RMSNorm(nn.Module):
  """T5's layer norm: no mean subtraction, no bias; statistics in float32."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  deltas: DeltaPlan = NO_DELTAS

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", _partitioned(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    y = (x32 * scale.astype(jnp.float32)).astype(self.dtype)
    return apply_deltas(self, "output", y, SiteInfo("norm", x.shape[-1], "embed"))


class Dense(nn.Module):
  """Bias-free `[..., in] @ [in, out]` with a 2-D kernel named `kernel`."""
  features: int
  kernel_axes: Tuple[str, str]
  kernel_init: nn.initializers.Initializer = _KERNEL_INIT
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  deltas: DeltaPlan = NO_DELTAS

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", _partitioned(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), self.param_dtype)
    y = jnp.einsum("...d,df->...f", x.astype(self.dtype), kernel.astype(self.dtype))
    info = SiteInfo("dense", self.features, self.kernel_axes[1], x.shape[-1], self.kernel_axes[0])
    return apply_deltas(self, "output", y, info, inputs=x)


def relative_position_bucket(relative_position: Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> Array:
  """Maps `key_pos - query_pos` to T5's log-spaced buckets `[0, num_buckets)`.

  Half the buckets (per direction) hold exact small distances; the rest are
  logarithmically spaced up to `max_distance`, beyond which all share the last.
  """
  n = -relative_position
  ret = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # max(n, 1) keeps log finite where `is_small` discards the value anyway.
  scaled = (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
            / np.log(max_distance / max_exact) * (num_buckets - max_exact))
  val_if_large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
  """Learned per-head bias from relative position buckets: `[1, H, Lq, Lk]`."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array, bidirectional: bool) -> Array:
    """query_positions: `[Lq]`, key_positions: `[Lk]` (int32)."""
    table = self.param(
        "rel_embedding",
        _partitioned(nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                     ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), self.param_dtype)
    buckets = relative_position_bucket(key_positions[None, :] - query_positions[:, None],
                                       bidirectional, self.num_buckets, self.max_distance)
    bias = jnp.take(table.astype(self.dtype), buckets, axis=1)  # [H, Lq, Lk]
    return bias[None]


class MultiHeadAttention(nn.Module):
  """Bias-free dot-product attention without 1/sqrt(d) scaling (T5 folds it into init).

  With `decode=True` (self-attention only), keys and values of earlier steps
  live in the `cache` collection: the first call (from `init`) sizes the cache
  to the full target length, each later call appends one position.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  deltas: DeltaPlan = NO_DELTAS

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array, *,
               decode: bool = False, deterministic: bool = True) -> Array:
    """inputs_q: `[B, Lq, E]`, inputs_kv: `[B, Lk, E]`, bias: broadcastable to `[B, H, Lq, Lk]`."""
    joined = self.num_heads * self.head_dim
    query_init = lambda *a: _KERNEL_INIT(*a) / np.sqrt(self.head_dim).astype(np.float32)
    dense = functools.partial(Dense, joined, ("embed", "joined_kv"), dtype=self.dtype,
                              param_dtype=self.param_dtype, deltas=self.deltas)
    split = lambda x: x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
    q = split(dense(kernel_init=query_init, name="query")(inputs_q))
    k = split(dense(name="key")(inputs_kv))
    v = split(dense(name="value")(inputs_kv))
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", "length", "heads", "kv"))

    if decode:
      k, v = self._update_cache(k, v)

    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits + bias.astype(jnp.float32)
    # Softmax with the division deferred to the `[B, Lq, H, D]` output (D = 64
    # is narrower than Lk): `softmax(s) @ v == (exp(s - max) @ v) / sum(exp(s - max))`.
    # The shift by the row max cancels exactly, so it needs no gradient.
    logits_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    shifted = logits - logits_max
    unnormalized = jnp.exp(shifted)
    denominator = jnp.sum(unnormalized, axis=-1)  # [B, H, Lq]
    weights = unnormalized.astype(self.dtype)
    if not deterministic and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32)
    out = out / jnp.swapaxes(denominator, 1, 2)[..., None]
    info = SiteInfo("attention", inputs_q.shape[-1], "embed", num_heads=self.num_heads,
                    head_dim=self.head_dim)
    out = apply_deltas(self, "attended", out, info, query=q, logits_max=logits_max,
                       denominator=denominator).astype(self.dtype)
    out = out.reshape(out.shape[:2] + (joined,))
    y = Dense(inputs_q.shape[-1], ("joined_kv", "embed"), dtype=self.dtype,
              param_dtype=self.param_dtype, deltas=self.deltas, name="out")(out)
    return apply_deltas(self, "output", y, info, inputs=inputs_q)

  def _update_cache(self, k: Array, v: Array) -> Tuple[Array, Array]:
    initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialized:  # The init call only shapes the cache.
      return k, v
    if k.shape[1] != 1:
      raise ValueError(f"decode expects one new position per call, got {k.shape[1]}")
    i = index.value
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k, (0, i, 0, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v, (0, i, 0, 0))
    index.value = i + 1
    return cached_key.value, cached_value.value


class GatedMlp(nn.Module):
  """T5 1.1 gated MLP: `wo(act_0(wi_0 x) * act_1(wi_1 x))`."""
  mlp_dim: int
  activations: Sequence[str] = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  deltas: DeltaPlan = NO_DELTAS

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    hidden = None
    for i, name in enumerate(self.activations):
      h = Dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype,
                deltas=self.deltas, name=f"wi_{i}" if len(self.activations) > 1 else "wi")(x)
      h = _activation(name)(h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    info = SiteInfo("mlp", x.shape[-1], "embed", hidden=self.mlp_dim)
    hidden = apply_deltas(self, "hidden", hidden, info)
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    y = Dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype,
              deltas=self.deltas, name="wo")(hidden)
    return apply_deltas(self, "output", y, info, inputs=x)


def _activation(name: str):
  table = {
      "gelu": functools.partial(jax.nn.gelu, approximate=True),  # HF's gelu_new
      "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
      "relu": jax.nn.relu,
      "silu": jax.nn.silu,
      "linear": lambda x: x,
  }
  if name not in table:
    raise ValueError(f"unknown activation {name!r}; known: {sorted(table)}")
  return table[name]


class Embed(nn.Module):
  """Token embedding table `[vocab, embed]` named `embedding`."""
  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", _partitioned(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, tokens: Array) -> Array:
    """tokens: `[B, L]` int -> `[B, L, E]`."""
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)


def attention_bias_from_mask(mask: Array) -> Array:
  """Boolean mask broadcastable to `[B, H, Lq, Lk]` -> additive bias (0 or MASK_BIAS)."""
  return jnp.where(mask, 0.0, MASK_BIAS).astype(jnp.float32)
