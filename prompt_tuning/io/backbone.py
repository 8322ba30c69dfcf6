"""The project's self-describing backbone folder: what `prompt-tuning convert` writes.

Layout::

  DIR/config.json     {"model": T5Config fields, "source": {...}, "format": 1}
  DIR/params/         an Orbax (tensorstore/OCDBT) checkpoint of the parameter tree

Every command that takes `--checkpoint DIR` or `INITIAL_CHECKPOINT_PATH` reads
this. Parameters restore directly into a given sharding (each host reads only
its slices), so an XXL backbone never has to fit on one host.
"""
import json
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from prompt_tuning import fs
from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def _checkpointer():
  import orbax.checkpoint as ocp
  return ocp.StandardCheckpointer()


def save_backbone(path: str, config: T5Config, params: Dict[str, Any],
                  source: Optional[Dict[str, Any]] = None) -> None:
  """Writes `params` and `config` to `path` (which must not exist yet)."""
  path = fs.absolute(path)
  if os.path.exists(os.path.join(path, CONFIG_FILE)):
    raise UserError(f"{path} already holds a backbone; choose a new --output folder or delete it")
  ckpt = _checkpointer()
  ckpt.save(os.path.join(path, PARAMS_DIR), params)
  ckpt.wait_until_finished()
  # config.json last: its presence marks a complete folder.
  meta = {"format": FORMAT_VERSION, "model": config.to_dict(), "source": source or {}}
  tmp = os.path.join(path, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(path, CONFIG_FILE))


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
  return config, ckpt.restore(params_path, target)


def flatten_paths(tree: Any) -> Dict[str, Any]:
  """`{'a': {'b': x}}` -> `{'a/b': x}`."""
  flat = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)] = leaf
  return flat


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
