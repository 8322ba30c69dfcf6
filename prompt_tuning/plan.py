"""Per-device memory of a run, on paper: pure arithmetic over shapes, dtypes and PartitionSpecs.

Nothing here touches a device. The inputs are abstract arrays (from
`jax.eval_shape`), the mesh-axis PartitionSpecs the partitioning rules give
them, and the sizes of the mesh axes, so a 64-chip mesh can be planned on a
laptop. A dimension sharded over mesh axes of total size `s` holds
`ceil(dim / s)` entries per device; an unsharded dimension holds all of them.
"""
import dataclasses
import math
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
from jax.sharding import PartitionSpec

AxisSizes = Mapping[str, int]


def mesh_axis_sizes(num_devices: int, model_parallel_size: int = 1,
                    mesh_shape: Optional[Sequence[int]] = None) -> Dict[str, int]:
  """`{'data': d, 'model': m}` as `make_mesh` would lay out `num_devices`."""
  if mesh_shape is None:
    if model_parallel_size < 1 or num_devices % model_parallel_size:
      raise ValueError(f"model_parallel_size={model_parallel_size} does not divide "
                       f"{num_devices} devices")
    mesh_shape = (num_devices // model_parallel_size, model_parallel_size)
  data, model = (int(s) for s in mesh_shape)
  if data * model != num_devices:
    raise ValueError(f"mesh_shape={tuple(mesh_shape)} does not cover {num_devices} devices")
  return {"data": data, "model": model}


def _axes_of(entry) -> Tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def shards_per_dim(spec: Optional[PartitionSpec], ndim: int, axis_sizes: AxisSizes) -> Tuple[int, ...]:
  """How many ways each dimension is split (1 = replicated along it)."""
  entries = tuple(spec) if spec is not None else ()
  entries = entries + (None,) * (ndim - len(entries))
  return tuple(int(np.prod([axis_sizes[a] for a in _axes_of(e)] or [1])) for e in entries[:ndim])


def local_shape(shape: Sequence[int], spec: Optional[PartitionSpec],
                axis_sizes: AxisSizes) -> Tuple[int, ...]:
  """The shape one device holds (ceil for uneven splits, as XLA pads)."""
  return tuple(math.ceil(d / s) for d, s in zip(shape, shards_per_dim(spec, len(shape), axis_sizes)))


def array_bytes(shape: Sequence[int], dtype: Any) -> int:
  return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


@dataclasses.dataclass(frozen=True)
class Footprint:
  """Bytes and element counts of a tree: in total and on one device."""
  count: int = 0
  total_bytes: int = 0
  device_bytes: int = 0

  def __add__(self, other: "Footprint") -> "Footprint":
    return Footprint(self.count + other.count, self.total_bytes + other.total_bytes,
                     self.device_bytes + other.device_bytes)


def footprint(leaves: Iterable[Tuple[Sequence[int], Any, Optional[PartitionSpec]]],
              axis_sizes: AxisSizes) -> Footprint:
  """Sums `(shape, dtype, mesh PartitionSpec)` leaves."""
  out = Footprint()
  for shape, dtype, spec in leaves:
    out = out + Footprint(int(np.prod(shape, dtype=np.int64)), array_bytes(shape, dtype),
                          array_bytes(local_shape(shape, spec, axis_sizes), dtype))
  return out


@dataclasses.dataclass(frozen=True)
class ActivationShape:
  """What the activation estimate needs to know about the model and batch."""
  emb_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  vocab_size: int
  num_encoder_layers: int
  num_decoder_layers: int
  batch: int            # global batch per (micro)step
  encoder_length: int   # inputs + prompt
  decoder_length: int   # targets
  dtype: str = "float32"  # the activation dtype (T5Config.dtype)
  remat: Any = False    # a T5Config.remat value: False/'none', True/'full', 'dots', 'dots_saveable'
  dropout_rate: float = 0.0


# Bytes kept per dropped element for the backward pass: the keep mask, one byte (a boolean).
# What a backend really keeps is its own choice, which the estimate cannot know: XLA:CPU
# draws every mask's random bits early and keeps ~10 bytes per element (docs/performance.md,
# "Memory of the train step").
DROPOUT_MASK_BYTES = 1


# What one layer keeps for the backward pass, in arrays per token: `embed`-wide (replicated
# over `model`), `heads * head_dim`-wide and `mlp`-wide (both split over `model`). Counted
# in the compiled float32 step of XLA (CPU, memory-minimizing scheduler; docs/performance.md,
# "Memory of the train step"): an encoder layer keeps its two norms' inputs, q, k, v and the
# attention output before the division, and the MLP's two projections, its GELU's tanh and
# output; a decoder layer likewise, with its cross-attention's q and output (its keys and
# values span the encoder: `CROSS_KV`).
ENCODER_LAYER = {"embed": 2, "joined": 4, "mlp": 4}
DECODER_LAYER = {"embed": 3, "joined": 6, "mlp": 4}
CROSS_KV = 2
# `remat='dots'` keeps the weight matmuls' outputs (q, k, v, out; MLP in x2, out),
# 'dots_saveable' also the attention products (scores `[heads, q, k]` and value product).
DOTS_KEPT = {"embed": 2, "joined": 4, "mlp": 2}


def activation_bytes(a: ActivationShape, data_shards: int, model_shards: int) -> int:
  """Per-device activations kept for the backward pass of one (micro)batch (an estimate).

  Prompt tuning back-propagates through every layer to reach the prompt, so
  all layers' activations are live even though no weight gradient is made.
  Per layer: the arrays of `ENCODER_LAYER` / `DECODER_LAYER` per token, and the
  attention probabilities (`heads * keys` per token, split over `model`):
  float32 (the softmax's exponentials), plus their cast to the activation dtype
  when that is narrower. The logits and their exponentials (`vocab`, float32,
  split over `model`) are added once, and one `embed`-wide array per stack (its
  input or output). With `remat`, each layer keeps its input and what the
  policy saves (`DOTS_KEPT`), plus one layer's working set and, for the
  recomputation, the encoder's attention bias `[heads, length, length]`.
  With dropout, each dropped element keeps its mask (`DROPOUT_MASK_BYTES`):
  the attention probabilities, the MLP's hidden units and each residual branch
  (recomputed inside a remat layer, like the rest of it).
  """
  x = np.dtype(a.dtype).itemsize
  probability = 4 + (x if x < 4 else 0)
  b = math.ceil(a.batch / data_shards)
  joined = math.ceil(a.num_heads * a.head_dim / model_shards)
  heads = math.ceil(a.num_heads / model_shards)
  mlp = math.ceil(a.mlp_dim / model_shards)
  le, ld, e = a.encoder_length, a.decoder_length, a.emb_dim
  width = {"embed": e, "joined": joined, "mlp": mlp}

  def per_token(counts):
    return sum(counts[k] * width[k] for k in counts)

  enc_layer = b * le * per_token(ENCODER_LAYER) * x + b * heads * le * le * probability
  dec_layer = (b * ld * per_token(DECODER_LAYER) * x + CROSS_KV * b * le * joined * x
               + b * heads * ld * (ld + le) * probability)
  logits = 2 * b * ld * math.ceil(a.vocab_size / model_shards) * 4
  stacks = b * (le + ld) * e * x
  if a.dropout_rate > 0:  # masks: attention probabilities, MLP hidden, residual branches
    enc_layer += DROPOUT_MASK_BYTES * b * (heads * le * le + le * (2 * e + mlp))
    dec_layer += DROPOUT_MASK_BYTES * b * (heads * ld * (ld + le) + ld * (3 * e + mlp))
    stacks += DROPOUT_MASK_BYTES * 2 * b * (le + ld) * e  # each stack's input and output
  policy = a.remat if isinstance(a.remat, str) else ("full" if a.remat else "none")
  if policy == "none":
    layers = a.num_encoder_layers * enc_layer + a.num_decoder_layers * dec_layer
    return int(layers + logits + stacks)
  enc_kept, dec_kept = b * le * e * x, b * ld * e * x + CROSS_KV * b * le * joined * x
  if policy in ("dots", "dots_saveable"):
    enc_kept += b * le * per_token(DOTS_KEPT) * x
    dec_kept += b * ld * (per_token(DOTS_KEPT) + 2 * joined) * x
  if policy == "dots_saveable":
    enc_kept += b * le * joined * 4 + b * heads * le * le * 4
    dec_kept += 2 * b * ld * joined * 4 + b * heads * ld * (ld + le) * 4
  kept = a.num_encoder_layers * enc_kept + a.num_decoder_layers * dec_kept
  bias = b * heads * le * le * 4
  return int(kept + max(enc_layer, dec_layer) + logits + stacks + bias)


def human_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1024
  return f"{n:.2f} TiB"


def human_count(n: int) -> str:
  for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= size:
      return f"{n / size:.2f}{unit}"
  return str(n)
