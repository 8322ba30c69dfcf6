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

`inputs='auto'` (the default; `configs/runs/prompt_finetune.gin` and the
eval/infer run files turn bucketing on) resolves, once `TASK_FEATURE_LENGTHS`
is known, to the `auto_inputs` ladder cut below `L = TASK_FEATURE_LENGTHS['inputs']`, plus
`L`: four per octave (steps of 1.14-1.25x), one compile each. It means fixed shapes (no
bucketing) when that leaves one bucket (`L <= 73`) and on TPU, where one
compiled program is better (docs/performance.md). The list depends only on `L`
and the backend, so every host resolves the same one.
"""
import dataclasses
import functools
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import gin
import jax
import numpy as np

from prompt_tuning.errors import UserError

Batch = Dict[str, np.ndarray]

# Which buckets cut which model feature.
INPUT_FEATURES = ("encoder_input_tokens",)
TARGET_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
_EXAMPLE = "--gin.BUCKETS=[64,128,256,512]"
AUTO = "auto"
# The 'auto' ladder starts here, four buckets per octave (64, 80, 96, 112, 128, 160, ...): on
# BoolQ-like lengths that pads ~9% above each batch's longest example (~19% with the 1.5x ladder
# 64, 96, 128, 192, ...), and trained 10% more examples/s for twice the compiles (13 for 512
# inputs; docs/performance.md, "Length bucketing"); below 64 tokens a bucket saves too little to
# pay its compile.
_AUTO_SMALLEST = 64
FIXED_SHAPES_FILE = "runs/fixed_shapes.gin"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LengthBuckets:
  """Bucket lengths (gin: `configs/runs/length_buckets.gin`).

  Attributes:
    inputs: increasing encoder input lengths (prompt excluded), the last one
      `TASK_FEATURE_LENGTHS['inputs']` (`BUCKETS`); or 'auto': the
      four-per-octave ladder below it (`auto_inputs`), fixed shapes on TPU.
    targets: increasing decoder lengths, or None to keep
      `TASK_FEATURE_LENGTHS['targets']` (`TARGET_BUCKETS`).
    window: batches whose examples are grouped by length (`BUCKET_WINDOW`);
      1 keeps the unbucketed batches and only cuts their padding.
  """
  inputs: Union[str, Sequence[int]] = AUTO
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


def auto_inputs(length: int) -> Tuple[int, ...]:
  """The 'auto' input buckets for `TASK_FEATURE_LENGTHS['inputs'] = length`: four per octave,
  64, 80, 96, 112, 128, 160, 192, 224, 256, 320, ... (`2^k * {1, 1.25, 1.5, 1.75}`, multiples of
  16) up to 7/8 of `length` (one closer would save too little for its compile), then `length`;
  `(length,)` alone when `length <= 73`."""
  ladder, octave = [], _AUTO_SMALLEST
  while True:
    for quarters in range(4, 8):
      bucket = octave * quarters // 4
      if 8 * bucket > 7 * length:
        return tuple(ladder) + (length,)
      ladder.append(bucket)
    octave *= 2


@functools.lru_cache(maxsize=None)
def _announce(line: str) -> None:
  """Prints `line` once per process: the trainer resolves the same setting for training and
  again for its evaluations."""
  print(line, flush=True)


def _resolve_auto(length: Optional[int]) -> Optional[Tuple[int, ...]]:
  """'auto' -> this run's input buckets, or None for fixed shapes (one bucket, or TPU);
  announces the choice."""
  if length is None:
    raise UserError("BUCKETS='auto' (LengthBuckets.inputs) needs TASK_FEATURE_LENGTHS['inputs'] "
                    f"to pick buckets; set an explicit list, e.g. {_EXAMPLE}")
  backend, inputs = jax.default_backend(), auto_inputs(length)
  if backend == "tpu":  # one compiled program beats less padding there (docs/performance.md)
    _announce(f"length buckets (auto, {backend}): fixed shapes [{length}]; to bucket anyway: "
              f"--gin.BUCKETS=[{','.join(map(str, inputs))}]")
    return None
  _announce(f"length buckets (auto, {backend}): {list(inputs)}"
            + (f"; fixed shapes: --gin_file={FIXED_SHAPES_FILE}" if len(inputs) > 1
               else " (one bucket: fixed shapes)"))
  return inputs if len(inputs) > 1 else None


def check_buckets(buckets: Optional[LengthBuckets],
                  task_feature_lengths: Optional[Mapping[str, int]]) -> Optional[LengthBuckets]:
  """`buckets` normalized (tuples, 'auto' resolved), or a one-line UserError naming the
  binding; None (and 'auto' meaning fixed shapes) is None: no bucketing at all.

  With `task_feature_lengths`, the largest bucket must cover its length and
  no bucket may lie beyond the one that does; without, only the lists'
  form is checked (an example longer than every bucket fails when it comes)
  and 'auto' is an error.
  """
  if buckets is None:
    return None
  if not isinstance(buckets, LengthBuckets):
    raise UserError(f"length buckets must be @LengthBuckets() or None, got {buckets!r}; include "
                    f"runs/length_buckets.gin, or {FIXED_SHAPES_FILE} for none")
  window = buckets.window
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise UserError(f"BUCKET_WINDOW (LengthBuckets.window) must be a positive integer, got "
                    f"{window!r}; set e.g. --gin.BUCKET_WINDOW=16 (1: no regrouping)")
  lengths_of = task_feature_lengths or {}
  inputs = buckets.inputs
  if isinstance(inputs, str):
    if inputs != AUTO:
      raise UserError(f"BUCKETS (LengthBuckets.inputs)={inputs!r} is neither 'auto' nor a list of "
                      f"lengths; set --gin.BUCKETS=\"'auto'\" or e.g. {_EXAMPLE}")
    inputs = _resolve_auto(lengths_of.get("inputs"))
    if inputs is None:  # fixed shapes: a window or target buckets would be ignored
      if window != 1 or buckets.targets is not None:
        raise UserError("BUCKETS='auto' means fixed shapes here, which would ignore BUCKET_WINDOW="
                        f"{window} / TARGET_BUCKETS={buckets.targets!r}; set BUCKETS explicitly, "
                        f"e.g. --gin.BUCKETS=[{lengths_of['inputs']}]")
      return None
  inputs = _increasing(inputs, "BUCKETS (LengthBuckets.inputs)",
                       lengths_of.get("inputs"), "inputs")
  targets = None
  if buckets.targets is not None:
    targets = _increasing(buckets.targets, "TARGET_BUCKETS (LengthBuckets.targets)",
                          lengths_of.get("targets"), "targets")
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
