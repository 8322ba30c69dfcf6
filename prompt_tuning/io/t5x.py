"""Reads T5X native checkpoints (format version 3): msgpack + tensorstore zarr.

A T5X checkpoint folder holds a `checkpoint` msgpack file::

  {'version': 3, 'optimizer': {'target': params, 'state': {...}}}

Small arrays are stored inline; large ones are tensorstore specs such as
`{'driver': 'zarr', 'kvstore': {'driver': 'gfile', 'path': 'target.encoder...'}}`
naming a zarr folder beside the msgpack file. Tensorstore has no `gfile`
driver, so relative paths are resolved against the checkpoint folder and
opened with the `file` driver locally or the `gcs` driver for `gs://` folders.

Only the `target` (the parameters) is read; optimizer state is dropped. With a
target tree of `jax.ShapeDtypeStruct`s carrying shardings, each device's slice
is read straight from tensorstore, so a checkpoint never has to fit one host.
"""
import dataclasses
import os
import re
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np

from prompt_tuning import fs
from prompt_tuning.errors import UserError, closest
from prompt_tuning.io.backbone import check_tree_shapes, flatten_paths
from prompt_tuning.models.config import T5Config

CHECKPOINT_FILE = "checkpoint"
DEFAULT_MAX_DISTANCE = 128


@dataclasses.dataclass(frozen=True)
class StoredArray:
  """One parameter of a T5X checkpoint, not yet read.

  A plain dataclass (not a pytree node), so trees of these flatten to one leaf
  per parameter and can be shape-checked before any bytes are read.
  """
  shape: Tuple[int, ...]
  dtype: np.dtype
  # `read(index)` returns the numpy slice `array[index]`.
  read: Callable[[Tuple[slice, ...]], np.ndarray] = dataclasses.field(repr=False, compare=False)
  where: str = ""


def _is_remote(path: str) -> bool:
  return "://" in path


def _join(base: str, rel: str) -> str:
  if _is_remote(base):
    return base.rstrip("/") + "/" + rel
  return os.path.join(base, rel)


def checkpoint_folder(path: str) -> str:
  """The checkpoint folder for `path` (the folder itself or its `checkpoint` file)."""
  path = path.rstrip("/")
  if os.path.basename(path) == CHECKPOINT_FILE and (_is_remote(path) or os.path.isfile(path)):
    return os.path.dirname(path)
  return path if _is_remote(path) else os.path.abspath(path)


def _gcs_kvstore(url: str) -> Dict[str, str]:
  bucket, _, key = url[len("gs://"):].partition("/")
  return {"driver": "gcs", "bucket": bucket, "path": key}


def _kvstore_for(path: str) -> Dict[str, str]:
  if path.startswith("gs://"):
    return _gcs_kvstore(path)
  if _is_remote(path):
    raise UserError(f"unsupported checkpoint location {path}; use a local path or gs://bucket/...")
  return {"driver": "file", "path": path}


def _read_msgpack_bytes(folder: str) -> bytes:
  file_path = _join(folder, CHECKPOINT_FILE)
  if folder.startswith("gs://"):
    fs.check_reachable(folder, f"copy the checkpoint folder to this machine (gsutil -m cp -r "
                       f"{folder} /local/dir) and pass the local folder instead")
    import tensorstore as ts
    kv = _gcs_kvstore(folder)
    try:
      store = ts.KvStore.open({"driver": "gcs", "bucket": kv["bucket"]}).result()
      result = store.read(kv["path"].rstrip("/") + "/" + CHECKPOINT_FILE).result()
    except Exception as e:  # tensorstore raises ValueError with a gRPC-ish status
      raise UserError(f"cannot read {file_path}: {str(e).splitlines()[0]}") from None
    if result.state != "value":
      raise UserError(f"{file_path} does not exist; pass a T5X checkpoint folder such as "
                      ".../checkpoint_1100000")
    return bytes(result.value)
  if not os.path.isdir(folder):
    raise UserError(f"T5X checkpoint folder {folder} does not exist")
  if not os.path.isfile(file_path):
    raise UserError(f"{folder} has no '{CHECKPOINT_FILE}' file: not a T5X checkpoint folder "
                    "(pass the checkpoint_N folder itself)")
  with open(file_path, "rb") as f:
    return f.read()


def _restore_msgpack(folder: str) -> Dict[str, Any]:
  from flax import serialization
  data = _read_msgpack_bytes(folder)
  file_path = _join(folder, CHECKPOINT_FILE)
  try:
    state = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several unrelated types on bad bytes
    raise UserError(f"{file_path} is truncated or not a T5X msgpack checkpoint "
                    f"({type(e).__name__}); re-copy the checkpoint folder") from None
  if not isinstance(state, dict) or "optimizer" not in state or "target" not in state.get("optimizer", {}):
    keys = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise UserError(f"{file_path} holds {keys}, not a T5X checkpoint with optimizer/target")
  version = state.get("version")
  if version is not None and int(version) > 3:
    raise UserError(f"{file_path} is T5X checkpoint format {version}; this reader knows versions <= 3")
  return state


def _is_tensorstore_spec(node: Any) -> bool:
  return isinstance(node, dict) and "driver" in node and "kvstore" in node


def _resolve_spec(spec: Dict[str, Any], folder: str) -> Dict[str, Any]:
  """A T5X spec with its `gfile` kvstore rewritten to `file`/`gcs` under `folder`."""
  kvstore = dict(spec["kvstore"])
  path = kvstore.get("path", "")
  if kvstore.get("driver") == "gcs" and "bucket" in kvstore:
    resolved = kvstore
  else:
    if not (path.startswith("/") or _is_remote(path)):
      path = _join(folder, path)
    resolved = _kvstore_for(path)
  # The stored .zarray is the truth; T5X's inline copy of it is only checked.
  out = {k: v for k, v in spec.items() if k not in ("kvstore", "metadata")}
  out["kvstore"] = resolved
  # A missing chunk file is an error, never the fill value (zeros).
  out["fill_missing_data_reads"] = False
  return out


def _location(kvstore: Dict[str, str]) -> str:
  if kvstore["driver"] == "gcs":
    return f"gs://{kvstore['bucket']}/{kvstore['path']}"
  return kvstore["path"]


def _zarr_reader(spec: Dict[str, Any], folder: str, name: str) -> StoredArray:
  meta = spec.get("metadata", {})
  resolved = _resolve_spec(spec, folder)
  where = _location(resolved["kvstore"])
  if not _is_remote(where) and not os.path.isdir(where):
    raise UserError(f"parameter {name}: zarr folder {where} is missing; the T5X checkpoint "
                    "was copied incompletely (copy every target.* folder beside 'checkpoint')")
  if "shape" not in meta or "dtype" not in meta:
    store = _open(resolved, name, where)
    shape, dtype = tuple(store.shape), np.dtype(store.dtype.numpy_dtype)
  else:
    shape, dtype = tuple(int(d) for d in meta["shape"]), _zarr_dtype(meta["dtype"])
  opened = []

  def read(index):
    if not opened:
      store = _open(resolved, name, where)
      if tuple(store.shape) != shape:
        raise UserError(f"parameter {name}: {where} holds shape {tuple(store.shape)} but the "
                        f"checkpoint file records {shape}; the checkpoint is inconsistent")
      opened.append(store)
    try:
      return np.asarray(opened[0][index].read().result())
    except ValueError as e:
      raise UserError(_read_error(name, where, e)) from None

  return StoredArray(shape, dtype, read, where)


def _read_error(name: str, where: str, error: ValueError) -> str:
  first = str(error).splitlines()[0]
  missing = re.search(r"chunk (\{[^}]*\}) stored at .*?\"([^\"]+)\" is missing", first)
  if missing:
    return (f"parameter {name}: chunk {missing.group(1)} of zarr array {where} is missing "
            f"(no file {missing.group(2)}); the T5X checkpoint was copied incompletely, "
            "copy it again")
  return f"parameter {name}: cannot read {where}: {first}"


def _zarr_dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def _open(spec: Dict[str, Any], name: str, where: str):
  import tensorstore as ts
  try:
    return ts.open(spec, open=True, read=True).result()
  except ValueError as e:
    raise UserError(f"parameter {name}: cannot open zarr array {where}: "
                    f"{str(e).splitlines()[0]}") from None


def _inline_reader(value: Any, name: str) -> StoredArray:
  array = np.asarray(value)
  return StoredArray(tuple(array.shape), array.dtype, lambda index: array[index], "inline")


def _stored_tree(node: Any, folder: str, prefix: str = "") -> Any:
  if _is_tensorstore_spec(node):
    return _zarr_reader(node, folder, prefix)
  if isinstance(node, dict):
    return {k: _stored_tree(v, folder, f"{prefix}/{k}" if prefix else k) for k, v in node.items()}
  return _inline_reader(node, prefix)


def open_t5x_checkpoint(checkpoint_dir: str) -> Dict[str, Any]:
  """The checkpoint's parameter tree as `StoredArray`s (nothing large read yet)."""
  folder = checkpoint_folder(checkpoint_dir)
  state = _restore_msgpack(folder)
  return _stored_tree(state["optimizer"]["target"], folder)


def read_t5x_step(checkpoint_dir: str) -> int:
  """The training step a T5X checkpoint was saved at (its msgpack `optimizer/state/step`).

  T5X counts `TRAIN_STEPS` from it (`checkpoint_1100000` holds step 1,100,000).
  """
  folder = checkpoint_folder(checkpoint_dir)
  state = _restore_msgpack(folder).get("optimizer", {}).get("state", {})
  step = state.get("step") if isinstance(state, dict) else None
  if step is None:
    raise UserError(f"T5X checkpoint {folder} records no optimizer/state/step; T5X writes one "
                    "in every checkpoint, so re-copy the checkpoint folder")
  try:
    return int(np.asarray(step).reshape(()))
  except (TypeError, ValueError):
    raise UserError(f"T5X checkpoint {folder}: optimizer/state/step is not a number "
                    f"({type(step).__name__}); re-copy the checkpoint folder") from None


def _materialize(stored: StoredArray, dtype: Optional[np.dtype]) -> np.ndarray:
  value = stored.read(tuple(slice(None) for _ in stored.shape))
  return value.astype(dtype) if dtype is not None else value


def _restore_sharded(stored: StoredArray, target: jax.ShapeDtypeStruct) -> jax.Array:
  dtype = np.dtype(target.dtype)
  sharding = getattr(target, "sharding", None)
  if sharding is None:
    return jax.numpy.asarray(_materialize(stored, dtype))
  # Each device's callback reads only its own slice from tensorstore.
  return jax.make_array_from_callback(
      tuple(stored.shape), sharding, lambda index: stored.read(index).astype(dtype))


def read_t5x_checkpoint(checkpoint_dir: str, target: Optional[Any] = None,
                        dtype: Optional[str] = None) -> Dict[str, Any]:
  """The parameter tree (`optimizer/target`) of a T5X checkpoint.

  Args:
    checkpoint_dir: a `checkpoint_N` folder (local or `gs://...`), or its
      `checkpoint` file.
    target: optional tree of `jax.ShapeDtypeStruct` with `.sharding`; the
      checkpoint must have exactly its paths and shapes (a UserError names every
      difference), and each device reads only its slice.
    dtype: cast every parameter to this dtype (e.g. 'bfloat16'); with a
      target, the target's dtypes are used instead.

  Returns:
    Nested dict of numpy arrays (no target) or `jax.Array`s (with target).
  """
  stored = open_t5x_checkpoint(checkpoint_dir)
  if target is None:
    cast = np.dtype(dtype) if dtype is not None else None
    return jax.tree_util.tree_map(lambda s: _materialize(s, cast), stored)
  check_tree_shapes(stored, target, what=f"T5X checkpoint {checkpoint_dir}")
  if dtype is not None:
    target = jax.tree_util.tree_map(
        lambda t: jax.ShapeDtypeStruct(t.shape, np.dtype(dtype), sharding=t.sharding), target)
  return jax.tree_util.tree_map(_restore_sharded, stored, target)


def read_t5x_variable(checkpoint_dir: str, variable: str) -> np.ndarray:
  """One variable, e.g. `'encoder/prompt/prompt/prompt'`, of a T5X checkpoint.

  `variable` is a '/'-separated path under the parameters; a leading
  `target/` (T5X's own prefix) is accepted too.
  """
  flat = flatten_paths(open_t5x_checkpoint(checkpoint_dir))
  key = variable.strip("/")
  if key.startswith("target/"):
    key = key[len("target/"):]
  if key not in flat:
    raise UserError(f"T5X checkpoint {checkpoint_dir} has no variable {variable!r}."
                    f"{closest(key, flat)} ({len(flat)} variables in all)")
  return _materialize(flat[key], None)


def _layer_count(stack: Dict[str, Any], name: str) -> int:
  indices = sorted(int(m.group(1)) for k in stack if (m := re.fullmatch(r"layers_(\d+)", k)))
  if indices != list(range(len(indices))) or not indices:
    raise UserError(f"T5X checkpoint {name} layers are {indices}; expected layers_0..layers_N-1")
  return len(indices)


def infer_t5x_config(params: Dict[str, Any],
                     relative_attention_max_distance: int = DEFAULT_MAX_DISTANCE,
                     **overrides) -> T5Config:
  """The T5Config of a flaxformer T5 1.1 parameter tree, read from its shapes.

  `relative_attention_max_distance` is not stored in the weights; T5 1.1
  uses 128, so pass the training value if it differed.
  """
  flat = flatten_paths(params)

  def shape(path: str) -> Tuple[int, ...]:
    if path not in flat:
      hint = ""
      if path == "decoder/logits_dense/kernel":
        hint = " (a T5 1.0 checkpoint with tied embeddings? only T5 1.1 is supported)"
      elif path.endswith("mlp/wi_0/kernel"):
        hint = " (a non-gated T5 1.0 MLP? only T5 1.1 gated-GELU is supported)"
      raise UserError(f"T5X checkpoint has no parameter {path}{hint}.{closest(path, flat)}")
    return tuple(flat[path].shape)

  vocab_size, emb_dim = shape("token_embedder/embedding")
  num_heads, num_buckets = shape("encoder/relpos_bias/rel_embedding")
  joined = shape("encoder/layers_0/attention/query/kernel")[1]
  if joined % num_heads:
    raise UserError(f"T5X checkpoint attention width {joined} is not a multiple of the "
                    f"{num_heads} heads in encoder/relpos_bias/rel_embedding")
  mlp_dim = shape("encoder/layers_0/mlp/wi_0/kernel")[1]
  shape("decoder/logits_dense/kernel")
  dtype = np.dtype(flat["token_embedder/embedding"].dtype)
  fields = dict(
      vocab_size=vocab_size, emb_dim=emb_dim, num_heads=num_heads, head_dim=joined // num_heads,
      mlp_dim=mlp_dim,
      num_encoder_layers=_layer_count(params.get("encoder", {}), "encoder"),
      num_decoder_layers=_layer_count(params.get("decoder", {}), "decoder"),
      relative_attention_num_buckets=num_buckets,
      relative_attention_max_distance=relative_attention_max_distance,
      param_dtype=dtype.name if dtype.name in ("float32", "bfloat16", "float16") else "float32")
  fields.update(overrides)
  return T5Config(**fields)


def load_t5x(checkpoint_dir: str, relative_attention_max_distance: int = DEFAULT_MAX_DISTANCE,
             dtype: Optional[str] = None) -> Tuple[T5Config, Dict[str, Any]]:
  """(config, numpy params) of a T5X T5 1.1 checkpoint; config inferred from shapes."""
  params = read_t5x_checkpoint(checkpoint_dir, dtype=dtype)
  overrides = {"param_dtype": np.dtype(dtype).name} if dtype is not None else {}
  return infer_t5x_config(params, relative_attention_max_distance, **overrides), params


def _zarr_chunks(shape: Tuple[int, ...], itemsize: int, max_bytes: int = 64 << 20) -> list:
  row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * itemsize if shape else itemsize
  rows = max(1, min(shape[0] if shape else 1, max_bytes // max(row_bytes, 1)))
  return [rows, *shape[1:]] if shape else []


def save_t5x(path: str, params: Dict[str, Any], step: int = 0, min_zarr_size: int = 16) -> None:
  """Writes `params` as a T5X (format 3) checkpoint folder that `read_t5x_checkpoint` reads.

  Arrays with at least `min_zarr_size` elements go to gzip zarr folders
  (`target.a.b.c`) referenced by relative `gfile` specs, as T5X writes them;
  smaller ones are inline. No optimizer state is written. Local paths only.
  """
  import tensorstore as ts
  from flax import serialization
  if _is_remote(path):
    raise UserError(f"save_t5x writes local folders only, not {path}; copy it afterwards")
  if os.path.exists(os.path.join(path, CHECKPOINT_FILE)):
    raise UserError(f"{path} already holds a T5X checkpoint; choose a new folder")
  os.makedirs(path, exist_ok=True)
  pending = []

  def convert(node: Any, keys: Tuple[str, ...]) -> Any:
    if isinstance(node, dict):
      return {k: convert(v, keys + (k,)) for k, v in node.items()}
    array = np.asarray(node)
    if array.size < min_zarr_size:
      return array
    name = ".".join(("target",) + keys)
    dtype = "bfloat16" if array.dtype.name == "bfloat16" else array.dtype.str
    metadata = {"shape": list(array.shape), "chunks": _zarr_chunks(array.shape, array.itemsize),
                "dtype": dtype, "compressor": {"id": "gzip", "level": 1}}
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.join(path, name)},
            "metadata": metadata}
    store = ts.open(spec, create=True, delete_existing=True).result()
    pending.append(store.write(array))
    return {"driver": "zarr", "kvstore": {"driver": "gfile", "path": name}, "metadata": metadata}

  target = convert(params, ())
  for future in pending:
    future.result()
  state = {"version": 3, "optimizer": {"target": target, "state": {"step": np.asarray(step)}}}
  # The msgpack file last: its presence marks a complete checkpoint.
  tmp = os.path.join(path, CHECKPOINT_FILE + ".tmp")
  with open(tmp, "wb") as f:
    f.write(serialization.msgpack_serialize(state))
  os.replace(tmp, os.path.join(path, CHECKPOINT_FILE))
