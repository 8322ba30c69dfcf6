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
  dtype_bytes: int = 4
  remat: Any = False    # a T5Config.remat value: False/'none', True/'full', 'dots', 'dots_saveable'


def activation_bytes(a: ActivationShape, data_shards: int, model_shards: int) -> int:
  """Per-device activations kept for the backward pass of one (micro)batch (an estimate).

  Prompt tuning back-propagates through every layer to reach the prompt, so
  all layers' activations are live even though no weight gradient is made.
  Per token and layer we count what the backward pass reads: normalized
  inputs and residuals (`embed`, replicated over `model`), q/k/v/attention
  outputs (`heads*kv`, split over `model`), the gated MLP's two input
  projections and activation (`mlp`, split over `model`), and attention
  probabilities plus logits (`heads * keys`, split over `model`). The final
  logits and their softmax (`vocab`, split over `model`) are added once. With
  `remat`, each layer keeps its input and what the remat policy saves, plus one
  layer's working set for the recomputation.
  """
  b = math.ceil(a.batch / data_shards)
  hd = math.ceil(a.num_heads * a.head_dim / model_shards)
  heads = math.ceil(a.num_heads / model_shards)
  mlp = math.ceil(a.mlp_dim / model_shards)
  le, ld, e = a.encoder_length, a.decoder_length, a.emb_dim
  enc_layer = b * le * (4 * e + 4 * hd + 3 * mlp) + 2 * b * heads * le * le
  dec_layer = (b * ld * (6 * e + 8 * hd + 3 * mlp)
               + 2 * b * heads * ld * ld + 2 * b * heads * ld * le)
  logits = 2 * b * ld * math.ceil(a.vocab_size / model_shards)
  policy = a.remat if isinstance(a.remat, str) else ("full" if a.remat else "none")
  if policy != "none":
    # Each layer's input, plus what the policy saves: 'dots' the weight matmuls'
    # outputs (q/k/v, attention out, MLP in x2 and out; cross-attention k/v over the
    # encoder), 'dots_saveable' also the attention scores and their value product.
    enc_kept, dec_kept = b * le * e, b * ld * e
    if policy in ("dots", "dots_saveable"):
      enc_kept += b * le * (3 * hd + 2 * e + 2 * mlp)
      dec_kept += b * ld * (4 * hd + 3 * e + 2 * mlp) + 2 * b * le * hd
    if policy == "dots_saveable":
      enc_kept += b * heads * le * le + b * le * hd
      dec_kept += b * heads * ld * (ld + le) + 2 * b * ld * hd
    kept = a.num_encoder_layers * enc_kept + a.num_decoder_layers * dec_kept
    values = kept + max(enc_layer, dec_layer) + logits
  else:
    values = a.num_encoder_layers * enc_layer + a.num_decoder_layers * dec_layer + logits
  return int(values * a.dtype_bytes)


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
