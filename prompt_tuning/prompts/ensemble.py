"""Prompt ensembling (Lester et al. 2021, section 6): N prompts, one batched pass.

The evaluation functions repeat every example N times (rows `b * N + n`);
row `b * N + n` gets prompt n. Predictions are combined by majority vote,
scores by their mean (`combine_predictions`, `combine_scores`).
"""
import collections
from typing import List, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.errors import UserError
from prompt_tuning.io.npy import load_array
from prompt_tuning.prompts.prompt import PLACEMENTS, PROMPT_AXES, place_prompt


def load_prompt_files(paths: Sequence[str]) -> np.ndarray:
  """Stacks saved prompts (`.npy` or PEFT adapters) into `[N, P, E]`, checking their shapes."""
  if not paths:
    raise UserError("PROMPT_FILES is empty; list the .npy prompts to ensemble")
  from prompt_tuning.prompts.files import read_prompt
  arrays = [read_prompt(path, "PROMPT_FILES entry") for path in paths]
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1:
    raise UserError(f"ensembled prompts differ in shape: {sorted(shapes)}; use prompts of one length")
  return np.stack(arrays).astype(np.float32)


@gin.configurable
class PromptEnsemble(nn.Module):
  """N fixed prompts; example row i uses prompt `i % N`."""
  prompt_files: Sequence[str] = gin.REQUIRED
  placement: str = "prefix"

  @property
  def ensemble_size(self) -> int:
    return len(self.prompt_files)

  @property
  def length(self) -> int:
    return int(load_prompt_files(self.prompt_files[:1]).shape[1])

  @nn.compact
  def value(self, embedding_table, deterministic: bool = True):
    """`[N, P, E]`."""
    stacked = load_prompt_files(self.prompt_files)
    if stacked.shape[-1] != embedding_table.shape[-1]:
      raise UserError(f"prompts have width {stacked.shape[-1]} but the model's d_model is "
                      f"{embedding_table.shape[-1]}; use prompts tuned on this backbone")
    return self.param("prompts", nn.with_logical_partitioning(
        lambda rng, shape: jnp.asarray(stacked), (None,) + PROMPT_AXES), stacked.shape)

  def __call__(self, tokens, embedded, embedding_table, deterministic: bool = True):
    if self.placement not in PLACEMENTS:
      raise ValueError(f"unknown prompt placement {self.placement!r}")
    prompts = self.value(embedding_table)
    per_row = prompts[jnp.arange(tokens.shape[0]) % prompts.shape[0]]
    return place_prompt(per_row, tokens, embedded, tokens > 0, self.placement)


def combine_predictions(tokens: np.ndarray, n: int) -> List[List[int]]:
  """`[B * n, T]` decoded rows -> B majority-vote sequences (ties: lowest prompt index)."""
  out = []
  for group in tokens.reshape((-1, n) + tokens.shape[1:]):
    votes = collections.Counter(tuple(row.tolist()) for row in group)
    best = max(votes.values())
    out.append(next(list(row) for row in map(tuple, group.tolist()) if votes[row] == best))
  return out


def combine_scores(scores: np.ndarray, n: int) -> np.ndarray:
  """`[B * n, ...]` -> `[B, ...]` mean score per example (over its n prompts)."""
  return scores.reshape((-1, n) + scores.shape[1:]).mean(axis=1)
