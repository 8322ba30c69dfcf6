"""Per-array checksums of parameter trees, computed where the arrays live.

A checksum is two 32-bit sums, over every element, of a hash of the element's
bits mixed with its flat index. Sums do not depend on order, so the checksum
is one jitted reduction whatever the array's sharding: each device hashes its
own slice and XLA adds the partial sums. No host ever gathers a whole array,
so an XXL backbone can be verified where it is restored. A lost, zeroed,
truncated, shifted or bit-flipped chunk changes the checksum (with
probability 1 - 2^-64); it is an integrity check, not a cryptographic one.

Records are JSON-ready dicts keyed by the parameter path (`a/b/c`)::

  {"shape": [4, 32], "dtype": "float32", "sums": {"float32": "9f0c...", "bfloat16": "..."}}

`sums` may hold the checksum of the array cast to other dtypes too, so an
array restored straight into another dtype (Orbax casts on read) can be
verified without restoring it twice.
"""
import functools
from typing import Any, Dict, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import multihost

ALGORITHM = "fmix32-index-sum-v1"
_GOLDEN = 0x9E3779B9
_SEED_A, _SEED_B = 0x243F6A88, 0x85A308D3


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: every input bit affects every output bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _bits(x: jax.Array) -> jax.Array:
  """The element bits of `x` as uint32, same shape (64-bit elements are folded)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 1:
    return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  if size == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 8:
    halves = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return halves[..., 0] ^ _fmix32(halves[..., 1] + jnp.uint32(_GOLDEN))
  raise TypeError(f"no checksum for dtype {x.dtype}")


@functools.partial(jax.jit, static_argnames=("dtype",))
def _sums(x: jax.Array, dtype: Optional[str] = None) -> jax.Array:
  if dtype is not None:
    x = x.astype(dtype)
  bits = _bits(x)
  # The flat index from per-axis iotas, so no axis is reshaped (and resharded).
  index = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(x.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
    stride *= x.shape[axis]
  a = _fmix32(bits ^ _fmix32(index * jnp.uint32(_GOLDEN) + jnp.uint32(_SEED_A)))
  b = _fmix32((bits + jnp.uint32(_SEED_B)) ^ _fmix32(index ^ jnp.uint32(_SEED_B)))
  return jnp.stack([jnp.sum(a, dtype=jnp.uint32), jnp.sum(b, dtype=jnp.uint32)])


def _on_device(x: Any) -> jax.Array:
  if isinstance(x, jax.Array):
    return x
  # Host arrays are hashed on the CPU backend, one at a time, so a converter
  # never copies a whole model to an accelerator.
  return jax.device_put(np.asarray(x), jax.local_devices(backend="cpu")[0])




def array_checksum(x: Any, dtype: Optional[str] = None) -> str:
  """16 hex digits: the checksum of `x` (cast to `dtype` first, if given).

  With a sharded `jax.Array` spanning several hosts, every process must call
  this (it is a collective).
  """
  if dtype is not None and np.dtype(dtype) == np.dtype(x.dtype):
    dtype = None
  lanes = multihost.to_host(_sums(_on_device(x), dtype))
  return "".join(f"{int(v):08x}" for v in lanes)


def flatten_paths(tree: Any) -> Dict[str, Any]:
  """`{'a': {'b': x}}` -> `{'a/b': x}`: the parameter paths checksums are recorded under."""
  flat = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)] = leaf
  return flat


def tree_records(tree: Any, cast_dtypes: Iterable[str] = ()) -> Dict[str, Dict[str, Any]]:
  """`{path: {"shape", "dtype", "sums": {dtype: checksum}}}` for every leaf of `tree`.

  Floating arrays also get the checksum of their cast to each of
  `cast_dtypes`; other arrays only their own.
  """
  records = {}
  for path, leaf in flatten_paths(tree).items():
    dtype = np.dtype(leaf.dtype)
    sums = {dtype.name: array_checksum(leaf)}
    if jnp.issubdtype(dtype, jnp.floating):
      for cast in cast_dtypes:
        if np.dtype(cast) != dtype:
          sums[np.dtype(cast).name] = array_checksum(leaf, cast)
    records[path] = {"shape": [int(d) for d in leaf.shape], "dtype": dtype.name, "sums": sums}
  return records


def find_mismatch(records: Mapping[str, Mapping[str, Any]], tree: Any,
                  unverifiable: Optional[list] = None) -> Optional[str]:
  """The first parameter of `tree` that does not match `records`, as a short reason; None if all do.

  A leaf whose dtype has no recorded sum is skipped and its path appended to
  `unverifiable` (when given).
  """
  flat = flatten_paths(tree)
  lost = sorted(set(records) - set(flat))
  if lost:
    return f"parameter {lost[0]} is recorded but was not restored"
  for path, leaf in flat.items():
    record = records.get(path)
    if record is None:
      return f"parameter {path} has no recorded checksum"
    if [int(d) for d in leaf.shape] != list(record["shape"]):
      return f"parameter {path} has shape {tuple(leaf.shape)}, recorded {tuple(record['shape'])}"
    expected = record["sums"].get(np.dtype(leaf.dtype).name)
    if expected is None:
      if unverifiable is not None:
        unverifiable.append(path)
      continue
    if array_checksum(leaf) != expected:
      return f"parameter {path} does not match its checksum"
  return None
