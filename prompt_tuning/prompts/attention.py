"""Which encoder positions may attend to which, between the prompt and the input.

The reference's visibility options, named as there: `input->input`,
`input->prompt`, `prompt->input`, `prompt->prompt` and `prompt->prompt;causal`
(a prompt token sees itself and the prompt tokens before it). All four
non-causal kinds together are the plain encoder's full visibility, the
default. Every token always sees itself, so no row of the mask is empty (a
prompt that may see nothing attends to itself only, as in the reference).
Padding is never visible (as a key). Only a prefix prompt (positions `[0, P)`) is supported.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from prompt_tuning.errors import UserError

Array = jax.Array
INPUT_INPUT = "input->input"
INPUT_PROMPT = "input->prompt"
PROMPT_INPUT = "prompt->input"
PROMPT_PROMPT = "prompt->prompt"
PROMPT_PROMPT_CAUSAL = "prompt->prompt;causal"
KINDS = (INPUT_INPUT, INPUT_PROMPT, PROMPT_INPUT, PROMPT_PROMPT, PROMPT_PROMPT_CAUSAL)
FULL = (INPUT_INPUT, INPUT_PROMPT, PROMPT_INPUT, PROMPT_PROMPT)


def check_visibility(visibility: Sequence[str], placement: str = "prefix") -> None:
  """One-line `UserError` for unknown or contradictory kinds, or a non-prefix prompt."""
  if isinstance(visibility, str):
    raise UserError(f"Prompt.attention must be a list of kinds, got the string {visibility!r}; "
                    f"write e.g. ['{INPUT_INPUT}', '{INPUT_PROMPT}']")
  unknown = [v for v in visibility if v not in KINDS]
  if unknown:
    raise UserError(f"Prompt.attention has unknown kinds {unknown}; choose from {list(KINDS)}")
  if PROMPT_PROMPT in visibility and PROMPT_PROMPT_CAUSAL in visibility:
    raise UserError(f"Prompt.attention lists both {PROMPT_PROMPT!r} and {PROMPT_PROMPT_CAUSAL!r}; "
                    "keep one")
  if placement != "prefix":
    raise UserError(f"Prompt.attention needs a prefix prompt, not {placement!r}; set "
                    "Prompt.placement = 'prefix' or drop Prompt.attention")


def prompt_attention_mask(valid: Array, prompt_length: int,
                          visibility: Optional[Sequence[str]] = None) -> Array:
  """The encoder's self-attention mask with a prefix prompt.

  Args:
    valid: `[B, L]` bool, non-padding positions of `[prompt; input]` (prompt first).
    prompt_length: P, the prompt's positions are `[0, P)`.
    visibility: the allowed kinds (`KINDS`); None: `FULL`.

  Returns:
    `[B, L, L]` bool: `mask[b, q, k]` is whether query q may attend to key k.
  """
  visibility = FULL if visibility is None else tuple(visibility)
  length = valid.shape[1]
  position = jnp.arange(length)
  is_prompt = position < prompt_length
  q_prompt, k_prompt = is_prompt[:, None], is_prompt[None, :]
  allowed = jnp.eye(length, dtype=bool)
  if INPUT_INPUT in visibility:
    allowed |= ~q_prompt & ~k_prompt
  if INPUT_PROMPT in visibility:
    allowed |= ~q_prompt & k_prompt
  if PROMPT_INPUT in visibility:
    allowed |= q_prompt & ~k_prompt
  if PROMPT_PROMPT in visibility:
    allowed |= q_prompt & k_prompt
  if PROMPT_PROMPT_CAUSAL in visibility:
    allowed |= q_prompt & k_prompt & (position[None, :] <= position[:, None])
  # Padded queries keep seeing the valid keys, as without a mask: their outputs are unused.
  return allowed[None] & valid[:, None, :]
