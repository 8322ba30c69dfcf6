"""Exports of a run's new parameters: small self-describing checkpoints that eval and export load.

A run checkpoint (Orbax) holds the trainable tree and its optimizer state;
what a user takes away is smaller: every variable the model defines beyond
the backbone (LoRA pairs, adapters, biases, prefixes, the prompt and its
reparameterization, masks), written by the trainer next to each checkpoint
into `MODEL_DIR/exports/<step_N | best>/` (`run_dir.ExportDir`): the tensors
as safetensors, a self-describing `export.json` (the delta plan as the model
describes it, `DeltaPlan.to_json`) and the plan's records.

`prompt-tuning eval` loads one with `DELTAS_FILE` (configs/runs/deltas_eval.gin)
on a model built with the same method gin files (for APET:
`APET_SELECTION_FILE` = the copied `apet_selection.json`); `prompt-tuning
export --deltas` turns a LoRA export into a Hugging Face PEFT adapter. Arrays
are read with safetensors, never unpickled.
"""
import json
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import flax
import numpy as np

from prompt_tuning import fs
from prompt_tuning.errors import UserError
from prompt_tuning.models.config import architecture_of
from prompt_tuning.run_dir import ExportDir, RunDir
from prompt_tuning.train.initialize import BACKBONE_COLLECTION, backbone_paths
from prompt_tuning.multihost import to_host

FORMAT = "prompt_tuning.export/1"
Variables = Dict[str, Any]


def _flat(tree: Any) -> Dict[str, Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def new_variable_paths(model: Any, variables: Variables) -> List[str]:
  """`<collection>/<path>` of every variable of `variables` outside `model`'s backbone."""
  backbone = backbone_paths(model.config)
  out = []
  for collection, tree in variables.items():
    for path in _flat(tree):
      if collection != BACKBONE_COLLECTION or path not in backbone:
        out.append(f"{collection}/{path}")
  return sorted(out)


def plan_to_json(plan: Any) -> List[Dict[str, Any]]:
  """A `DeltaPlan`'s rules as JSON (none without a plan): how an export describes them."""
  return plan.to_json() if plan else []


def methods_of(model: Any) -> List[str]:
  """The kinds of new parameters `model` has: insertion ops, `prompt`, extras' names."""
  kinds = set(model.deltas.ops() if model.deltas else ())
  if model.prompt is not None:
    kinds.add("prompt")
  kinds.update(name for name, _ in (model.extras or ()))
  return sorted(kinds)


class ExportContents(NamedTuple):
  """What `exports/<name>/` holds: the tensors, `export.json`, the plan's records."""
  tensors: Dict[str, np.ndarray]
  description: Dict[str, Any]
  records: Dict[str, str]


def export_contents(model: Any, variables: Variables, info: Dict[str, Any]
                    ) -> Optional[ExportContents]:
  """What an export of `variables` holds (None without new variables); sharded arrays are
  gathered, so every host calls it.

  Args:
    model: the run's `T5`.
    variables: all of the run's variables.
    info: extra description fields (step, initial_checkpoint_path, trainable_patterns).
  """
  paths = new_variable_paths(model, variables)
  if not paths:
    return None
  flat = {f"{c}/{p}": v for c, tree in variables.items() for p, v in _flat(tree).items()}
  tensors = {}
  for key in paths:
    value = to_host(flat[key])
    if value.dtype.name == "bfloat16":  # not a numpy dtype safetensors.numpy writes
      value = value.astype(np.float32)
    tensors[key] = np.ascontiguousarray(value)
  records = dict(getattr(model.deltas, "records", ()) or ())
  description = {
      "format": FORMAT, **info, "methods": methods_of(model),
      "plan": plan_to_json(model.deltas),
      "prompt_length": int(getattr(model.prompt, "length", 0) or 0),
      "model_config": model.config.to_dict(),
      "tensors": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in tensors.items()},
      "records": sorted(records),
  }
  return ExportContents(tensors, description, records)


def write_export(out: ExportDir, contents: ExportContents) -> str:
  """Writes `contents` into the export folder `out` on the first host; its path."""
  from safetensors.numpy import save
  fs.makedirs(out.root)
  for record, text in contents.records.items():
    fs.write_on_first_host(out.record(record), lambda f, text=text: f.write(text.encode()))
  fs.write_on_first_host(out.tensors, lambda f: f.write(save(contents.tensors)))
  # The description last: a folder without it is an interrupted export.
  fs.write_json(out.description, contents.description)
  return out.root


def export_new_variables(run: RunDir, name: str, model: Any, variables: Variables,
                         info: Dict[str, Any]) -> Optional[str]:
  """Writes `MODEL_DIR/exports/<name>/` on the first host; its path, or None without new variables
  (`export_contents` says what it holds)."""
  contents = export_contents(model, variables, info)
  return None if contents is None else write_export(run.export(name), contents)


def export_problem(out: ExportDir, contents: ExportContents) -> Optional[str]:
  """Why the export folder `out` does not hold `contents` (None when it does): a damaged or
  missing file, or tensors other than the checkpoint gives."""
  try:
    tensors, _ = read_export(out.root)
  except UserError as e:
    return str(e)
  for record, text in contents.records.items():
    try:
      if fs.read_bytes(out.record(record)).decode() != text:
        return f"its {record} differs from the run's"
    except (OSError, UnicodeDecodeError):
      return f"its {record} is missing or unreadable"
  if sorted(tensors) != sorted(contents.tensors):
    return "it holds other tensors than the checkpoint gives"
  for key, value in contents.tensors.items():
    if tensors[key].shape != value.shape or not np.allclose(tensors[key], value, rtol=1e-5,
                                                             atol=1e-6):
      return f"{key} differs from the checkpoint's"
  return None


def export_files(path: str) -> Tuple[str, str]:
  """(tensors file, `export.json`) of an export folder or of its safetensors file."""
  if fs.isdir(path):
    return ExportDir(path).tensors, ExportDir(path).description
  return path, ExportDir(os.path.dirname(path)).description


def read_export(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """(tensors by `<collection>/<path>`, description) of an export folder or its safetensors file."""
  from safetensors.numpy import load
  if not fs.exists(path):
    raise UserError(f"DELTAS_FILE {path} does not exist; pass an export folder "
                    "MODEL_DIR/exports/step_N of the run")
  tensors_file, description_file = export_files(path)
  for f in (tensors_file, description_file):
    if not fs.exists(f):
      raise UserError(f"{f} does not exist; DELTAS_FILE must be an export folder "
                      f"MODEL_DIR/exports/step_N (or its {os.path.basename(tensors_file)})")
  try:
    description = json.loads(fs.read_bytes(description_file))
  except ValueError:
    raise UserError(f"{description_file} is not valid JSON; re-export the run") from None
  if not isinstance(description, dict) or description.get("format") != FORMAT:
    raise UserError(f"{description_file} is not a prompt_tuning export (format {FORMAT!r})")
  try:
    tensors = load(fs.read_bytes(tensors_file))
  except Exception as e:  # safetensors raises its own error types for damaged files
    raise UserError(f"cannot read {tensors_file} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); re-export the run") from None
  return tensors, description


def loading_edit(path: str, model: Any) -> Tuple[Callable[[Variables], Variables], Tuple[str, ...]]:
  """(edit of freshly initialized variables that puts the export's values in, loaded paths).

  The edit is `build_run`'s `edit_initial_variables`. The export must have
  been made for this model: the same backbone config, delta plan, prompt
  length, and a tensor of the right shape for every path it holds.

  Returns:
    the edit and the parameter paths (within `params`) it loads.
  """
  tensors, d = read_export(path)
  if architecture_of(d.get("model_config") or {}) != model.config.architecture():
    raise UserError(f"{path} was trained on another backbone config; use the backbone in its "
                    f"export.json ({d.get('initial_checkpoint_path')})")
  if d.get("plan", []) != plan_to_json(model.deltas):
    want = ", ".join(sorted({r["insertion"]["op"] for r in d.get("plan", [])})) or "none"
    raise UserError(f"{path} holds a run with other deltas (ops: {want}) than this model; add "
                    "the run's method gin file and settings (APET: APET_SELECTION_FILE from the "
                    "export folder), as in its export.json")

  def edit(variables: Variables) -> Variables:
    flat = {(c, p): v for c, tree in variables.items() for p, v in _flat(tree).items()}
    for key, value in tensors.items():
      collection, _, name = key.partition("/")
      target = flat.get((collection, name))
      if target is None:
        raise UserError(f"{path} holds {key}, which this model does not have; build the model "
                        "with the run's gin files (see its export.json)")
      if tuple(target.shape) != tuple(value.shape):
        raise UserError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                        f"{tuple(target.shape)}; use the run's settings (see its export.json)")
      flat[(collection, name)] = np.asarray(value, target.dtype)
    out: Variables = {}
    for (collection, name), value in flat.items():
      out.setdefault(collection, {})[name] = value
    return {c: flax.traverse_util.unflatten_dict(t, sep="/") for c, t in out.items()}

  loaded = tuple(sorted(k.partition("/")[2] for k in tensors
                        if k.startswith(BACKBONE_COLLECTION + "/")))
  return edit, loaded
