"""XPrompt (Ma et al. 2022): hierarchical structured pruning of a soft prompt.

The prompt the encoder sees is `(α ⊗ β) ⊙ P`: a token mask α `[P]` and a piece
mask β `[P, k]` (each token embedding split into `k` equal pieces of `E / k`
values). Masks live in the non-trainable variable collection `prompt_masks`
and start at one, so stage 1 (plain prompt tuning) is unaffected by them.

Pure pieces, glued together by the `prompt-tuning xprompt` driver:

* `XPromptMask`: the reparameterization holding α and β.
* `make_importance_fn`: `I = E_x |∂L(x)/∂mask|`, one jitted `lax.scan` over
  stacked batches, gradients evaluated at the current masks.
* `prune_tokens` / `prune_pieces`: cumulative ratios (see their docstrings for
  exactly what is counted).
* `search`: iterative token rounds then piece rounds over ratio schedules,
  re-scoring before every round, choosing by a validation metric.
* `rewind`: kept entries reset to their stage-1 values, pruned entries zero.
* `get_masks` / `set_masks`: find and replace α and β inside the collection.

The report (JSON + heatmap) is written by `prompt_tuning.methods.xprompt.report`.
"""
import dataclasses
from typing import Any, Callable, List, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning.errors import UserError

Array = jax.Array
PyTree = Any
MASK_COLLECTION = "prompt_masks"
TOKEN_MASK = "token_mask"
PIECE_MASK = "piece_mask"
DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))  # paper: 10% … 90%


def check_pieces(embed_dim: int, pieces: int) -> None:
  """Raises `UserError` unless `pieces` splits `embed_dim` evenly."""
  if pieces < 1 or embed_dim % pieces:
    divisors = [d for d in range(1, min(embed_dim, 64) + 1) if embed_dim % d == 0]
    raise UserError(f"XPromptMask.pieces={pieces} does not divide the embedding size {embed_dim}; "
                    f"set XPromptMask.pieces to a divisor such as {divisors[-4:]}")


def effective_mask(token_mask: Array, piece_mask: Array, embed_dim: int) -> Array:
  """`[P]` token mask and `[P, k]` piece mask -> `[P, E]` elementwise mask.

  Entry `(i, j)` is `token_mask[i] * piece_mask[i, j // (E / k)]`.
  """
  pieces = piece_mask.shape[-1]
  check_pieces(embed_dim, pieces)
  per_value = jnp.repeat(piece_mask, embed_dim // pieces, axis=-1)
  return token_mask[:, None] * per_value


@gin.configurable
class XPromptMask(nn.Module):
  """`[P, E] -> [P, E]`: `(α ⊗ β) ⊙ P` with α, β in the `prompt_masks` collection.

  Attributes:
    pieces: number k of equal pieces per token embedding (paper: 16); must
      divide the embedding size.
  """
  pieces: int = 16

  @nn.compact
  def __call__(self, prompt: Array, deterministic: bool = True) -> Array:
    del deterministic
    length, embed_dim = prompt.shape
    check_pieces(embed_dim, self.pieces)
    token_mask = self.variable(
        MASK_COLLECTION, TOKEN_MASK,
        nn.with_logical_partitioning(lambda: jnp.ones((length,), jnp.float32), ("prompt",)))
    piece_mask = self.variable(
        MASK_COLLECTION, PIECE_MASK,
        nn.with_logical_partitioning(lambda: jnp.ones((length, self.pieces), jnp.float32),
                                     ("prompt", "prompt_pieces")))
    mask = effective_mask(token_mask.value, piece_mask.value, embed_dim)
    return prompt * mask.astype(prompt.dtype)


# --- Locating the masks inside the collection --------------------------------


def _mask_paths(masks: PyTree) -> Tuple[tuple, tuple]:
  flat = traverse_util.flatten_dict(nn.meta.unbox(masks))
  tokens = [k for k in flat if k[-1] == TOKEN_MASK]
  pieces = [k for k in flat if k[-1] == PIECE_MASK]
  if len(tokens) != 1 or len(pieces) != 1 or tokens[0][:-1] != pieces[0][:-1]:
    raise UserError(f"expected exactly one XPromptMask in the `{MASK_COLLECTION}` collection, found "
                    f"{len(tokens)}; add configs/methods/xprompt.gin to the gin files")
  return tokens[0], pieces[0]


def get_masks(masks: PyTree) -> Tuple[Array, Array]:
  """The `prompt_masks` collection -> (token_mask `[P]`, piece_mask `[P, k]`)."""
  token_path, piece_path = _mask_paths(masks)
  flat = traverse_util.flatten_dict(nn.meta.unbox(masks))
  return flat[token_path], flat[piece_path]


def set_masks(masks: PyTree, token_mask: Array, piece_mask: Array) -> PyTree:
  """A copy of the (unboxed) `prompt_masks` collection holding the given masks."""
  token_path, piece_path = _mask_paths(masks)
  flat = dict(traverse_util.flatten_dict(nn.meta.unbox(masks)))
  old_tokens, old_pieces = flat[token_path], flat[piece_path]
  if tuple(np.shape(token_mask)) != tuple(old_tokens.shape) or \
     tuple(np.shape(piece_mask)) != tuple(old_pieces.shape):
    raise ValueError(f"mask shapes {np.shape(token_mask)}, {np.shape(piece_mask)} do not match "
                     f"the collection's {old_tokens.shape}, {old_pieces.shape}")
  flat[token_path] = jnp.asarray(token_mask, old_tokens.dtype)
  flat[piece_path] = jnp.asarray(piece_mask, old_pieces.dtype)
  return traverse_util.unflatten_dict(flat)


# --- Importance scores --------------------------------------------------------


def make_importance_fn(loss_fn: Callable[[PyTree, PyTree, PyTree], Array],
                       per_example: bool = True) -> Callable[[PyTree, PyTree, PyTree], PyTree]:
  """Builds a jitted `(params, masks, batches) -> scores` for `I = E_x |∂L(x)/∂mask|`.

  Args:
    loss_fn: `(params, masks, batch) -> scalar` mean loss of a batch whose
      leaves have a leading batch axis; `masks` is the `prompt_masks`
      collection, `params` everything else the model needs (passed as an
      argument, not closed over, so the frozen backbone is not baked into the
      compiled program as a constant).
    per_example: `True` averages the absolute gradient of every example
      (the definition; `vmap` of the loss on batches of one, same FLOPs as a
      batched backward pass). `False` averages the absolute gradient of each
      batch's mean loss (cheaper in memory, a coarser estimate).

  Returns:
    `importance(params, masks, batches)`: `batches` has leaves
    `[num_batches, B, ...]`; the result has the structure of `masks` (unboxed)
    and holds the mean absolute gradient, evaluated at `masks`.
  """
  grad_fn = jax.grad(loss_fn, argnums=1)

  def batch_abs_grad(params, masks, batch):
    if not per_example:
      return jax.tree_util.tree_map(jnp.abs, grad_fn(params, masks, batch)), 1.0

    def one(example):
      single = jax.tree_util.tree_map(lambda x: x[None], example)
      return grad_fn(params, masks, single)

    grads = jax.vmap(one)(batch)
    size = jax.tree_util.tree_leaves(batch)[0].shape[0]
    return jax.tree_util.tree_map(lambda g: jnp.sum(jnp.abs(g), axis=0), grads), float(size)

  @jax.jit
  def importance(params, masks, batches):
    masks = nn.meta.unbox(masks)

    def step(carry, batch):
      total, count = carry
      abs_grad, n = batch_abs_grad(params, masks, batch)
      return (jax.tree_util.tree_map(jnp.add, total, abs_grad), count + n), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, masks)
    (total, count), _ = jax.lax.scan(step, (zeros, jnp.float32(0.0)), batches)
    return jax.tree_util.tree_map(lambda t: t / count, total)

  return importance


def importance_scores(loss_fn: Callable, params: PyTree, masks: PyTree, batches: PyTree,
                      per_example: bool = True) -> Tuple[np.ndarray, np.ndarray]:
  """One-shot convenience: (token scores `[P]`, piece scores `[P, k]`) as numpy.

  Prefer `make_importance_fn` when scoring several times (it compiles once).
  """
  scores = make_importance_fn(loss_fn, per_example)(params, masks, batches)
  token, piece = get_masks(scores)
  return np.asarray(token), np.asarray(piece)


# --- Pruning ------------------------------------------------------------------


def _prune_lowest(scores: np.ndarray, keep: np.ndarray, total: int, ratio: float,
                  what: str) -> np.ndarray:
  """Prunes among `keep` so that exactly round(ratio * total) of `total` are pruned."""
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"{what} pruning ratio {ratio} must be in [0, 1]")
  if not np.all(np.isfinite(scores[keep])):
    raise ValueError(f"{what} importance scores are not all finite; check the loss for NaNs")
  target = int(round(ratio * total))
  already = total - int(keep.sum())
  if already > target:
    raise ValueError(f"{already} {what}s are already pruned, more than round({ratio} * {total}) = "
                     f"{target}; pruning ratios must not decrease")
  order = np.argsort(np.where(keep, scores, np.inf), kind="stable")  # lowest kept first
  new_keep = keep.copy()
  new_keep[order[:target - already]] = False
  return new_keep


def prune_tokens(token_scores: Array, token_mask: Array, ratio: float) -> np.ndarray:
  """The token mask `[P]` with exactly `round(ratio * P)` tokens pruned in total.

  Ratios are cumulative over all `P` tokens: tokens already pruned (mask 0)
  count toward the target and stay pruned; the remaining
  `round(ratio * P) - already_pruned` are the lowest-scoring kept tokens (ties
  broken by position). A ratio whose target is below the already-pruned count
  raises `ValueError`.
  """
  keep = np.asarray(token_mask) > 0
  scores = np.asarray(token_scores, np.float64)
  return _prune_lowest(scores, keep, keep.size, ratio, "token").astype(np.float32)


def prune_pieces(piece_scores: Array, piece_mask: Array, token_mask: Array,
                 ratio: float) -> np.ndarray:
  """The piece mask `[P, k]` with `round(ratio * n)` pieces of the kept tokens pruned.

  `n = (kept tokens) * k`; only pieces of kept tokens are counted or pruned
  (rows of pruned tokens are returned unchanged). Already-pruned pieces of kept
  tokens count toward the target, as in `prune_tokens`.
  """
  piece_keep = np.asarray(piece_mask) > 0
  token_keep = np.asarray(token_mask) > 0
  scores = np.asarray(piece_scores, np.float64)
  rows = np.flatnonzero(token_keep)
  inside = piece_keep[rows].reshape(-1)
  kept = _prune_lowest(scores[rows].reshape(-1), inside, inside.size, ratio, "piece")
  out = piece_keep.copy()
  out[rows] = kept.reshape(len(rows), piece_keep.shape[1])
  return out.astype(np.float32)


# --- Iterative search over ratio schedules -------------------------------------


@dataclasses.dataclass
class Candidate:
  """One evaluated sub-prompt.

  `level` is `none` (the unpruned prompt), `token` or `piece`; `ratio` the
  cumulative ratio of that level; `token_scores`/`piece_scores` are the scores
  the round pruned by (`None` for `none`).
  """
  level: str
  ratio: float
  metric: float
  token_mask: np.ndarray
  piece_mask: np.ndarray
  token_scores: Optional[np.ndarray] = None
  piece_scores: Optional[np.ndarray] = None

  @property
  def kept_tokens(self) -> int:
    return int(np.sum(self.token_mask > 0))

  @property
  def kept_values_fraction(self) -> float:
    return float(np.mean((self.token_mask[:, None] > 0) & (self.piece_mask > 0)))


@dataclasses.dataclass
class SearchResult:
  best: Candidate
  best_token: Candidate  # the sub-prompt piece pruning started from
  candidates: List[Candidate]


def _better(a: Candidate, b: Candidate, higher_is_better: bool,
            tolerance: Optional[float] = None) -> bool:
  """Whether `a` (evaluated after `b`, hence smaller) should replace `b`.

  By default only a strict improvement prunes more: on a flat validation metric
  the search would otherwise walk to the smallest sub-prompt on noise. With a
  `tolerance` t >= 0, a smaller sub-prompt within t of `b` replaces it.
  """
  gain = a.metric - b.metric if higher_is_better else b.metric - a.metric
  return gain > 0 if tolerance is None else gain >= -tolerance


def search(score_fn: Callable[[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]],
           evaluate_fn: Callable[[np.ndarray, np.ndarray], float],
           token_mask: np.ndarray, piece_mask: np.ndarray,
           token_ratios: Sequence[float] = DEFAULT_RATIOS,
           piece_ratios: Sequence[float] = DEFAULT_RATIOS,
           higher_is_better: bool = True,
           log: Callable[[str], None] = lambda _: None,
           tolerance: Optional[float] = None) -> SearchResult:
  """Hierarchical iterative pruning: token rounds, pick the best, then piece rounds.

  Every round re-scores at the current masks (`score_fn`), prunes to the next
  cumulative ratio and evaluates on validation data (`evaluate_fn`). The
  unpruned prompt is a candidate too, and a smaller sub-prompt is chosen only
  when it strictly improves the metric (or is within `tolerance` of the best).

  Args:
    score_fn: `(token_mask [P], piece_mask [P, k]) -> (token scores, piece scores)`.
    evaluate_fn: `(token_mask, piece_mask) -> validation metric`.
    token_mask, piece_mask: the starting masks (normally all ones).
    token_ratios, piece_ratios: non-decreasing cumulative ratios.
    higher_is_better: direction of the metric (accuracy: True, loss: False).
    log: receives one line per evaluated candidate.
    tolerance: None (strict improvement) or how much worse a smaller sub-prompt
      may be and still be preferred.
  """
  token_mask = np.asarray(token_mask, np.float32)
  piece_mask = np.asarray(piece_mask, np.float32)
  start = Candidate("none", 0.0, float(evaluate_fn(token_mask, piece_mask)), token_mask, piece_mask)
  log(f"xprompt unpruned: metric {start.metric:.6g}")
  candidates = [start]

  def prune_rounds(level, ratios, token_mask, piece_mask, best):
    """Re-score, prune to each ratio in turn, evaluate; returns the best so far."""
    for ratio in ratios:
      token_scores, piece_scores = score_fn(token_mask, piece_mask)
      if level == "token":
        token_mask = prune_tokens(token_scores, token_mask, ratio)
      else:
        piece_mask = prune_pieces(piece_scores, piece_mask, token_mask, ratio)
      candidate = Candidate(level, float(ratio), float(evaluate_fn(token_mask, piece_mask)),
                            token_mask, piece_mask, np.asarray(token_scores),
                            np.asarray(piece_scores))
      log(f"xprompt {level} ratio {ratio:.2f}: {candidate.kept_tokens} tokens, "
          f"{candidate.kept_values_fraction:.1%} of values kept, metric {candidate.metric:.6g}")
      candidates.append(candidate)
      if _better(candidate, best, higher_is_better, tolerance):
        best = candidate
    return best

  best_token = prune_rounds("token", token_ratios, token_mask, piece_mask, start)
  # Pieces are pruned inside the best token-level sub-prompt.
  best = prune_rounds("piece", piece_ratios, best_token.token_mask, best_token.piece_mask,
                      best_token)
  return SearchResult(best=best, best_token=best_token, candidates=candidates)


# --- Rewinding ----------------------------------------------------------------


def rewind(stage1_prompt: Array, token_mask: Array, piece_mask: Array) -> Array:
  """The raw prompt `[P, E]` for stage 3: stage-1 values where kept, zero where pruned.

  Retraining then starts from the stage-1 values with the masks fixed; masked
  entries get exactly zero gradient, so with a fresh optimizer state they stay
  zero (and the masks zero them in the forward pass regardless).
  """
  stage1_prompt = jnp.asarray(stage1_prompt)
  mask = effective_mask(jnp.asarray(token_mask), jnp.asarray(piece_mask), stage1_prompt.shape[-1])
  return stage1_prompt * mask.astype(stage1_prompt.dtype)


def rewind_params(stage1_params: PyTree, token_mask: Array, piece_mask: Array,
                  prompt_path: str = "prompt/prompt") -> PyTree:
  """A copy of the stage-1 trainable tree with the raw prompt rewound (see `rewind`).

  Other leaves (e.g. a residual MLP) keep their stage-1 values.
  """
  flat = dict(traverse_util.flatten_dict(nn.meta.unbox(stage1_params), sep="/"))
  if prompt_path not in flat:
    raise UserError(f"parameter {prompt_path} not found in the stage-1 parameters "
                    f"(have {sorted(flat)[:5]}...); was stage 1 a prompt-tuning run?")
  flat[prompt_path] = rewind(flat[prompt_path], token_mask, piece_mask)
  return traverse_util.unflatten_dict(flat, sep="/")
