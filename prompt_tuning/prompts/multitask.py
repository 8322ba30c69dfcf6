"""Multi-task prompts: one shared prompt combined with a prompt per task, picked per example.

The task of each example travels with its input tokens, as in the reference
code: the first input token is a *task token*, and task `t`'s token is
`task_token_base - t` (the reference's `<extra_id_t>` when `task_token_base`
is the id of `<extra_id_0>`, 32099 for the T5 vocabulary). By default the base
is the embedding table's last row, one of the rows the tokenizer never
produces (T5 pads 32100 ids to 32128), so the data path can add the tokens
without clashing with text (`prompt_tuning.data.task_tokens`). The module drops
that first token and places the example's task prompt where `Prompt` would.
Carrying the task in the tokens means every model entry (train step, scoring,
decoding, infer) needs no extra input.

Combination modes (`[P_s, E_s]` shared prompt, T tasks, output `[T, P, E]`):
  add              P_s = P, E_s = E; task prompts `[T, P, E]` added to the shared one.
  concat           shared then task prompt along the length: P = P_s + task_length.
  concat_features  shared features then task features: E = E_s + E_t, P = P_s.
  project          task t maps the shared prompt with its own affine map:
                   `shared @ kernel[t] + bias[t]`, kernel `[T, E_s, E]`, bias `[T, E]`.

The shared prompt is a `Prompt` (gin: `MultiTaskPrompt.shared = @Prompt()`), so
its initializer, length, placement and reparameterization chain (Residual
Prompt Tuning's MLP) are the single-task ones; XPrompt's masks are refused.
"""
from typing import Callable, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import seqio

from prompt_tuning.errors import UserError

Array = jax.Array
MODES = ("add", "concat", "concat_features", "project")
TASKS_AXES = (None, "prompt", "prompt_embed")


def combine_add(shared: Array, tasks: Array) -> Array:
  """`[P, E]` + `[T, P, E]` -> `[T, P, E]`."""
  return shared[None] + tasks


def combine_concat(shared: Array, tasks: Array) -> Array:
  """`[P_s, E]`, `[T, P_t, E]` -> `[T, P_s + P_t, E]` (shared first)."""
  shared = jnp.broadcast_to(shared[None], (tasks.shape[0],) + shared.shape)
  return jnp.concatenate([shared, tasks], axis=1)


def combine_concat_features(shared: Array, tasks: Array) -> Array:
  """`[P, E_s]`, `[T, P, E_t]` -> `[T, P, E_s + E_t]` (shared features first)."""
  shared = jnp.broadcast_to(shared[None], (tasks.shape[0],) + shared.shape)
  return jnp.concatenate([shared, tasks], axis=2)


def combine_project(shared: Array, kernel: Array, bias: Array) -> Array:
  """`[P, E_s]`, kernel `[T, E_s, E]`, bias `[T, E]` -> `[T, P, E]`."""
  return jnp.einsum("pi,tio->tpo", shared, kernel) + bias[:, None, :]


@gin.configurable
def subtask_names(tasks: Optional[Sequence[str]] = None,
                  mixture_or_task_name: str = gin.REQUIRED) -> Sequence[str]:
  """`tasks` (`MULTITASK_TASKS`) if set, else the task names of a SeqIO mixture (or the one
  task) in the mixture's order: task index t is position t here. Bound as
  `MultiTaskPrompt.tasks` by `configs/prompts/multitask.gin`."""
  if tasks is not None:
    return tuple(tasks)
  try:
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
  except ValueError:
    raise UserError(f"MULTITASK_TASKS: no task or mixture named {mixture_or_task_name!r} is "
                    "registered; list the task names or set MIXTURE_OR_TASK_MODULE") from None
  return tuple(task.name for task in seqio.get_subtasks(provider))


@gin.configurable
class MultiTaskPrompt(nn.Module):
  """A shared prompt and one prompt per task; each example gets its task's combination.

  Attributes:
    shared: the shared prompt, a `Prompt` (its `value` gives `[P_s, E_s]`).
    tasks: the task names; task t's token is `task_token_base - t`.
    mode: one of `MODES` (see the module docstring).
    task_length: `concat` only: P_t (default: the shared prompt's length).
    shared_features: `concat_features` (required) and `project` (default E): E_s.
    task_initializer: `(rng, shape, embedding_table) -> array` for each task's
      prompt; default: zeros for `add` (every task starts at the shared prompt),
      the shared prompt's initializer for the concats, and for `project` the
      identity map (when E_s = E) with zero bias.
    task_token_base: the token id of task 0; default the embedding table's last row.
  """
  shared: nn.Module = gin.REQUIRED
  tasks: Sequence[str] = gin.REQUIRED
  mode: str = "add"
  task_length: Optional[int] = None
  shared_features: Optional[int] = None
  task_initializer: Optional[Callable] = None
  task_token_base: Optional[int] = None

  @property
  def length(self) -> int:
    """P, the combined prompt's length."""
    if self.mode == "concat":
      return self.shared.length + (self.task_length or self.shared.length)
    return self.shared.length

  @property
  def placement(self) -> str:
    return self.shared.placement

  def check(self, vocab_rows: int, emb_dim: int) -> None:
    """One-line `UserError`s for settings that cannot work."""
    if self.mode not in MODES:
      raise UserError(f"MultiTaskPrompt.mode {self.mode!r} is unknown; choose one of {MODES}")
    if not self.tasks or isinstance(self.tasks, str):
      raise UserError("MultiTaskPrompt.tasks must list the task names (default: the subtasks of "
                      "MIXTURE_OR_TASK_NAME); set MULTITASK_TASKS")
    names = [name for name, _ in getattr(self.shared, "reparameterizations", ())]
    if "xprompt" in names:
      raise UserError("XPrompt's masks do not apply to a multi-task prompt; drop methods/xprompt.gin "
                      "or configs/prompts/multitask.gin")
    if self.task_length is not None and self.mode != "concat":
      raise UserError(f"MultiTaskPrompt.task_length is only read by mode 'concat', not "
                      f"{self.mode!r}; remove the binding")
    if self.mode == "concat_features":
      if self.shared_features is None or not 0 < self.shared_features < emb_dim:
        raise UserError(f"mode 'concat_features' needs 0 < MultiTaskPrompt.shared_features < "
                        f"{emb_dim} (d_model), got {self.shared_features}; bind it, e.g. "
                        f"{emb_dim // 2}")
    elif self.shared_features is not None and self.mode != "project":
      raise UserError(f"MultiTaskPrompt.shared_features is not read by mode {self.mode!r}; "
                      "remove the binding or use 'concat_features' / 'project'")
    base = self.token_base(vocab_rows)
    if not len(self.tasks) - 1 <= base < vocab_rows:
      raise UserError(f"task tokens {base - len(self.tasks) + 1}..{base} (MultiTaskPrompt."
                      f"task_token_base) must lie in the vocabulary [0, {vocab_rows})")

  def token_base(self, vocab_rows: int) -> int:
    return vocab_rows - 1 if self.task_token_base is None else int(self.task_token_base)

  def task_token_ids(self, vocab_rows: int) -> dict:
    """`{task name: its task token}` for a model with `vocab_rows` embedding rows."""
    base = self.token_base(vocab_rows)
    return {name: base - t for t, name in enumerate(self.tasks)}

  def _task_init(self, default: Callable, embedding_table: Array) -> Callable:
    init = self.task_initializer or default
    def per_task(rng, shape):  # shape [T, ...]: one draw per task, each from its own key
      keys = jax.random.split(rng, shape[0])
      return jnp.stack([jnp.asarray(init(k, shape[1:], embedding_table), jnp.float32)
                        for k in keys])
    return per_task

  @nn.compact
  def task_prompts(self, embedding_table: Array, deterministic: bool = True) -> Array:
    """Every task's combined prompt, `[T, P, E]`: what an example of task t sees."""
    vocab_rows, emb_dim = embedding_table.shape
    self.check(vocab_rows, emb_dim)
    n = len(self.tasks)
    zeros = lambda rng, shape, table: jnp.zeros(shape, jnp.float32)
    if self.mode == "concat_features":
      e_s = self.shared_features
      shared = self.shared.value(embedding_table[:, :e_s], deterministic)
      init = self._task_init(self.shared.initializer, embedding_table[:, e_s:])
      tasks = self.param("tasks", nn.with_logical_partitioning(init, TASKS_AXES),
                         (n, self.shared.length, emb_dim - e_s))
      return combine_concat_features(shared, tasks)
    if self.mode == "project":
      e_s = self.shared_features or emb_dim
      shared = self.shared.value(embedding_table[:, :e_s], deterministic)
      identity = (lambda rng, shape, table: jnp.eye(*shape, dtype=jnp.float32)) if e_s == emb_dim \
          else (lambda rng, shape, table: nn.initializers.lecun_normal()(rng, shape))
      kernel = self.param("task_kernel", nn.with_logical_partitioning(
          self._task_init(identity, embedding_table), (None, "prompt_embed", None)),
          (n, e_s, emb_dim))
      bias = self.param("task_bias", nn.with_logical_partitioning(
          self._task_init(zeros, embedding_table), (None, "prompt_embed")), (n, emb_dim))
      return combine_project(shared, kernel, bias)
    shared = self.shared.value(embedding_table, deterministic)
    if self.mode == "add":
      tasks = self.param("tasks", nn.with_logical_partitioning(
          self._task_init(zeros, embedding_table), TASKS_AXES), (n,) + shared.shape)
      return combine_add(shared, tasks)
    length = self.task_length or self.shared.length
    tasks = self.param("tasks", nn.with_logical_partitioning(
        self._task_init(self.shared.initializer, embedding_table), TASKS_AXES),
        (n, length, emb_dim))
    return combine_concat(shared, tasks)

  def attention_mask(self, valid: Array) -> Optional[Array]:
    """The shared prompt's `attention` setting over the combined prompt's positions."""
    return self.shared.attention_mask(valid, self.length)

  def task_index(self, first_tokens: Array, vocab_rows: int) -> Array:
    """`[B]` first input tokens -> `[B]` task indices (out of range for a non-task token)."""
    return self.token_base(vocab_rows) - first_tokens.astype(jnp.int32)

  def __call__(self, tokens: Array, embedded: Array, embedding_table: Array,
               deterministic: bool = True):
    """Drops each input's task token and places its task's prompt.

    Args:
      tokens: `[B, L]`, each row starting with its task token.
      embedded: `[B, L, E]` their embeddings.
      embedding_table: `[V, E]`.

    Returns:
      (`[B, P + L - 1, E]` embeddings, `[B, P + L - 1]` valid mask). A row whose
      first token is no task token gets a NaN prompt (a visible failure, never
      another task's prompt).
    """
    from prompt_tuning.prompts.prompt import place_prompt
    prompts = self.task_prompts(embedding_table, deterministic)
    index = self.task_index(tokens[:, 0], embedding_table.shape[0])
    per_row = jnp.take(prompts, index, axis=0, mode="fill", fill_value=jnp.nan)
    rest = tokens[:, 1:]
    return place_prompt(per_row, rest, embedded[:, 1:], rest > 0, self.placement)
