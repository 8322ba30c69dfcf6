"""Reading a saved prompt: `.npy`, or a Hugging Face PEFT prompt-tuning adapter.

One reader for every place a prompt file is named (`PROMPT_FILE`,
`PROMPT_FILES`, `--prompt` of `score`, `generate` and `export`), so an
adapter trained in PEFT (or exported by `prompt-tuning export`) is accepted
wherever an exported `prompts/step_N.npy` is.
"""
import os

import numpy as np

from prompt_tuning import fs
from prompt_tuning.errors import UserError
from prompt_tuning.io.npy import NPY_MAGIC, load_array


def read_prompt(path: str, what: str = "prompt file") -> np.ndarray:
  """The `[P, E]` float32 prompt saved at `path` (local or `gs://`).

  Args:
    path: a `.npy` array, a PEFT PROMPT_TUNING adapter folder, or its
      `adapter_model.safetensors`.
    what: how errors name the path (e.g. "PROMPT_FILE").

  Raises:
    UserError: a missing path or a file that is none of these (never unpickled).
  """
  from prompt_tuning.io import peft
  if not fs.exists(path):
    raise UserError(f"{what} {path} does not exist; pass an exported prompts/step_N.npy or a "
                    "PEFT prompt-tuning adapter folder")
  if fs.isdir(path):
    value = peft.load_peft_prompt(path)
  else:
    with fs.open_file(path, "rb") as f:
      head = f.read(len(NPY_MAGIC))
    if head != NPY_MAGIC and peft.is_safetensors(path):
      value = peft.load_peft_prompt(path)
    else:
      value = load_array(path, what, "pass a prompt exported by training (prompts/step_N.npy) or "
                         "a PEFT prompt-tuning adapter folder or .safetensors")
  check_prompt(value, f"{what} {path}")
  return np.asarray(value, np.float32) if value.dtype != np.float32 else value


def check_prompt(value: np.ndarray, source: str) -> None:
  """Refuses what no encoder can be given as a prompt: not `[length, width]`, no token or no
  width (a (0, E) prompt would export as a 0-token adapter), or NaN/infinite values.

  Args:
    value: the array read.
    source: how messages name it, e.g. `--prompt p.npy`.
  """
  if value.ndim != 2 or min(value.shape) < 1:
    raise UserError(f"{source} has shape {tuple(value.shape)}; a prompt is [length, d_model] "
                    "with at least one token: pass a prompt exported by training "
                    "(prompts/step_N.npy)")
  if not np.all(np.isfinite(value)):
    raise UserError(f"{source} holds NaN or infinite values (a diverged run?); use a prompt "
                    "from a step before the divergence")


def step_of(path: str):
  """N of a `step_N.npy` prompt file name, else None."""
  name = os.path.basename(path.rstrip("/"))
  if name.startswith("step_") and name.endswith(".npy") and name[5:-4].isdigit():
    return int(name[5:-4])
  return None
