"""The project's self-describing backbone folder: what `prompt-tuning convert` writes.

Layout::

  DIR/config.json     {"model": T5Config fields, "source": {...}, "format": 1}
  DIR/params/         an Orbax (tensorstore/OCDBT) checkpoint of the parameter tree
  DIR/checksums.json  per-parameter checksums (`prompt_tuning.io.checksums`)

Every command that takes `--checkpoint DIR` or `INITIAL_CHECKPOINT_PATH` reads
this. Parameters restore directly into a given sharding (each host reads only
its slices), so an XXL backbone never has to fit on one host. Every load
checks each restored array against `checksums.json` where it lives (no host
gathers a whole array); folders written before checksums existed load with
one logged warning.
"""
import json
import logging
import os
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np

from prompt_tuning import fs
from prompt_tuning.errors import UserError
from prompt_tuning.io import checksums
from prompt_tuning.io.checksums import flatten_paths
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
CHECKSUMS_FILE = "checksums.json"
# A backbone may be restored straight into any of these (e.g. `frozen_dtype`),
# so its checksums are recorded for each.
CHECKSUM_DTYPES = ("float32", "bfloat16", "float16")
_warned_unverified = set()


def backbone_shapes(config: T5Config) -> Dict[str, Any]:
  """The `params` tree of a plain `T5(config)` as `jax.ShapeDtypeStruct`s (nothing allocated):
  what a backbone checkpoint of `config` must hold."""
  tokens = np.ones((1, 4), np.int32)
  abstract = jax.eval_shape(lambda: T5(config).init(jax.random.PRNGKey(0), tokens, tokens))
  return nn.meta.unbox(abstract)["params"]


def _checkpointer():
  import orbax.checkpoint as ocp
  return ocp.StandardCheckpointer()


def save_backbone(path: str, config: T5Config, params: Dict[str, Any],
                  source: Optional[Dict[str, Any]] = None) -> None:
  """Writes `params` and `config` to `path` (which must not exist yet)."""
  path = fs.absolute(path)
  if os.path.exists(os.path.join(path, CONFIG_FILE)):
    raise UserError(f"{path} already holds a backbone; choose a new --output folder or delete it")
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  # Synchronous: a failed write (a full disk) is this call's exception, not tracebacks of
  # Orbax's background threads after it.
  with fs.writer_threads_quiet(), ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckpt:
    ckpt.save(os.path.join(path, PARAMS_DIR), args=ocp.args.StandardSave(params))
  _write_json(os.path.join(path, CHECKSUMS_FILE), {
      "algorithm": checksums.ALGORITHM,
      "params": checksums.tree_records(params, CHECKSUM_DTYPES)})
  # config.json last: its presence marks a complete folder.
  meta = {"format": FORMAT_VERSION, "model": config.to_dict(), "source": source or {}}
  _write_json(os.path.join(path, CONFIG_FILE), meta)


def is_backbone(path: str) -> bool:
  """Whether `path` holds a complete backbone folder (`config.json` is written last)."""
  return _exists(os.path.join(path, CONFIG_FILE))


def _write_json(path: str, value: Any) -> None:
  text = json.dumps(value, indent=2, sort_keys=True)
  if "://" in path:  # object stores write whole objects
    import tensorflow as tf
    with tf.io.gfile.GFile(path, "w") as f:
      f.write(text)
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _read_text(path: str) -> Optional[str]:
  """The file's text, or None when it does not exist."""
  if "://" in path:
    import tensorflow as tf
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path, "r") as f:
      return f.read()
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return f.read()


def _exists(path: str) -> bool:
  if "://" in path:
    import tensorflow as tf
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def ocdbt_problem(item_dir: str) -> Optional[str]:
  """Why the OCDBT database of an Orbax item folder cannot be read, or None.

  Reads only the manifest and the b-tree (not the arrays), so a lost or
  damaged manifest or index file is reported in one line before Orbax's
  restore, whose own failures on them are long and noisy. None also for a
  folder that is not OCDBT.
  """
  if not _exists(os.path.join(item_dir, "manifest.ocdbt")):
    if _exists(os.path.join(item_dir, "d")):
      return "manifest.ocdbt is missing"
    return None
  import tensorstore as ts
  base = item_dir if "://" in item_dir else "file://" + os.path.abspath(item_dir)
  try:
    store = ts.KvStore.open({"driver": "ocdbt", "base": base.rstrip("/") + "/"}).result()
    keys = store.list().result()
  except ValueError as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    return f"manifest.ocdbt: {(lines[0] if lines else type(e).__name__)[:300]}"
  return None if keys else "manifest.ocdbt lists no arrays"


def verify_backbone(path: str, params: Any) -> None:
  """Checks restored `params` against `path/checksums.json`.

  Raises:
    UserError: naming the first parameter that does not match.
  """
  manifest_path = os.path.join(path, CHECKSUMS_FILE)
  text = _read_text(manifest_path)
  if text is None:
    if path not in _warned_unverified:
      _warned_unverified.add(path)
      logging.warning("backbone %s has no %s (converted before checksums were recorded): its "
                      "parameters are not verified; re-run `prompt-tuning convert` to add them",
                      path, CHECKSUMS_FILE)
    return
  try:
    manifest = json.loads(text)
    records, algorithm = manifest["params"], manifest["algorithm"]
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"{manifest_path} is damaged ({type(e).__name__}); re-run "
                    "`prompt-tuning convert` into a fresh folder") from None
  if algorithm != checksums.ALGORITHM:
    raise UserError(f"{manifest_path} uses checksum algorithm {algorithm!r}, this version knows "
                    f"{checksums.ALGORITHM!r}; upgrade prompt-tuning or re-run "
                    "`prompt-tuning convert`")
  unverifiable = []
  problem = checksums.find_mismatch(records, params, unverifiable)
  if problem is not None:
    raise UserError(f"backbone {path}: {problem} in {CHECKSUMS_FILE} (params/ is corrupt or was "
                    "changed after conversion); re-run `prompt-tuning convert` into a fresh folder")
  if unverifiable:
    logging.warning("backbone %s: %d parameters (e.g. %s) were restored in a dtype without a "
                    "recorded checksum and are not verified", path, len(unverifiable),
                    unverifiable[0])


def read_backbone_metadata(path: str) -> Dict[str, Any]:
  """The parsed `config.json` of a backbone folder."""
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isdir(path):
    raise UserError(f"backbone folder {path} does not exist; create it with "
                    "`prompt-tuning convert --from {t5x,hf} --input SRC --output DIR`")
  if not os.path.exists(config_path):
    raise UserError(f"{path} has no {CONFIG_FILE}: not a converted backbone (or an interrupted "
                    "conversion); run `prompt-tuning convert` into a fresh folder")
  with open(config_path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"{config_path} is not valid JSON ({e}); re-run `prompt-tuning convert`") from None


def load_backbone_config(path: str) -> T5Config:
  return T5Config.from_dict(read_backbone_metadata(path)["model"])


def load_backbone(path: str, target: Optional[Any] = None,
                  dtype: Optional[str] = None) -> Tuple[T5Config, Dict[str, Any]]:
  """Reads a backbone folder.

  Args:
    path: the folder written by `save_backbone`.
    target: optional tree of `jax.ShapeDtypeStruct` (with `.sharding`) to
      restore into; shapes are checked against it first, naming any mismatch.
    dtype: optional dtype to cast parameters to on restore (e.g. 'bfloat16').

  Returns:
    (config, params) with params as `jax.Array`s (or numpy without a target).
  """
  config = load_backbone_config(path)
  params_path = os.path.abspath(os.path.join(path, PARAMS_DIR))
  problem = ocdbt_problem(params_path)
  if problem is not None:
    raise UserError(f"backbone {path}: {PARAMS_DIR}/{problem}; the folder is incomplete or "
                    "corrupt, re-run `prompt-tuning convert` into a fresh folder")
  ckpt = _checkpointer()
  stored = ckpt.metadata(params_path)
  stored = getattr(stored, "item_metadata", stored)
  stored = getattr(stored, "tree", stored)
  if target is None:
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(dtype or m.dtype)), stored)
  else:
    check_tree_shapes(stored, target, what=f"backbone {path}")
    if dtype is not None:
      target = jax.tree_util.tree_map(
          lambda t: jax.ShapeDtypeStruct(t.shape, np.dtype(dtype), sharding=t.sharding), target)
  try:
    params = ckpt.restore(params_path, target)
  except (ValueError, OSError) as e:  # tensorstore reports lost/damaged files as ValueError
    first = (str(e).splitlines() or [type(e).__name__])[0][:300]
    raise UserError(f"backbone {path}: cannot restore {PARAMS_DIR}/ ({first}); the folder is "
                    "incomplete or corrupt, re-run `prompt-tuning convert` into a fresh "
                    "folder") from None
  verify_backbone(path, params)
  return config, params


def check_tree_shapes(actual: Any, expected: Any, what: str) -> None:
  """Raises one UserError naming every missing/unexpected path and shape mismatch."""
  a, e = flatten_paths(actual), flatten_paths(expected)
  problems = []
  missing = sorted(set(e) - set(a))
  unexpected = sorted(set(a) - set(e))
  if missing:
    problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
  if unexpected:
    problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
  for k in sorted(set(a) & set(e)):
    if tuple(a[k].shape) != tuple(e[k].shape):
      problems.append(f"{k}: checkpoint has {tuple(a[k].shape)}, model expects {tuple(e[k].shape)}")
  if problems:
    raise UserError(f"{what} does not match the model: " + "; ".join(problems[:6])
                    + " (check the model size/gin config against the checkpoint)")
