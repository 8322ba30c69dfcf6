"""Flax modules of InfoPrompt (Wu et al. 2023): critics, the Gaussian heads f_μ/f_σ,
the container `InfoPromptHeads` and the optional prompt generator.

Parameters of `InfoPromptHeads` (attached to T5 as the top-level submodule
`info`, so they live under `info/...`)::

  head_critic/kernel             [E, E]  W1 of l(P, θ) = Pᵀ W1 θ   (prompt_embed, embed)
  representation_critic/kernel   [E, E]  W2 of l(P, Z) = Pᵀ W2 Z   (prompt_embed, embed)
  gaussian/mean/{kernel,bias}    [E, E], [E]  f_μ                  (embed, info_embed)
  gaussian/scale/{kernel,bias}   [E, E], [E]  f_σ (softplus)       (embed, info_embed)

With `critic='dot'` (the released code) the two critic kernels do not exist.
`info_embed` is not in the partitioning rules, so, like `prompt_embed`, it is
replicated.

`PromptGenerator` (§4.2) maps a pooled prompt-free representation `[B, E]` to
per-example prompts `[B, P, E]`; its parameters live wherever the caller puts
it (e.g. under `prompt/`).
"""
from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from prompt_tuning.errors import UserError
from prompt_tuning.methods.infoprompt.estimators import info_nce
from prompt_tuning.methods.infoprompt.representations import (PROMPT_POOLINGS, Z_SOURCES,
                                                              prompt_queries,
                                                              select_representation)

Array = jax.Array
CRITICS = ("bilinear", "dot")
# Logical axis of the Gaussian heads' outputs; unmapped in the rules, hence replicated.
INFO_AXIS = "info_embed"
# Logical axis of the generator's low-rank bottleneck (as Residual Prompt Tuning's MLP).
RANK_AXIS = "prompt_mlp"


def bilinear_normal(key: Array, shape: Tuple[int, int], dtype: Any = jnp.float32) -> Array:
  """`N(0, 1 / (in · out))`: a bilinear score of vectors with unit RMS starts at unit scale."""
  return jax.random.normal(key, shape, dtype) * (shape[0] * shape[1]) ** -0.5


def partial_identity(key: Array, shape: Tuple[int, int], dtype: Any = jnp.float32) -> Array:
  """The (rectangular) identity: `f_μ(Z') = Z'` at initialization."""
  del key
  return jnp.eye(shape[0], shape[1], dtype=dtype)


class Critic(nn.Module):
  """Scores `l(q, c) = qᵀ W c` (`bilinear`, trainable `W`) or `qᵀ c` (`dot`, no parameters).

  Attributes:
    kind: `bilinear` (the paper) or `dot` (the released code).
    kernel_init: initializer of `W` `[Eq, Ec]`.
  """
  kind: str = "bilinear"
  kernel_init: Callable = bilinear_normal

  @nn.compact
  def __call__(self, queries: Array, candidates: Array) -> Array:
    """Scores of every query against every candidate of the same example.

    Args:
      queries: `[Q, Eq]` (shared by the batch) or `[B, Q, Eq]`.
      candidates: `[B, N, Ec]`.

    Returns:
      `[B, Q, N]` float32 scores.
    """
    queries = queries.astype(jnp.float32)
    candidates = candidates.astype(jnp.float32)
    if self.kind == "bilinear":
      kernel = self.param(
          "kernel", nn.with_logical_partitioning(self.kernel_init, ("prompt_embed", "embed")),
          (queries.shape[-1], candidates.shape[-1]), jnp.float32)
      # Project the (few) queries, not the candidates.
      queries = jnp.einsum("...qe,ef->...qf", queries, kernel)
    elif self.kind != "dot":
      raise ValueError(f"unknown critic {self.kind!r}; choose one of {CRITICS}")
    elif queries.shape[-1] != candidates.shape[-1]:
      raise ValueError(f"critic='dot' needs equal widths, got queries {queries.shape} and "
                       f"candidates {candidates.shape}")
    if queries.ndim == 2:
      return jnp.einsum("qf,bnf->bqn", queries, candidates)
    return jnp.einsum("bqf,bnf->bqn", queries, candidates)


class GaussianHead(nn.Module):
  """The variational Gaussian `N(f_μ(x), diag(f_σ(x)²))` of Eq. 9, for x = Z or Z'.

  Both sides of the representation term go through it: the positive is a
  sample at Z (with the prompt), the negatives are samples at Z' (without).
  `f_μ` and `f_σ` are affine maps; `f_σ` ends in a softplus, so the scale is
  positive. By default `f_μ` starts as the identity (samples centred on the
  representation) and `f_σ` as a LeCun-normal map (scale proportional to the
  input's magnitude); the paper does not specify either.
  """
  mean_init: Callable = partial_identity
  scale_init: Callable = nn.initializers.lecun_normal()

  def _affine(self, name: str, kernel_init: Callable, features: int) -> nn.Dense:
    return nn.Dense(features, name=name,
                    kernel_init=nn.with_logical_partitioning(kernel_init, ("embed", INFO_AXIS)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (INFO_AXIS,)))

  @nn.compact
  def __call__(self, x: Array) -> Tuple[Array, Array]:
    """`[B, E]` representations -> (mean `[B, E]`, scale `[B, E]` > 0), float32."""
    x = x.astype(jnp.float32)
    width = x.shape[-1]
    mean = self._affine("mean", self.mean_init, width)(x)
    scale = jax.nn.softplus(self._affine("scale", self.scale_init, width)(x))
    return mean, scale

  def sample(self, x: Array, noise: Array) -> Array:
    """Reparameterized samples `f_μ(x) + f_σ(x) ⊙ ε`: x `[B, E]`, ε `[B, N, E]` -> `[B, N, E]`."""
    mean, scale = self(x)
    return mean[:, None, :] + scale[:, None, :] * noise.astype(jnp.float32)


class InfoPromptHeads(nn.Module):
  """W1, W2, f_μ and f_σ of InfoPrompt, and the two per-example MI estimates.

  `__call__(features)` only creates the parameters (the model calls it once
  during `init`); the estimates come from `head_mi` and `representation_mi`,
  e.g. through `loss.mutual_information`.

  Attributes:
    critic: `bilinear` (paper: `Pᵀ W θ`, `Pᵀ W Z`) or `dot` (released code).
    prompt_pooling: how the prompt becomes query vectors (`mean`, `per_token`;
      see `representations.prompt_queries`).
    z_source: where `__call__` takes Z from (`decoder_first`, `encoder_mean`).
  """
  critic: str = "bilinear"
  prompt_pooling: str = "mean"
  z_source: str = "decoder_first"

  def setup(self):
    for field, value, choices in (("critic", self.critic, CRITICS),
                                  ("prompt_pooling", self.prompt_pooling, PROMPT_POOLINGS),
                                  ("z_source", self.z_source, Z_SOURCES)):
      if value not in choices:
        raise UserError(f"InfoPromptHeads.{field}={value!r} is unknown; choose one of {choices}")
    self.head_critic = Critic(self.critic)
    self.representation_critic = Critic(self.critic)
    self.gaussian = GaussianHead()

  def __call__(self, features: Dict[str, Array]) -> None:
    """Creates every parameter from the model's features (shapes only matter).

    Args:
      features: `prompt` `[P, E]` (or `[B, P, E]`), `decoder_hidden`
        `[B, Lt, E]`, `encoded` `[B, L', E]`, `encoder_valid` `[B, L']`,
        `input_embeddings` `[B, L, E]`, `input_valid` `[B, L]`.
    """
    queries = prompt_queries(features["prompt"], self.prompt_pooling)
    z = select_representation(self.z_source, features.get("decoder_hidden"),
                              features.get("encoded"), features.get("encoder_valid"))
    self.head_critic(queries, features["input_embeddings"][:, :1])
    self.representation_critic(queries, z[:, None, :])
    self.gaussian(z)  # Z' has Z's shape

  def head_mi(self, prompt: Array, theta: Array, context: Array, context_mask: Array) -> Array:
    """InfoNCE estimate of `I(P; θ | X)` per example (Eqs. 3–5).

    Args:
      prompt: `[P, E]` or `[B, P, E]`.
      theta: `[B, E]` θ, the positive of each example (the same row for every
        example when θ is label-free).
      context: `[B, N, E]` negatives: token embeddings of the example's input.
      context_mask: `[B, N]` bool, valid negatives.

    Returns:
      `[B]` float32, each <= `log(1 + valid negatives)`.
    """
    queries = prompt_queries(prompt, self.prompt_pooling)
    positive = self.head_critic(queries, theta[:, None, :])[..., 0]  # [B, Q]
    negative = self.head_critic(queries, context)  # [B, Q, N]
    return jnp.mean(info_nce(positive, negative, context_mask[:, None, :]), axis=-1)

  def representation_mi(self, prompt: Array, z: Array, z_prime: Array, noise: Array) -> Array:
    """InfoNCE estimate of `I(P; Z | X)` per example (Eq. 9).

    The positive is a sample of `N(f_μ(Z), f_σ(Z))`, the `K − 1` negatives are
    samples of `N(f_μ(Z'), f_σ(Z'))`. Scoring the raw Z against sampled
    negatives instead would let the critic and heads win without the prompt
    (a raw vector is easy to tell from a noisy one); here, when the prompt
    changes nothing (Z = Z'), positive and negatives are exchangeable and no
    critic beats 0 in expectation.

    Args:
      prompt: `[P, E]` or `[B, P, E]`.
      z: `[B, E]` representation with the prompt.
      z_prime: `[B, E]` representation without the prompt (no gradient wanted).
      noise: `[B, K, E]` standard normal: `[:, 0]` draws the positive, `[:, 1:]`
        the negatives.

    Returns:
      `[B]` float32, each <= `log K`.
    """
    queries = prompt_queries(prompt, self.prompt_pooling)
    positive = self.representation_critic(queries, self.gaussian.sample(z, noise[:, :1]))
    negative = self.representation_critic(queries, self.gaussian.sample(z_prime, noise[:, 1:]))
    return jnp.mean(info_nce(positive[..., 0], negative), axis=-1)


@gin.configurable
class PromptGenerator(nn.Module):
  """§4.2's prompt generator: `p_i = W_up_i · W_down_i · P'` for each prompt token i.

  `P'` is the pooled prompt-free representation of the example (e.g.
  `representations.masked_mean` of the prompt-free encoder outputs); each
  token has its own low-rank linear map (no bias, no activation, as in the
  paper). Parameters, stacked over tokens so all tokens are one einsum::

    down  [P, E, r]   (prompt, prompt_embed, prompt_mlp)   W_down_i, transposed
    up    [P, r, E]   (prompt, prompt_mlp, prompt_embed)   W_up_i, transposed

  Attributes:
    length: number of prompt tokens P.
    rank: inner size r of each token's map (paper: 64).
  """
  length: int = gin.REQUIRED
  rank: int = 64
  # LeCun normal per token: the P axis is a batch axis for fan-in.
  kernel_init: Callable = nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", batch_axis=(0,))

  @nn.compact
  def __call__(self, pooled: Array) -> Array:
    """`[B, E]` pooled representation -> `[B, P, E]` float32 prompts."""
    if self.length < 1 or self.rank < 1:
      raise UserError(f"PromptGenerator needs length >= 1 and rank >= 1, got length={self.length} "
                      f"rank={self.rank}")
    pooled = pooled.astype(jnp.float32)
    width = pooled.shape[-1]
    down = self.param(
        "down", nn.with_logical_partitioning(self.kernel_init,
                                             ("prompt", "prompt_embed", RANK_AXIS)),
        (self.length, width, self.rank), jnp.float32)
    up = self.param(
        "up", nn.with_logical_partitioning(self.kernel_init, ("prompt", RANK_AXIS, "prompt_embed")),
        (self.length, self.rank, width), jnp.float32)
    hidden = jnp.einsum("be,per->bpr", pooled, down)
    return jnp.einsum("bpr,pre->bpe", hidden, up)
