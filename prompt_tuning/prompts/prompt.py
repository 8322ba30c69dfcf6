"""The soft prompt: `[PROMPT_LENGTH, d_model]` parameters placed into the encoder input.

A `Prompt` owns the raw parameter `prompt/prompt` and a chain of named
`reparameterizations`, modules mapping `[P, E] -> [P, E]` (Residual Prompt
Tuning's MLP under `prompt/residual/`, XPrompt's masks under
`prompt_masks/prompt/xprompt/`). What the encoder sees is the end of that
chain; `encoder_prompt` computes it, which is also what gets exported as `.npy`.
"""
import functools
from typing import Callable, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.attention import check_visibility, prompt_attention_mask

Array = jax.Array
# Logical axes of the prompt: replicated by default (see the partitioning rules).
PROMPT_AXES = ("prompt", "prompt_embed")
PLACEMENTS = ("prefix", "suffix")
# The order in which reparameterizations apply, by slot name.
REPARAMETERIZATION_SLOTS = ("residual", "xprompt")
Reparameterizations = Tuple[Tuple[str, Callable[..., nn.Module]], ...]


@gin.configurable
def prompt_reparameterizations(residual: Optional[Callable[..., nn.Module]] = None,
                               xprompt: Optional[Callable[..., nn.Module]] = None
                               ) -> Reparameterizations:
  """The reparameterization chain of `Prompt`, one gin-bindable slot per method.

  Each method's gin file binds its own slot (e.g. `prompt_reparameterizations.residual =
  @ResidualReparameterization`, a module class or factory, not an instance), so
  stacking method files combines them instead of the last one winning. The
  chain applies in `REPARAMETERIZATION_SLOTS` order: the residual MLP first,
  then XPrompt's masks on what the MLP made.

  Returns:
    `(name, factory)` pairs; the module made by `factory(name=name)` owns the
    parameters under `prompt/<name>/`. A gin-configurable class is returned
    with its bindings of this moment applied, so the model does not depend on
    the gin config still being in place when Flax builds the module.
  """
  slots = {"residual": residual, "xprompt": xprompt}
  return tuple((name, _with_current_bindings(slots[name])) for name in REPARAMETERIZATION_SLOTS
               if slots[name] is not None)


def _with_current_bindings(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
  try:
    bindings = gin.get_bindings(factory)
  except ValueError:  # not a gin configurable: a plain class or functools.partial
    return factory
  return functools.partial(factory, **bindings) if bindings else factory


def place_prompt(prompt: Array, tokens: Array, embedded: Array, valid: Array,
                 placement: str = "prefix") -> Tuple[Array, Array]:
  """Inserts the prompt into each embedded input.

  Args:
    prompt: `[P, E]` prompt embeddings (shared by the batch) or `[B, P, E]`.
    tokens: `[B, L]` input tokens (0 = padding); only used for `suffix`.
    embedded: `[B, L, E]` embedded inputs.
    valid: `[B, L]` bool, the non-padding positions.
    placement: `prefix` puts the prompt before the input; `suffix` puts it
      after the input's last real token but before that token if it is EOS,
      i.e. `[x_1 .. x_n-1, P, EOS, pad ...]`.

  Returns:
    (`[B, P + L, E]` embeddings, `[B, P + L]` valid mask).
  """
  batch, length = tokens.shape
  if prompt.ndim == 2:
    prompt = jnp.broadcast_to(prompt[None], (batch,) + prompt.shape)
  prompt = prompt.astype(embedded.dtype)
  p = prompt.shape[1]
  if placement == "prefix":
    return (jnp.concatenate([prompt, embedded], axis=1),
            jnp.concatenate([jnp.ones((batch, p), bool), valid], axis=1))
  if placement != "suffix":
    raise ValueError(f"unknown prompt placement {placement!r}; choose one of {PLACEMENTS}")
  # Output position j draws from `source = [embedded; prompt]` (length L + P).
  n = jnp.sum(valid, axis=1, keepdims=True)  # [B, 1] tokens incl. EOS
  j = jnp.arange(length + p)[None, :]
  eos_at = jnp.maximum(n - 1, 0)
  index = jnp.where(j < eos_at, j, jnp.where(j < eos_at + p, length + j - eos_at, j - p))
  source = jnp.concatenate([embedded, prompt], axis=1)
  placed = jnp.take_along_axis(source, index[:, :, None], axis=1)
  return placed, j < n + p


def place_prompt_packed(prompt: Array, embedded: Array, segment_ids: Array,
                        positions: Array) -> Array:
  """Fills every segment's prompt slots of packed rows (`data/packing.py`) with the prompt.

  Args:
    prompt: `[P, E]` prompt embeddings.
    embedded: `[B, L, E]` embedded packed tokens (prompt slots hold token 0's embedding).
    segment_ids: `[B, L]` int, 0 = padding.
    positions: `[B, L]` int, position inside the segment; slot i of a segment's prompt is at i.

  Returns:
    `[B, L, E]`: prompt row i wherever a segment's position is i < P, `embedded` elsewhere.
  """
  p = prompt.shape[0]
  is_prompt = (segment_ids > 0) & (positions < p)
  slots = jnp.take(prompt.astype(embedded.dtype), jnp.clip(positions, 0, p - 1), axis=0)
  return jnp.where(is_prompt[..., None], slots, embedded)


@gin.configurable
class Prompt(nn.Module):
  """A trainable soft prompt.

  Attributes:
    length: number of prompt tokens P.
    initializer: `(rng, [P, E], embedding_table [V, E]) -> [P, E]`; see
      `prompt_tuning.prompts.initializers`.
    placement: `prefix` (Lester et al.) or `suffix` (before EOS).
    reparameterizations: `(name, module factory)` pairs applied in order to the
      raw `[P, E]` prompt (see `prompt_reparameterizations`).
    attention: which encoder positions see which (`prompts.attention.KINDS`,
      e.g. `['input->input', 'input->prompt']`); None: all see all, as without a prompt.
  """
  length: int = gin.REQUIRED
  initializer: Callable = initializers.uniform()
  placement: str = "prefix"
  reparameterizations: Reparameterizations = ()
  attention: Optional[Sequence[str]] = None

  def setup(self):
    if self.placement not in PLACEMENTS:
      raise ValueError(f"unknown prompt placement {self.placement!r}; choose one of {PLACEMENTS}")
    names = [name for name, _ in self.reparameterizations]
    if len(set(names)) != len(names) or "prompt" in names:
      raise ValueError(f"prompt reparameterization names {names} must be distinct and not 'prompt'")

  @nn.compact
  def value(self, embedding_table: Array, deterministic: bool = True) -> Array:
    """The prompt the encoder sees, `[P, E]`."""
    shape = (self.length, embedding_table.shape[-1])
    raw = self.param(
        "prompt",
        nn.with_logical_partitioning(
            lambda rng, shape: self.initializer(rng, shape, embedding_table), PROMPT_AXES),
        shape)
    value = raw
    for name, make in self.reparameterizations:
      value = make(name=name)(value, deterministic=deterministic)
    return value

  def attention_mask(self, valid: Array, prompt_length: Optional[int] = None) -> Optional[Array]:
    """`[B, L', L']` bool encoder self-attention mask for `[B, L']` valid positions of the
    prompted input, or None (full visibility) without `attention`."""
    if self.attention is None:
      return None
    check_visibility(self.attention, self.placement)
    return prompt_attention_mask(valid, prompt_length or self.length, self.attention)

  def __call__(self, tokens: Array, embedded: Array, embedding_table: Array,
               deterministic: bool = True) -> Tuple[Array, Array]:
    prompt = self.value(embedding_table, deterministic)
    prompt = nn.with_logical_constraint(prompt, PROMPT_AXES)
    return place_prompt(prompt, tokens, embedded, tokens > 0, self.placement)

  def packed(self, tokens: Array, embedded: Array, embedding_table: Array, segment_ids: Array,
             positions: Array, deterministic: bool = True) -> Array:
    """`[B, L, E]` embedded packed rows with every segment's prompt slots filled
    (`place_prompt_packed`); the prompt is computed once, as for an unpacked batch, so
    its dropout mask is shared by the segments as it is by a batch's rows."""
    del tokens  # the slots are found by segment and position
    if self.placement != "prefix":
      raise ValueError(f"packed rows need a prefix prompt, not {self.placement!r}")
    prompt = nn.with_logical_constraint(self.value(embedding_table, deterministic), PROMPT_AXES)
    return place_prompt_packed(prompt, embedded, segment_ids, positions)


def encoder_prompt(model: nn.Module, variables) -> Array:
  """What `model`'s encoder sees as the prompt, `[P, E]`: every reparameterization
  applied deterministically (residual MLP folded, masks applied). This is what
  gets exported as `.npy` and what `initializers.from_file` loads. A multi-task
  prompt (`prompts.multitask`) gives `[T, P, E]`, task t's combined prompt at t.

  Args:
    model: a `T5` built with a prompt module.
    variables: its variables (`params` plus e.g. `prompt_masks`).
  """
  def value(module):
    if hasattr(module.prompt, "task_prompts"):
      return module.prompt.task_prompts(module.token_embedder.embedding, deterministic=True)
    return module.prompt.value(module.token_embedder.embedding, deterministic=True)
  return model.apply(variables, method=value)

