"""InfoPrompt's input-generated prompt (§4.2) as the model's prompt module.

The paper does not learn one prompt for all inputs: it generates each
example's prompt from the pre-trained model's representation of the input,

    P′ = Φ(X),   p_i = W_up_i · W_down_i · P′     (one low-rank map per token).

`GeneratedPrompt` plugs into `T5(prompt=...)` like `prompts.prompt.Prompt`
(same call, same placement), but its prompt is `[B, P, E]`, one per example.
Its parameters are the generator's, under `prompt/generator/{down,up}`; there is
no fixed `[P, E]` prompt to export, so a run exports them instead
(`MODEL_DIR/exports/step_N/`, read back with `runs/deltas_eval.gin`).

Φ(X) (`source`):
* `encoder` (default, the paper's reading): the mean over valid positions of
  the frozen model's encoder output for the bare input (no prompt), under
  `stop_gradient`, dropout off. It costs one more encoder pass per forward.
* `embeddings`: the mean of the bare input's token embeddings (no extra pass).
"""
from typing import Optional, Tuple

import flax.linen as nn
import gin
import jax

from prompt_tuning.errors import UserError
from prompt_tuning.methods.infoprompt.modules import PromptGenerator
from prompt_tuning.methods.infoprompt.representations import masked_mean
from prompt_tuning.prompts.prompt import PLACEMENTS, PROMPT_AXES, place_prompt

Array = jax.Array
SOURCES = ("encoder", "embeddings")
# Bindings of the fixed prompt that would silently do nothing with a generated one.
_FIXED_PROMPT_BINDINGS = ("Prompt.reparameterizations", "Prompt.initializer")
_DEFAULT_INITIALIZER = "uniform"  # prompts/prompt.gin's, the reference code's default


@gin.configurable
class GeneratedPrompt(nn.Module):
  """A prompt generated from each input, `[B, P, E]`, placed like `Prompt`'s.

  Attributes:
    length: number of prompt tokens P.
    rank: inner size of each token's map (paper: 64).
    source: where Φ(X) comes from, `encoder` or `embeddings` (module docstring).
    placement: `prefix` or `suffix`, as for `Prompt`.
  """
  length: int = gin.REQUIRED
  rank: int = 64
  source: str = "encoder"
  placement: str = "prefix"

  @property
  def needs_prompt_free_encoding(self) -> bool:
    """Whether `T5` must pass the bare input's encoder output (`prompt_free`)."""
    return self.source == "encoder"

  def setup(self):
    if self.source not in SOURCES:
      raise UserError(f"GeneratedPrompt.source={self.source!r} is unknown; choose one of {SOURCES}")
    if self.placement not in PLACEMENTS:
      raise UserError(f"GeneratedPrompt.placement={self.placement!r} is unknown; choose one of "
                      f"{PLACEMENTS}")
    self.generator = PromptGenerator(length=self.length, rank=self.rank)

  def generate(self, tokens: Array, embedded: Array,
               prompt_free: Optional[Tuple[Array, Array]] = None) -> Array:
    """Each example's prompt.

    Args:
      tokens: `[B, L]` input tokens (0 = padding).
      embedded: `[B, L, E]` their embeddings.
      prompt_free: (`[B, L, E]` encoder outputs, `[B, L]` valid) of the bare
        input; required for `source='encoder'`.

    Returns:
      `[B, P, E]` float32 prompts.
    """
    if self.source == "encoder":
      if prompt_free is None:
        raise ValueError("GeneratedPrompt(source='encoder') needs the prompt-free encoding")
      encoded, valid = prompt_free
      pooled = masked_mean(jax.lax.stop_gradient(encoded), valid)
    else:
      pooled = masked_mean(jax.lax.stop_gradient(embedded), tokens > 0)
    return self.generator(pooled)

  def __call__(self, tokens: Array, embedded: Array, embedding_table: Array,
               deterministic: bool = True,
               prompt_free: Optional[Tuple[Array, Array]] = None) -> Tuple[Array, Array]:
    """`Prompt`'s call: (`[B, P + L, E]` embeddings, `[B, P + L]` valid)."""
    del embedding_table, deterministic  # the generator has no dropout and reads no vocabulary
    prompt = self.generate(tokens, embedded, prompt_free)
    prompt = nn.with_logical_constraint(prompt, ("batch",) + PROMPT_AXES)
    return place_prompt(prompt, tokens, embedded, tokens > 0, self.placement)


def check_no_fixed_prompt_bindings() -> None:
  """A UserError when gin binds options of the fixed prompt that the generated one would ignore.

  Residual and XPrompt reparameterize a learned `[P, E]` prompt and the
  prompt initializers (incl. `from_file`) fill one; with `GeneratedPrompt`
  they would silently do nothing.
  """
  for name in _FIXED_PROMPT_BINDINGS:
    try:
      value = gin.query_parameter(name)
    except ValueError:
      continue
    chosen = getattr(getattr(value, "configurable", None), "name", "")
    if name == "Prompt.initializer" and chosen.endswith(_DEFAULT_INITIALIZER):
      continue  # the *_prompt.gin model files' default (prompts/prompt.gin): makes nothing here
    raise UserError(f"{name} is bound ({value}) but the prompt is input-generated "
                    "(prompts/generated.gin), which has no fixed [P, E] prompt to reparameterize "
                    "or initialize; drop the residual/xprompt method file or the prompt file "
                    "(load a generated prompt's run with runs/deltas_eval.gin and DELTAS_FILE)")


@gin.configurable
def generated_prompt(length: int = gin.REQUIRED, rank: int = 64, source: str = "encoder",
                     placement: str = "prefix") -> GeneratedPrompt:
  """The gin entry point (`build_model.prompt = @generated_prompt()`): checks, then the module."""
  check_no_fixed_prompt_bindings()
  return GeneratedPrompt(length=length, rank=rank, source=source, placement=placement)
