"""Per-layer prompts (the reference's extended/train/per_layer): a prompt at every encoder layer.

Layer 0 reads the input prompt (a `Prompt`, prefix placement). Before each
later layer i, the prompt positions `[0, P)` of the hidden states are replaced
by that layer's own `[P, E]` prompt (`replace`, the reference's per-layer
prompt), or that prompt is added to them (`add`, learned deltas). Each layer's
prompt lives at `prompt/layers_<i>`, so the default trainable regex `prompt/.*`
trains them with the input prompt and nothing else.
"""
from typing import Callable, Optional, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from prompt_tuning.errors import UserError
from prompt_tuning.prompts.prompt import PROMPT_AXES

Array = jax.Array
MODES = ("replace", "add")


def replace_prompt(prompt: Array, x: Array) -> Array:
  """`[P, E]`, `[B, L, E]` -> x with positions `[0, P)` replaced by the prompt."""
  p = prompt.shape[0]
  prompt = jnp.broadcast_to(prompt[None].astype(x.dtype), (x.shape[0],) + prompt.shape)
  return jnp.concatenate([prompt, x[:, p:]], axis=1)


def add_prompt(prompt: Array, x: Array) -> Array:
  """`[P, E]`, `[B, L, E]` -> x with the prompt added to positions `[0, P)`."""
  p = prompt.shape[0]
  return jnp.concatenate([x[:, :p] + prompt[None].astype(x.dtype), x[:, p:]], axis=1)


@gin.configurable
class PerLayerPrompt(nn.Module):
  """The input prompt plus one prompt per later encoder layer.

  Attributes:
    prompt: the input prompt, a `Prompt` with `placement='prefix'`.
    mode: `replace` or `add` (see the module docstring).
    initializer: `(rng, [P, E], embedding_table) -> [P, E]` of each layer's
      prompt; default: zeros for `add` (the model starts as the plain prompt
      model), the input prompt's initializer for `replace`.
  """
  prompt: nn.Module = gin.REQUIRED
  mode: str = "replace"
  initializer: Optional[Callable] = None

  @property
  def length(self) -> int:
    return self.prompt.length

  @property
  def placement(self) -> str:
    return self.prompt.placement

  def _check(self) -> None:
    if self.mode not in MODES:
      raise UserError(f"PerLayerPrompt.mode {self.mode!r} is unknown; choose one of {MODES}")
    if not hasattr(self.prompt, "value") or self.prompt.placement != "prefix":
      raise UserError("PerLayerPrompt.prompt must be a prefix Prompt (Prompt.placement = "
                      "'prefix'; multi-task prompts and ensembles are not supported)")

  def value(self, embedding_table: Array, deterministic: bool = True) -> Array:
    """The input prompt, `[P, E]`."""
    return self.prompt.value(embedding_table, deterministic)

  def attention_mask(self, valid: Array) -> Optional[Array]:
    return self.prompt.attention_mask(valid)

  def __call__(self, tokens: Array, embedded: Array, embedding_table: Array,
               deterministic: bool = True) -> Tuple[Array, Array]:
    self._check()
    return self.prompt(tokens, embedded, embedding_table, deterministic)

  @nn.compact
  def layer(self, index: int, x: Array, embedding_table: Array) -> Array:
    """Layer `index`'s prompt applied to its `[B, L, E]` input (prompt at `[0, P)`)."""
    self._check()
    shape = (self.length, x.shape[-1])
    default = ((lambda rng, shape, table: jnp.zeros(shape, jnp.float32)) if self.mode == "add"
               else self.prompt.initializer)
    init = self.initializer or default
    prompt = self.param(f"layers_{index}", nn.with_logical_partitioning(
        lambda rng, shape: init(rng, shape, embedding_table), PROMPT_AXES), shape)
    return (add_prompt if self.mode == "add" else replace_prompt)(prompt, x)
