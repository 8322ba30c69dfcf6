"""A lower bound on the memory of a T5 pass, checked against the machine before anything is
allocated.

Sizes a user chooses (a 20,000-word input to `score`, `--max_decode_length
100000000`, `TASK_FEATURE_LENGTHS = {'inputs': 10**6}`) decide the size of the
pass's buffers. On a machine that overcommits memory, a pass that cannot fit
does not fail: it hangs in swap or is killed. So each entry point bounds its
largest pass first: the bound counts only buffers that must exist at once (one
attention-logits tensor, the final logits, the decoder's cache over every
layer), so a pass refused here could never have run, and no pass that fits is
refused. `plan` estimates the whole footprint of a training step; this is the
floor under it.
"""
import dataclasses
import os
from typing import Optional, Tuple

import numpy as np

from prompt_tuning.errors import UserError


@dataclasses.dataclass(frozen=True)
class Pass:
  """The shape of one pass of a T5 model.

  Attributes:
    batch: rows of the batch the encoder reads.
    encoder_length: encoder positions, prompt included.
    decoder_length: decoder positions (targets, or the most tokens decoded).
    decoding: autoregressive decoding (a KV cache over `decoder_length`), not teacher forcing.
    copies: sequences decoded per row (beams).
    head_shards: devices the attention heads are split over (the mesh's `model` axis).
  """
  batch: int
  encoder_length: int
  decoder_length: int
  decoding: bool = False
  copies: int = 1
  head_shards: int = 1


def lower_bound_bytes(config, p: Pass) -> int:
  """Bytes that pass `p` of a `T5Config` model needs at least at one moment."""
  size = np.dtype(config.dtype).itemsize
  b, le, ld = p.batch, p.encoder_length, p.decoder_length
  heads = -(-config.num_heads // p.head_shards)
  # The encoder's attention logits are one [B, H, L, L] tensor (attention is not chunked).
  encoder = b * heads * le * le * size
  if p.decoding:  # the keys and values of every decoder layer, carried through the whole loop
    cache = 2 * config.num_decoder_layers * b * p.copies * ld * heads * config.head_dim * size
    return int(max(encoder, cache))
  # Teacher forcing: the decoder's attention logits, and the [B, T, vocab] float32 logits.
  vocab = -(-config.vocab_size // p.head_shards)
  return int(max(encoder, b * heads * ld * le * size, b * heads * ld * ld * size,
                 b * ld * vocab * 4))


def machine_bytes() -> Tuple[int, str]:
  """(bytes, description) of the memory a pass can use: the first local accelerator's
  allocator limit, else this host's physical memory (CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"one {device.device_kind}"
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this host"


def check_fits(config, p: Pass, what: str, way_out: str, limit: Optional[int] = None) -> None:
  """Refuses pass `p` when even its lower bound exceeds the machine's memory.

  Args:
    config: the model's `T5Config`.
    p: the pass.
    what: the pass as the user caused it, e.g. `score's batch holding in.jsonl line 3`.
    way_out: the flags or macros that shrink it.
    limit: the bytes available (default: `machine_bytes()`).
  """
  needed = lower_bound_bytes(config, p)
  available, where = (limit, "the limit") if limit is not None else machine_bytes()
  if needed > available:
    raise UserError(f"{what} needs at least {_gib(needed)} of memory (batch {p.batch:,}"
                    f"{f' x {p.copies:,} beams' if p.copies > 1 else ''}, encoder "
                    f"{p.encoder_length:,} and decoder {p.decoder_length:,} positions), more than "
                    f"the {_gib(available)} of {where}; {way_out}")


def _gib(n: int) -> str:
  return f"{n / 2 ** 30:,.1f} GiB"
