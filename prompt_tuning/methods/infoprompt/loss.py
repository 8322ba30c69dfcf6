"""InfoPrompt's extra loss (Eq. 11): `L = L_pred − β·I(P; Z | X) − γ·I(P; θ | X)`.

`mutual_information` is the pure, jit-friendly entry point the train step
calls: per-example InfoNCE estimates of both terms from the prompt, the model's
representations and the `info/` parameters. All randomness comes from
`fold_in(key, example_id)` (see `sampling`), so data parallelism and
microbatching reproduce a 1-device run exactly. `extra_loss` turns the
estimates into the per-example loss `−β·mi_representation − γ·mi_head`.
"""
import dataclasses
from typing import Any, Dict, Optional, Sequence

import gin
import jax
import jax.numpy as jnp

from prompt_tuning.errors import UserError
from prompt_tuning.methods.infoprompt.modules import CRITICS, InfoPromptHeads
from prompt_tuning.methods.infoprompt.representations import (LABEL_PIECES, PROMPT_POOLINGS,
                                                              THETAS, Z_SOURCES)
from prompt_tuning.methods.infoprompt.sampling import (example_keys, gaussian_noise,
                                                       sample_context_positions)

Array = jax.Array
CONTEXT_NEGATIVES = ("sampled", "all")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class InfoPromptConfig:
  """InfoPrompt settings (defaults: the paper).

  Attributes:
    beta: weight β of `I(P; Z | X)`, the representation loss (paper: 0.1).
    gamma: weight γ of `I(P; θ | X)`, the head loss (paper: 0.05).
    num_negatives: the paper's K: candidates per InfoNCE estimate, i.e. the
      positive plus `K − 1` negatives (paper: 32). Bounds each estimate by
      `log K`.
    z_source: Z (and Z'): `decoder_first`, the final decoder state at the first
      target position (what the LM head reads), or `encoder_mean`.
    critic: `bilinear` (paper: `Pᵀ W θ`, `Pᵀ W Z`) or `dot` (released code).
    context_negatives: head-loss negatives: `sampled` (paper: `K − 1` of the
      example's input tokens, without replacement, cycled if the input is
      shorter) or `all` (released code: every input token; K varies per
      example and `num_negatives` does not apply).
    prompt_pooling: `mean` (one query, the mean prompt token) or `per_token`
      (an estimate per prompt token, averaged).
    theta: θ, the head term's positive. `class_mean` (paper: no label is read;
      as the released code, the mean of the class vectors): the mean LM-head
      column of `class_labels`, the same for every example. `gold_label`
      (supervised, not the paper's): the example's own label column.
    class_labels: the task's label words (`CLASS_LABELS`), for `class_mean`.
    label_pieces: θ of a multi-token label: `first` token's LM-head column or
      the `mean` of its tokens' columns.
  """
  beta: float = 0.1
  gamma: float = 0.05
  num_negatives: int = 32
  z_source: str = "decoder_first"
  critic: str = "bilinear"
  context_negatives: str = "sampled"
  prompt_pooling: str = "mean"
  theta: str = "class_mean"
  class_labels: Optional[Sequence[str]] = None
  label_pieces: str = "first"

  def __post_init__(self):
    if self.class_labels is not None:  # gin gives a list; the config must stay hashable (jit)
      object.__setattr__(self, "class_labels", tuple(self.class_labels))
    for field, choices in (("z_source", Z_SOURCES), ("critic", CRITICS), ("theta", THETAS),
                           ("context_negatives", CONTEXT_NEGATIVES),
                           ("prompt_pooling", PROMPT_POOLINGS), ("label_pieces", LABEL_PIECES)):
      value = getattr(self, field)
      if value not in choices:
        raise UserError(f"InfoPromptConfig.{field}={value!r} is unknown; choose one of "
                        f"{', '.join(choices)}")
    if self.num_negatives < 2:
      raise UserError(f"InfoPromptConfig.num_negatives={self.num_negatives} must be >= 2 (the "
                      "positive plus at least one negative; paper: 32)")
    for field in ("beta", "gamma"):
      if getattr(self, field) < 0:
        raise UserError(f"InfoPromptConfig.{field}={getattr(self, field)} must be >= 0 (the "
                        "loss maximizes mutual information; paper: beta=0.1, gamma=0.05)")


def is_active(config: Optional[InfoPromptConfig]) -> bool:
  """Whether InfoPrompt adds anything to the loss (False: skip every extra pass)."""
  return config is not None and (config.beta != 0 or config.gamma != 0)


def make_heads(config: InfoPromptConfig) -> InfoPromptHeads:
  """The `InfoPromptHeads` module to attach to the model as `info`."""
  return InfoPromptHeads(critic=config.critic, prompt_pooling=config.prompt_pooling,
                         z_source=config.z_source)


def mutual_information(config: InfoPromptConfig, params: Any, *, prompt: Array,
                       z: Array, z_prime: Optional[Array], input_embeddings: Array,
                       input_valid: Array, theta: Optional[Array], example_ids: Array,
                       key: Array) -> Dict[str, Array]:
  """Per-example InfoNCE estimates of both mutual-information terms, in nats.

  A term whose weight (β or γ) is 0 is neither computed nor returned, so with
  `beta == 0` no prompt-free pass is needed (`z_prime=None`).

  Args:
    config: the settings.
    params: the `info` parameter subtree (`InfoPromptHeads`' parameters).
    prompt: `[P, E]` prompt the encoder saw, or `[B, P, E]` per example.
    z: `[B, E]` representation with the prompt (`representations.select_representation`).
    z_prime: `[B, E]` the same without the prompt; gradients are stopped here too.
    input_embeddings: `[B, L, E]` embedded input tokens (no prompt).
    input_valid: `[B, L]` bool, non-padding input tokens.
    theta: `[B, E]` θ of each example (`representations.theta_vectors`); None when
      `gamma == 0`.
    example_ids: `[B]` int32 GLOBAL example indices (not positions in the batch).
    key: the step's base key, the same on every device and microbatch.

  Returns:
    `{'mi_representation': [B], 'mi_head': [B]}` float32 (terms with zero
    weight absent); each estimate <= `log K` (`log(1 + valid tokens)` for
    `context_negatives='all'`).
  """
  heads = make_heads(config)
  variables = {"params": params}
  keys = example_keys(key, example_ids)
  negatives = config.num_negatives - 1
  out = {}
  if config.beta != 0:
    if z_prime is None:
      raise ValueError("InfoPrompt with beta != 0 needs z_prime, the prompt-free representation")
    noise = gaussian_noise(keys, config.num_negatives, z.shape[-1])  # the positive's, then K - 1
    out["mi_representation"] = heads.apply(variables, prompt, z, jax.lax.stop_gradient(z_prime),
                                           noise, method=InfoPromptHeads.representation_mi)
  if config.gamma != 0:
    if theta is None:
      raise ValueError("InfoPrompt with gamma != 0 needs theta [B, E] (representations.theta_vectors)")
    if config.context_negatives == "sampled":
      positions, mask = sample_context_positions(keys, input_valid, negatives)
      context = jnp.take_along_axis(input_embeddings, positions[..., None], axis=1)
    else:
      context, mask = input_embeddings, input_valid
    out["mi_head"] = heads.apply(variables, prompt, theta, context, mask,
                                 method=InfoPromptHeads.head_mi)
  return out


def extra_loss(estimates: Dict[str, Array], config: InfoPromptConfig) -> Array:
  """`[B]` per-example loss `−β·mi_representation − γ·mi_head` (absent terms count 0).

  To add it to a token-summed cross-entropy (as the train step does), weight
  each example by its number of target tokens before summing, so that after
  the step divides by the total token weight both parts are token-weighted
  means and β, γ keep the paper's meaning relative to per-token L_pred.
  """
  terms = []
  if "mi_representation" in estimates:
    terms.append(-config.beta * estimates["mi_representation"])
  if "mi_head" in estimates:
    terms.append(-config.gamma * estimates["mi_head"])
  if not terms:
    raise ValueError("extra_loss got no estimates; check is_active(config) first")
  return sum(terms[1:], terms[0])
