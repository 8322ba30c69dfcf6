"""Packing with a prompt per example: several examples share a row, each behind its own prompt.

The reference code prepends one prompt to a whole row, so it cannot pack. Here
each segment of an encoder row reserves `P` prompt slots in front of its
tokens, `[P; x1][P; x2]...[pad]`, and the model fills every segment's slots with
the prompt (`prompts.prompt.place_prompt_packed`). Decoder rows hold the
segments' targets in the same order, `[y1][y2]...[pad]`.

Features of a packed batch (SeqIO's names for packed encoder-decoder features):

  encoder_input_tokens   [B, P + L] int32  token ids; 0 in prompt slots and padding
  encoder_segment_ids    [B, P + L] int32  1, 2, ... per segment; 0 = padding
  encoder_positions      [B, P + L] int32  position inside its segment (prompt slot i at i)
  decoder_target_tokens  [B, Lt]    int32
  decoder_input_tokens   [B, Lt]    int32  targets shifted right inside each segment (0 first)
  decoder_loss_weights   [B, Lt]    float32
  decoder_segment_ids    [B, Lt]    int32  the segment of the encoder row it belongs to
  decoder_positions      [B, Lt]    int32

Which examples form a batch: the longest prefix of the remaining example stream
that first-fit-decreasing places into the B rows (binary search over the
prefix length). A batch is a pure function of the stream and where it starts,
so the data position is one number, the examples consumed: a resumed run skips
them and packs exactly what an uninterrupted run would, and every host packs
the same global batch (`train.data.host_rows` keeps its rows).

L = `TASK_FEATURE_LENGTHS['inputs']`, so an example of the longest length fills
a row alone; `Lt` defaults to `auto_targets_length`.
"""
import collections
import dataclasses
from typing import Deque, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from prompt_tuning.data.bucketing import lengths
from prompt_tuning.errors import UserError

Batch = Dict[str, np.ndarray]
ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
DECODER_FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions")
# Enough decoder positions for 8 segments of full-length targets: with P = 100 and 512 inputs a
# row never holds more than 6 segments, so the decoder row never ends a batch; without a
# prompt it caps a decoder row that would otherwise outgrow the encoder row.
_AUTO_TARGET_SEGMENTS = 8
_CHUNK = 256  # examples read from tf.data at a time


@dataclasses.dataclass(frozen=True)
class PackedLayout:
  """The shape of packed rows.

  Attributes:
    prompt_length: P, prompt slots in front of every segment (0 without a prompt).
    inputs_length: L, input tokens of the longest example; encoder rows are P + L.
    targets_length: decoder row length Lt.
  """
  prompt_length: int
  inputs_length: int
  targets_length: int

  @property
  def encoder_length(self) -> int:
    return self.prompt_length + self.inputs_length


def auto_targets_length(task_feature_lengths: Mapping[str, int], prompt_length: int) -> int:
  """Decoder row length: `TASK_FEATURE_LENGTHS['targets']` times the most segments an encoder
  row can hold (each needs P + 1 positions), at most 8."""
  most = (prompt_length + task_feature_lengths["inputs"]) // (prompt_length + 1)
  return task_feature_lengths["targets"] * max(1, min(most, _AUTO_TARGET_SEGMENTS))


def layout_for(task_feature_lengths: Mapping[str, int], prompt_length: int,
               targets_length: Optional[int] = None) -> PackedLayout:
  """The packed layout of a run; `targets_length` None: `auto_targets_length`, else at least
  `TASK_FEATURE_LENGTHS['targets']` (one UserError otherwise)."""
  shortest = task_feature_lengths["targets"]
  if targets_length is None:
    targets_length = auto_targets_length(task_feature_lengths, prompt_length)
  elif (isinstance(targets_length, bool) or not isinstance(targets_length, int)
        or targets_length < shortest):
    raise UserError(f"PACK_TARGETS_LENGTH={targets_length!r} must be an integer of at least "
                    f"TASK_FEATURE_LENGTHS['targets']={shortest} (the longest target must fit a "
                    "row); set it so, or None for the default")
  return PackedLayout(prompt_length, task_feature_lengths["inputs"], targets_length)


def first_fit_decreasing(encoder_sizes: np.ndarray, decoder_sizes: np.ndarray, rows: int,
                         layout: PackedLayout) -> Optional[np.ndarray]:
  """`[K]` row of each item (longest encoder size first, each into the first row with room in
  both its encoder and decoder row), or None when some item fits no row."""
  free_encoder = np.full(rows, layout.encoder_length)
  free_decoder = np.full(rows, layout.targets_length)
  placed = np.empty(len(encoder_sizes), np.int64)
  for i in np.lexsort((np.arange(len(encoder_sizes)), -encoder_sizes)):  # stable: ties by index
    room = (free_encoder >= encoder_sizes[i]) & (free_decoder >= decoder_sizes[i])
    if not room.any():
      return None
    row = int(np.argmax(room))
    placed[i] = row
    free_encoder[row] -= encoder_sizes[i]
    free_decoder[row] -= decoder_sizes[i]
  return placed


def longest_prefix(encoder_sizes: np.ndarray, decoder_sizes: np.ndarray, rows: int,
                   layout: PackedLayout) -> Tuple[int, np.ndarray]:
  """(K, `[K]` rows): the longest prefix of the items that `first_fit_decreasing` places, found
  by binary search (so deterministic; K >= 1 since one item always fits an empty row)."""
  fits, placed = 1, first_fit_decreasing(encoder_sizes[:1], decoder_sizes[:1], rows, layout)
  high = len(encoder_sizes) + 1  # smallest prefix known not to fit (or past the end)
  while high - fits > 1:
    mid = (fits + high) // 2
    trial = first_fit_decreasing(encoder_sizes[:mid], decoder_sizes[:mid], rows, layout)
    if trial is None:
      high = mid
    else:
      fits, placed = mid, trial
  return fits, placed


@dataclasses.dataclass(frozen=True)
class Example:
  """One example without padding: inputs `[n]`, targets `[m]`, loss weights `[m]`."""
  inputs: np.ndarray
  targets: np.ndarray
  weights: np.ndarray


def sizes(examples: List[Example], layout: PackedLayout) -> Tuple[np.ndarray, np.ndarray]:
  """(`[K]` encoder positions P + n, `[K]` decoder positions m) of each example; a UserError
  for one longer than a row (inputs are cut to L by the feature converter, so only a bug or
  a hand-made example gets there)."""
  enc = np.array([layout.prompt_length + len(e.inputs) for e in examples], np.int64)
  dec = np.array([len(e.targets) for e in examples], np.int64)
  if len(enc) and (enc.max() > layout.encoder_length or dec.max() > layout.targets_length):
    raise UserError(f"an example of {enc.max() - layout.prompt_length} input / {dec.max()} target "
                    f"tokens does not fit a packed row of {layout.inputs_length} / "
                    f"{layout.targets_length}; raise TASK_FEATURE_LENGTHS or PACK_TARGETS_LENGTH")
  return enc, dec


def pack_rows(examples: List[Example], placed: np.ndarray, rows: int,
              layout: PackedLayout) -> Batch:
  """`{feature: [rows, ...]}` (the module docstring's features) with example k in row
  `placed[k]`; inside a row, segments follow the examples' order."""
  p, le, lt = layout.prompt_length, layout.encoder_length, layout.targets_length
  out = {k: np.zeros((rows, le), np.int32) for k in ENCODER_FEATURES}
  out.update({k: np.zeros((rows, lt), np.int32) for k in DECODER_FEATURES})
  out["decoder_loss_weights"] = np.zeros((rows, lt), np.float32)
  enc_at, dec_at, segment = np.zeros(rows, int), np.zeros(rows, int), np.zeros(rows, int)
  for example, row in zip(examples, placed):
    n, m = len(example.inputs), len(example.targets)
    segment[row] += 1
    e0, d0 = enc_at[row], dec_at[row]
    out["encoder_input_tokens"][row, e0 + p:e0 + p + n] = example.inputs
    out["encoder_segment_ids"][row, e0:e0 + p + n] = segment[row]
    out["encoder_positions"][row, e0:e0 + p + n] = np.arange(p + n)
    out["decoder_target_tokens"][row, d0:d0 + m] = example.targets
    # Teacher forcing restarts per segment: 0 (T5's BOS) then the targets but the last.
    out["decoder_input_tokens"][row, d0 + 1:d0 + m] = example.targets[:-1]
    out["decoder_loss_weights"][row, d0:d0 + m] = example.weights
    out["decoder_segment_ids"][row, d0:d0 + m] = segment[row]
    out["decoder_positions"][row, d0:d0 + m] = np.arange(m)
    enc_at[row] += p + n
    dec_at[row] += m
  return out


def pack(examples: List[Example], rows: int, layout: PackedLayout) -> Tuple[Batch, int]:
  """(packed batch of `rows` rows, K): the longest prefix of `examples` that fits (`K >= 1`)."""
  enc, dec = sizes(examples, layout)
  count, placed = longest_prefix(enc, dec, rows, layout)
  return pack_rows(examples[:count], placed, rows, layout), count


def unpadded(features: Mapping[str, np.ndarray]) -> List[Example]:
  """`{feature: [N, L]}` zero-padded unpacked features -> N `Example`s."""
  n_in = lengths(features["encoder_input_tokens"])
  targets = features["decoder_target_tokens"]
  n_out = lengths(targets)
  weights = features.get("decoder_loss_weights", (targets > 0).astype(np.float32))
  return [Example(features["encoder_input_tokens"][i, :n_in[i]], targets[i, :n_out[i]],
                  np.asarray(weights[i, :n_out[i]], np.float32)) for i in range(len(n_in))]


def packed_batches(ds, rows: int, layout: PackedLayout,
                   skip_examples: int = 0) -> Iterator[Tuple[Batch, int]]:
  """(packed global batch, examples in it) from an unbatched tf.data stream of unpacked
  model features zero-padded to `TASK_FEATURE_LENGTHS`.

  `skip_examples` examples of the stream are skipped first (resume: the examples the
  earlier batches consumed). A finite stream ends with a batch of what is left.
  """
  if skip_examples:
    ds = ds.skip(skip_examples)
  chunks = ds.batch(_CHUNK).prefetch(2).as_numpy_iterator()
  pending: Deque[Example] = collections.deque()
  # The longest prefix never exceeds the examples that `rows` rows of prompt-plus-EOS
  # segments (or one decoder position each) can hold: keep that many pending.
  most = rows * min(layout.encoder_length // max(layout.prompt_length + 1, 1),
                    layout.targets_length)
  exhausted = False
  while True:
    while not exhausted and len(pending) <= most:
      chunk = next(chunks, None)
      if chunk is None:
        exhausted = True
      else:
        pending.extend(unpadded(chunk))
    if not pending:
      return
    window = [pending[i] for i in range(min(len(pending), most + 1))]
    batch, count = pack(window, rows, layout)
    for _ in range(count):
      pending.popleft()
    yield batch, count
