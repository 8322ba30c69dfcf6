"""A backbone from whichever checkpoint a command is pointed at: ours, T5X or Hugging Face.

`train` and `eval` take any of the three as `INITIAL_CHECKPOINT_PATH`; `score`,
`generate`, `export` and `convert --to hf` take them as `--checkpoint` (or
`--input`) through this module, so a user never has to convert a T5X
checkpoint first just to score with it.

Kinds, told apart by their files:
  backbone  `config.json` + `params/` (what `prompt-tuning convert` writes)
  t5x       a `checkpoint_N` folder holding T5X's msgpack `checkpoint` file
  hf        a Hugging Face T5 1.1 folder (`config.json` + `model.safetensors`)

A T5X checkpoint does not store `relative_attention_max_distance`: T5 1.1's
128 is assumed unless the caller passes the value the model was trained with.
"""
import os
from typing import Any, Dict, Optional, Tuple

from prompt_tuning import fs
from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config

KINDS = ("backbone", "t5x", "hf")


def identify(path: str, what: str) -> str:
  """'backbone', 't5x' or 'hf': the kind of checkpoint at `path`.

  Args:
    path: a local folder or `gs://` URL.
    what: how messages name the setting, e.g. `--checkpoint` or `INITIAL_CHECKPOINT_PATH`.
  """
  fs.check_reachable(path, f"copy the checkpoint to this machine (gsutil -m cp -r {path} "
                     f"/local/dir) and set {what} to the local folder")
  if not fs.is_remote(path) and not os.path.exists(path):
    raise UserError(f"{what} {path} does not exist; pass a backbone folder written by "
                    "`prompt-tuning convert`, a T5X checkpoint_N folder or a Hugging Face folder")
  if fs.exists(fs.join(path, "params")) and fs.exists(fs.join(path, "config.json")):
    return "backbone"
  if fs.exists(fs.join(path, "checkpoint")):
    return "t5x"
  if fs.exists(fs.join(path, "config.json")):
    return "hf"
  raise UserError(f"{path} is not a backbone folder (config.json + params/), a T5X checkpoint "
                  f"(checkpoint file) or a Hugging Face folder; check {what}")


def read_config(path: str, what: str, max_distance: Optional[int] = None) -> T5Config:
  """The model config of any checkpoint, reading no weights (a T5X checkpoint's shapes
  come from its msgpack file)."""
  kind = identify(path, what)
  if kind == "backbone":
    from prompt_tuning.io.backbone import load_backbone_config
    config = load_backbone_config(path)
    if max_distance is not None and max_distance != config.relative_attention_max_distance:
      raise UserError(f"{what} {path} is a converted backbone with relative_attention_max_distance"
                      f" {config.relative_attention_max_distance}; drop "
                      "--relative_attention_max_distance (it is for T5X checkpoints)")
    return config
  if kind == "t5x":
    from prompt_tuning.io.t5x import DEFAULT_MAX_DISTANCE, infer_t5x_config, open_t5x_checkpoint
    return infer_t5x_config(open_t5x_checkpoint(path), max_distance or DEFAULT_MAX_DISTANCE)
  from prompt_tuning.io.hf import CONFIG_FILE, _read_json, config_from_hf
  config = config_from_hf(_read_json(fs.join(path, CONFIG_FILE), "model config"),
                          fs.join(path, CONFIG_FILE))
  if max_distance is not None:
    config = config.replace(relative_attention_max_distance=max_distance)
  return config


def read_backbone(path: str, what: str, max_distance: Optional[int] = None
                  ) -> Tuple[T5Config, Dict[str, Any]]:
  """(config, params) of any checkpoint, every parameter path and shape checked against the
  model its config describes."""
  kind = identify(path, what)
  if kind == "backbone":
    from prompt_tuning.io.backbone import load_backbone
    read_config(path, what, max_distance)  # refuses a max distance the folder contradicts
    return load_backbone(path)
  return read_checkpoint(kind, path, None, max_distance)


def read_checkpoint(kind: str, path: str, dtype: Optional[str] = None,
                    max_distance: Optional[int] = None) -> Tuple[T5Config, Dict[str, Any]]:
  """(config, numpy params) of a T5X or Hugging Face checkpoint, checked against the model
  it describes."""
  from prompt_tuning.io.backbone import check_tree_shapes
  from prompt_tuning.io.backbone import backbone_shapes
  if kind == "t5x":
    from prompt_tuning.io.t5x import DEFAULT_MAX_DISTANCE, load_t5x
    config, params = load_t5x(path, max_distance or DEFAULT_MAX_DISTANCE, dtype)
  elif kind == "hf":
    from prompt_tuning.io.hf import load_hf
    config, params = load_hf(path, dtype, max_distance)
  else:
    raise ValueError(f"not a foreign checkpoint kind: {kind!r}")
  check_tree_shapes(params, backbone_shapes(config), what=f"{kind} checkpoint {path}")
  return config, params


def max_distance_note(path: str, what: str, max_distance: Optional[int]) -> Optional[str]:
  """The line to print when a T5X checkpoint's unstored max distance was assumed, else None."""
  if max_distance is not None or identify(path, what) != "t5x":
    return None
  from prompt_tuning.io.t5x import DEFAULT_MAX_DISTANCE
  return (f"note: {what} {path} is a T5X checkpoint, which does not store "
          f"relative_attention_max_distance: using {DEFAULT_MAX_DISTANCE} (T5 1.1's value); pass "
          "--relative_attention_max_distance if the model was trained with another")
