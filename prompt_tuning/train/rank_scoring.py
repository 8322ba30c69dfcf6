"""Rank classification that encodes each input once.

SeqIO's rank-classification preprocessors expand every example into one row
per candidate target, consecutive in the dataset, all with the same inputs.
Scoring each row with a full model pass (as T5X does) re-encodes the input
once per candidate. Here consecutive rows with identical
`encoder_input_tokens` form a *group*; each group is encoded once and all of
its candidates are scored by one decoder pass over the shared encoder output,
packed side by side along the decoder length (`T5.decode(..., segments=C)`),
so each decoder layer also projects the encoder output to cross-attention
keys and values once per input rather than once per candidate.

Grouping is only a saving, never a change of result: a row scores the same
in any group (to float rounding), so duplicates that merge into one group,
or a group split at a batch boundary, are harmless.
"""
from typing import Dict, Iterable, Iterator, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models import losses

Array = jax.Array
Row = Tuple[int, Dict[str, np.ndarray]]
DECODER_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


def group_rows(rows: Iterable[Row]) -> List[List[Row]]:
  """Maximal runs of consecutive `(index, features)` rows with equal `encoder_input_tokens`."""
  groups: List[List[Row]] = []
  for index, features in rows:
    if groups and np.array_equal(groups[-1][0][1]["encoder_input_tokens"],
                                 features["encoder_input_tokens"]):
      groups[-1].append((index, features))
    else:
      groups.append([(index, features)])
  return groups


def _target_length(groups: List[List[Row]]) -> int:
  """Last weighted target position + 1 over all rows: later positions score 0 and,
  the decoder being causal, change nothing before them, so they are cut."""
  last = 0
  for group in groups:
    for _, features in group:
      weighted = np.flatnonzero(features["decoder_loss_weights"])
      if weighted.size:
        last = max(last, int(weighted[-1]) + 1)
  return max(last, 1)


def candidate_batches(rows: Iterable[Row], inputs_per_batch: int
                      ) -> Iterator[Tuple[List[List[int]], Dict[str, np.ndarray], int]]:
  """Packs rows into fixed-shape batches of `inputs_per_batch` groups.

  Reads all rows first (an evaluation split, which seqio holds in memory
  anyway) so that one shape, hence one compile, serves the whole dataset.

  Yields `(indices, batch, n_real)`: `indices[g]` are the row indices of group
  `g` (its candidates, in order), `batch` holds `encoder_input_tokens`
  `[G, L]` and each decoder feature as `[G, C, T]` (C: the largest group of
  the dataset, T: its longest weighted target), zero-padded in every
  dimension (a zero-weight candidate scores 0 and is dropped by the caller);
  `n_real` groups of the batch are real.
  """
  groups = group_rows(rows)
  if not groups:
    return
  classes = max(len(g) for g in groups)
  length = _target_length(groups)
  for start in range(0, len(groups), inputs_per_batch):
    chunk = groups[start:start + inputs_per_batch]
    first = chunk[0][0][1]
    batch = {"encoder_input_tokens": np.zeros((inputs_per_batch,) + first["encoder_input_tokens"].shape,
                                              first["encoder_input_tokens"].dtype)}
    for key in DECODER_KEYS:
      batch[key] = np.zeros((inputs_per_batch, classes, length), first[key].dtype)
    for g, group in enumerate(chunk):
      batch["encoder_input_tokens"][g] = group[0][1]["encoder_input_tokens"]
      for c, (_, features) in enumerate(group):
        for key in DECODER_KEYS:
          batch[key][g, c] = features[key][:length]
    yield [[index for index, _ in group] for group in chunk], batch, len(chunk)


def packed_scores(model, variables, batch: Dict[str, Array]) -> Array:
  """Log-likelihood of every candidate: `[G, C]`.

  Args:
    model: a `T5`.
    variables: its variables.
    batch: `encoder_input_tokens` `[G, L]`; `decoder_input_tokens`,
      `decoder_target_tokens`, `decoder_loss_weights` `[G, C, T]`.
  """
  groups, classes, length = batch["decoder_target_tokens"].shape
  encoded, valid = model.apply(variables, batch["encoder_input_tokens"], method=model.encode)
  flat = lambda x: x.reshape(groups, classes * length)
  logits = model.apply(variables, encoded, valid, flat(batch["decoder_input_tokens"]),
                       segments=classes, method=model.decode)
  scores = losses.sequence_log_likelihood(
      logits.reshape(groups * classes, length, -1),
      batch["decoder_target_tokens"].reshape(groups * classes, length),
      batch["decoder_loss_weights"].reshape(groups * classes, length))
  return scores.reshape(groups, classes)


def scores_of_rows(indices: List[List[int]], scores: np.ndarray) -> List[Tuple[int, float]]:
  """`(row index, score)` pairs of the real candidates of `scores` `[G, C]`."""
  return [(i, float(scores[g, c])) for g, group in enumerate(indices)
          for c, i in enumerate(group)]
