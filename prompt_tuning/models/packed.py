"""Attention masks and per-example sums for packed rows (`data/packing.py`).

Segments of a packed row are contiguous, so inside one segment the distance
between two positions equals the distance between their row indices: the
relative position biases of the row (`arange` positions) are already each
segment's own, restarted at its first position, and masking attention to the
segment is all that packing needs from the attention layers. Pure functions.
"""
import jax
import jax.numpy as jnp

Array = jax.Array


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
  """`[B, Lq]`, `[B, Lk]` segment ids (0 = padding) -> `[B, Lq, Lk]` bool: a query sees the keys
  of its own segment, never padding."""
  return ((query_segments[:, :, None] == key_segments[:, None, :])
          & (key_segments[:, None, :] > 0))


def causal_segment_mask(segments: Array) -> Array:
  """`[B, L]` decoder segment ids -> `[B, L, L]` bool: earlier-or-same positions of the same
  segment. Padding queries see themselves, so no row is empty."""
  position = jnp.arange(segments.shape[1])
  causal = position[None, :] <= position[:, None]
  same = segments[:, :, None] == segments[:, None, :]
  return causal[None] & same


def per_segment_sums(values: Array, segments: Array, num_segments: int) -> Array:
  """`[B, L]` values, `[B, L]` segment ids -> `[B, num_segments]`: column s - 1 sums segment s
  (segment 0, padding, is dropped)."""
  ids = jnp.arange(1, num_segments + 1)
  return jnp.einsum("bl,bls->bs", values, (segments[:, :, None] == ids).astype(values.dtype))


def model_kwargs(batch) -> dict:
  """The packed features of `batch` that the model takes (`T5.__call__`); {} when unpacked."""
  names = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids")
  return {k: batch[k] for k in names if k in batch}
