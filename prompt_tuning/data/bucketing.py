"""Length bucketing: each batch padded to the smallest of a few lengths that holds it.

SeqIO's feature converter pads every example to `TASK_FEATURE_LENGTHS`; on
real data (SST-2 sentences of ~20 tokens in a 512-token slot, RTE pairs of
~70) most of each step then computes on padding. With `LengthBuckets`, each
*global* batch is cut to the smallest bucket that holds its longest example,
so the jitted step sees one shape per bucket: it compiles once per bucket
and never otherwise.

    converted examples [L]  --window of W*B-->  sorted by length, split into W batches
        --batch order shuffled (seed, window index)-->  each batch cut to its bucket

* `window=1` keeps the batches of the unbucketed stream (same examples, same
  order) and only cuts their padding: losses equal the fixed-shape ones to
  float tolerance (the loss is a token-weighted sum; padding carries weight 0).
* `window=W>1` also groups examples of similar length: the W*B examples of a
  window are sorted by length and split into W batches, whose order is then
  shuffled with the seed and the window's index. Less padding, different
  batches than the fixed-shape run.

Everything depends only on the global example stream, the seed and the
batch's position, so every host computes the same bucket for each global
batch, and `skip` batches resume exactly (whole windows are skipped in
tf.data, the rest inside the first window).

Buckets count input tokens, prompt excluded: the model prepends the prompt, so
the encoder runs on `P + bucket` positions.
"""
import dataclasses
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

import gin
import numpy as np

from prompt_tuning.errors import UserError

Batch = Dict[str, np.ndarray]

# Which buckets cut which model feature.
INPUT_FEATURES = ("encoder_input_tokens",)
TARGET_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
_EXAMPLE = "--gin.BUCKETS=[64,128,256,512]"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LengthBuckets:
  """Bucket lengths (gin: `configs/runs/length_buckets.gin`).

  Attributes:
    inputs: increasing encoder input lengths (prompt excluded), the last one
      at least `TASK_FEATURE_LENGTHS['inputs']` (`BUCKETS`).
    targets: increasing decoder lengths, or None to keep
      `TASK_FEATURE_LENGTHS['targets']` (`TARGET_BUCKETS`).
    window: batches whose examples are grouped by length (`BUCKET_WINDOW`);
      1 keeps the unbucketed batches and only cuts their padding.
  """
  inputs: Sequence[int] = ()
  targets: Optional[Sequence[int]] = None
  window: int = 1


def _increasing(values, setting: str, length: Optional[int], feature: str) -> Tuple[int, ...]:
  """`values` as a tuple, refused (one line) unless increasing positive ints covering `length`
  (None: any length)."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise UserError(f"{setting} must be a non-empty list of lengths, got {values!r}; set e.g. "
                    f"{_EXAMPLE}")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise UserError(f"{setting}={list(values)!r} holds {v!r}, not a positive integer; set e.g. "
                      f"{_EXAMPLE}")
  values = tuple(int(v) for v in values)
  if any(b <= a for a, b in zip(values, values[1:])):
    raise UserError(f"{setting}={list(values)} is not strictly increasing; sort it, e.g. "
                    f"{sorted(set(values))}")
  if length is None:
    return values
  if values[-1] < length:
    raise UserError(f"{setting}={list(values)} does not cover TASK_FEATURE_LENGTHS[{feature!r}]="
                    f"{length}: examples that long would fit no bucket; add {length} (or lower "
                    "TASK_FEATURE_LENGTHS)")
  covering = next(i for i, v in enumerate(values) if v >= length)
  if covering < len(values) - 1:
    raise UserError(f"{setting}={list(values)}: buckets {list(values[covering + 1:])} are never "
                    f"used (examples are cut to TASK_FEATURE_LENGTHS[{feature!r}]={length}); drop "
                    "them")
  return values


def check_buckets(buckets: Optional[LengthBuckets],
                  task_feature_lengths: Optional[Mapping[str, int]]) -> Optional[LengthBuckets]:
  """`buckets` normalized (tuples), or a one-line UserError naming the binding; None stays None.

  With `task_feature_lengths`, the largest bucket must cover its length and
  no bucket may lie beyond the one that does; without, only the lists'
  form is checked (an example longer than every bucket fails when it comes).
  """
  if buckets is None:
    return None
  if not isinstance(buckets, LengthBuckets):
    raise UserError(f"length buckets must be @LengthBuckets(), got {buckets!r}; include "
                    "runs/length_buckets.gin")
  lengths_of = task_feature_lengths or {}
  inputs = _increasing(buckets.inputs, "BUCKETS (LengthBuckets.inputs)",
                       lengths_of.get("inputs"), "inputs")
  targets = None
  if buckets.targets is not None:
    targets = _increasing(buckets.targets, "TARGET_BUCKETS (LengthBuckets.targets)",
                          lengths_of.get("targets"), "targets")
  window = buckets.window
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise UserError(f"BUCKET_WINDOW (LengthBuckets.window) must be a positive integer, got "
                    f"{window!r}; set e.g. --gin.BUCKET_WINDOW=16 (1: no regrouping)")
  return LengthBuckets(inputs, targets, window)


def lengths(tokens: np.ndarray) -> np.ndarray:
  """`[N, L]` tokens (0 = padding at the end) -> `[N]` int: position of the last real token + 1."""
  real = tokens != 0
  return np.where(real.any(axis=1), tokens.shape[1] - np.argmax(real[:, ::-1], axis=1), 0)


def smallest_bucket(length: int, buckets: Sequence[int], setting: str) -> int:
  """The smallest bucket `>= length`; a UserError when none is (an example longer than all)."""
  for b in buckets:
    if b >= length:
      return b
  raise UserError(f"an example of {length} tokens fits none of {setting}={list(buckets)}; add a "
                  f"bucket of at least {length}")


def _cut(batch: Batch, features: Sequence[str], buckets: Optional[Sequence[int]],
         setting: str) -> Batch:
  present = [k for k in features if k in batch]
  if buckets is None or not present:
    return batch
  longest = max(int(lengths(np.asarray(batch[k])).max(initial=0)) for k in present)
  width = smallest_bucket(max(longest, 1), buckets, setting)
  out = dict(batch)
  for k in present:
    have = batch[k].shape[1]
    if width <= have:
      out[k] = batch[k][:, :width]
    else:  # a task padded shorter than the bucket (e.g. eval lengths below the train ones)
      out[k] = np.pad(batch[k], [(0, 0), (0, width - have)] + [(0, 0)] * (batch[k].ndim - 2))
  return out


def pad_to_buckets(batch: Batch, buckets: LengthBuckets) -> Batch:
  """`{feature: [B, L]}` zero-padded features -> the same cut (or padded) to their buckets.

  Encoder inputs take the smallest of `buckets.inputs` that holds the batch's
  longest input; decoder features (one width for all three) the smallest of
  `buckets.targets`, or keep their length when it is None. Other keys
  (`example_index`, ...) are unchanged.
  """
  batch = _cut(batch, INPUT_FEATURES, buckets.inputs, "BUCKETS")
  return _cut(batch, TARGET_FEATURES, buckets.targets, "TARGET_BUCKETS")


def _sort_key(window: Batch) -> np.ndarray:
  """`[W*B]` order of a window: by input length, then target length (stable, so ties keep
  the stream's order)."""
  n = len(next(iter(window.values())))
  inputs = lengths(window["encoder_input_tokens"])
  targets = (lengths(window["decoder_target_tokens"]) if "decoder_target_tokens" in window
             else np.zeros(n, np.int64))
  return np.lexsort((np.arange(n), targets, inputs))


def window_batches(window: Batch, batch_size: int, seed: int, window_index: int) -> Iterator[Batch]:
  """The W batches of one window `{feature: [W*B, ...]}`: sorted by length, split, shuffled.

  The batch order is a permutation drawn from `(seed, window_index)` only, so
  it is the same on every host and after any resume.
  """
  order = _sort_key(window)
  count = len(order) // batch_size
  groups = order[:count * batch_size].reshape(count, batch_size)
  rng = np.random.default_rng([seed & 0xFFFFFFFF, window_index])
  for g in rng.permutation(count):
    rows = np.sort(groups[g])  # stream order inside the batch
    yield {k: v[rows] for k, v in window.items()}


def bucketed_batches(ds, batch_size: int, buckets: LengthBuckets, seed: Optional[int],
                     skip_batches: int = 0) -> Iterator[Batch]:
  """Batches of `batch_size` examples of a tf.data stream, each cut to its buckets.

  Args:
    ds: unbatched `tf.data.Dataset` of model features `{name: [L]}` zero-padded
      to `TASK_FEATURE_LENGTHS` (the global example stream: every host reads
      the same one).
    batch_size: examples per (global) batch B.
    buckets: checked `LengthBuckets` (`check_buckets`).
    seed: the run's data seed (None: 0); orders batches inside a window.
    skip_batches: batches already consumed (resume); the rest is exactly what
      an uninterrupted iterator would yield next.

  Yields:
    `{name: [B, bucket]}` numpy batches. A partial last window (finite
    streams) is dropped, as `drop_remainder` drops a partial batch.
  """
  w = buckets.window
  skip_windows, skip_in_window = divmod(skip_batches, w)
  ds = ds.batch(w * batch_size, drop_remainder=True)
  if skip_windows:
    ds = ds.skip(skip_windows)
  for index, window in enumerate(ds.prefetch(2).as_numpy_iterator(), start=skip_windows):
    if w == 1:
      parts = iter([window])
    else:
      parts = window_batches(window, batch_size, 0 if seed is None else seed, index)
    for i, batch in enumerate(parts):
      if index == skip_windows and i < skip_in_window:
        continue
      yield pad_to_buckets(batch, buckets)
